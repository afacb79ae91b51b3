"""Shared helpers for the physics tests: load a scene script and run it for a few frames."""
import os

from engine.scene import apply_overrides, load_scene

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_scene(name: str, frames: int | None = None, **overrides):
    """Build ``scenes/<name>.py`` with ``overrides``, step ``frames`` frames, return the scene."""
    mod = load_scene(os.path.join(ROOT, "scenes", f"{name}.py"))
    cfg = apply_overrides(mod.Config, {k: v for k, v in overrides.items()})
    scene = mod.Scene(cfg)
    scene.build()
    for f in range(frames if frames is not None else cfg.frames):
        scene.step(f)
    return scene
