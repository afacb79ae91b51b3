"""Smoke test of scenes/render_showcase.py with tiny settings (the scene contract, exports, sane pictures)."""
import os

import numpy as np

from engine.scene import apply_overrides, load_scene

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_render_showcase_tiny():
    mod = load_scene(os.path.join(ROOT, "scenes", "render_showcase.py"))
    cfg = apply_overrides(mod.Config, {"frames": 2, "resolution": 32, "samples": 8, "gaussians": 200})
    scene = mod.Scene(cfg)
    scene.build()
    for f in range(2):
        scene.step(f)
        img = scene.render()
        assert img.shape == (32, 96, 3) and img.dtype == np.uint8
        assert img.std() > 10                                  # not a blank frame
    m = scene.metrics()
    assert 0 < m["mesh_coverage"] < 1 and 0 < m["gaussian_alpha_mean"] < 1
    ex = scene.exports()
    assert {"normals.png", "depth.png", "hybrid_depth.png", "mesh.obj"} <= set(ex)
    assert ex["normals.png"].shape == (32, 32, 3) and ex["depth.png"].max() > 100
