"""Every scene in scenes/ is drawn in 3D by the GGUI viewer from its geometry(): offscreen (lavapipe), a few frames
each, every frame showing the scene's objects where a pinhole camera independent of GGUI puts them, with the
objects' on-screen aspect ratio kept. Scenes are discovered from scenes/, so a new scene is covered automatically
(give it tiny settings in SMALL if its defaults are slow)."""
import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from engine import backend
from engine.cli import _load_config, build_scene
from engine.scene import load_scene
from engine.viewer import Viewer

ROOT = Path(__file__).resolve().parents[2]
SCENES = sorted(p.stem for p in (ROOT / "scenes").glob("*.py") if not p.stem.startswith("_"))
SMALL = {
    "avatar_gaussian": ["size=32", "cams=2", "frames_per_motion=1", "n_gaussians=200"],
    "avatar_hybrid": ["size=32", "cams=2", "frames_per_motion=1"],
    "blocks_world": ["resolution=16", "synthetic_views=4", "max_blocks=3", "mesh_level=1"],
    "refine": ["distill_steps=0", "resolution=12", "size=16"],
    "codesign": ["res=16", "steps=2", "substeps=2"],
    "jelly_drop": ["res=16"],
    "dam_break": ["res=32"],
    "sand_column": ["cells_per_width=4"],
    "terrain": ["res=32"],
    "sdf_gallery": ["resolution=16"],
    "shape_from_silhouettes": ["grid=12", "views=2", "image=16"],
    "mesh_turntable": ["samples=100", "frames=8"],
    "render_showcase": ["resolution=32", "gaussians=200", "samples=4", "frames=8"],
}
SLOW = {"avatar_gaussian", "avatar_hybrid", "blocks_world", "refine"}
RES = (192, 128)
FRAMES = 3


def _changed(a, b):
    return (np.abs(a.astype(int) - b.astype(int)) > 10).any(axis=2)


def _draw(viewer, particles, meshes, ground, tries=6):
    """One settled picture with the given toggles: redrawn until two pictures in a row agree. Under lavapipe a
    picture drawn right after the drawn ranges change sometimes misses a draw call (an intermittent failure of
    this test, never twice in a row); a user's window redraws every frame, so only a settled picture counts."""
    viewer.show.update(particles=particles, meshes=meshes, ground=ground)
    img = viewer.frame(advance=False)
    for _ in range(tries):
        nxt = viewer.frame(advance=False)
        if np.array_equal(nxt, img):
            return img
        img = nxt
    raise AssertionError("the offscreen picture never settled (each redraw differs)")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SCENES])
def test_every_scene_is_drawn_in_3d_in_every_frame(name):
    """Each scene in its own process, as ``tide view`` runs: under lavapipe (the software Vulkan driver CI uses),
    after several offscreen windows in one process GGUI now and then stops drawing one scene's floor or meshes in
    every later picture of that scene, while the same scene alone always draws. A second try in a fresh process
    guards against a one-off driver hiccup; a scene that is wrong fails both."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    errors = []
    for _ in range(2):
        r = subprocess.run([sys.executable, __file__, name], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
        if r.returncode == 0:
            return
        errors.append((r.stdout + r.stderr).strip().splitlines()[-3:])
    pytest.fail(f"{name}: {errors}")


def _check_scene(name):
    backend.init(arch="cpu", precision="f64")
    module = load_scene(ROOT / "scenes" / f"{name}.py")
    scene = build_scene(module, _load_config(module, SMALL.get(name, []), None, False))
    assert callable(getattr(scene, "geometry", None)), f"{name} has no geometry(): the viewer would show a flat image"
    viewer = Viewer(scene, res=RES, offscreen=True)
    try:
        for i in range(FRAMES):
            viewer.frame()  # advance one frame
            empty = _draw(viewer, False, False, False)
            objects = _draw(viewer, True, True, False)
            full = _draw(viewer, True, True, True)
            shown = ndimage.binary_dilation(_changed(objects, empty), iterations=2)
            px = viewer.project(viewer.object_points())
            on = np.isfinite(px).all(1) & (px[:, 0] >= 0) & (px[:, 0] < RES[0]) & (px[:, 1] >= 0) & (px[:, 1] < RES[1])
            assert on.sum() >= 3, (name, i, "the objects are out of the picture")
            # the objects are drawn where the camera puts them ...
            p = px[on].astype(int)
            hit = shown[p[:, 1], p[:, 0]].mean()
            assert hit > 0.9, (name, i, hit)
            # ... and nowhere else (the changed pixels lie within the projected extent, a few pixels of radius
            # and shading aside), so their bounding box has the objects' aspect ratio
            ys, xs = np.nonzero(_changed(objects, empty))
            w_img, h_img = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
            (x0, y0), (x1, y1) = px[on].min(0), px[on].max(0)
            pad = 2 + 2 * _radius_px(viewer)
            assert x0 - pad <= xs.min() and xs.max() <= x1 + pad and y0 - pad <= ys.min() and ys.max() <= y1 + pad
            assert w_img >= (x1 - x0) - 2 and h_img >= (y1 - y0) - 2, (name, i, (w_img, h_img), (x1 - x0, y1 - y0))
            geo = scene.geometry()
            if any(geo.get(k) is not None for k in ("ground", "heightfield")) or geo.get("walls"):
                assert _changed(full, objects).mean() > 0.01, (name, i, "no floor or terrain drawn")
    finally:
        del viewer
        gc.collect()  # GGUI allows one offscreen window at a time in a process


def _radius_px(viewer):
    """Largest particle radius in pixels (particles are drawn as discs around their projected centres)."""
    p = viewer.scene.geometry().get("particles")
    if p is None:
        return 0.0
    import math

    focal = 0.5 * viewer.res[1] / math.tan(math.radians(20))
    x = viewer.object_points()
    depth = np.linalg.norm(x - viewer.orbit.eye(), axis=1).min()
    return float(p.get("radius", 0.005)) * focal / max(depth, 1e-6)


def test_a_2d_scene_is_seen_from_the_front_undistorted():
    """A 2D scene is a slab at z = 0 seen straight on: equal pixels per metre across and up."""
    class Board:
        def build(self):
            pass

        def step(self, frame):
            pass

        def geometry(self):
            g = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 40), np.linspace(0.1, 0.3, 14)), -1).reshape(-1, 2)
            return {"particles": {"x": g, "color": (0.9, 0.1, 0.1), "radius": 0.01}, "bounds": ((0, 0), (1, 0.5))}

    viewer = Viewer(Board(), res=(240, 120), offscreen=True)
    try:
        img = viewer.frame().astype(int)
        ys, xs = np.nonzero((img[..., 0] - img[..., 1]) > 80)
        ratio = (xs.max() - xs.min()) / (ys.max() - ys.min())
        assert ratio == pytest.approx((0.6 + 0.02) / (0.2 + 0.02), rel=0.08)
    finally:
        del viewer
        gc.collect()


if __name__ == "__main__":
    _check_scene(sys.argv[1])
