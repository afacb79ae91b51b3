"""Physics from the recovered blocks (DBW's application): drop them as elastic MLS-MPM bodies on the ground.

The blocks are carried into a 1 m simulation cube (normalised frame: up = +y, the scene's radius becomes
``0.35`` m, the ground plane the floor), filled with lattice particles where Barr's inside-outside function is
below 1, lifted by ``lift`` and released under gravity on a sticky floor. Coarse on purpose (``res`` = 32 cells
per side) so it runs in about a minute on a laptop CPU.
"""
from __future__ import annotations

import colorsys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .frame import SceneFrame
from .model import inside_outside

__all__ = ["blocks_to_model", "simulation_video"]


def blocks_to_model(blocks: list[dict], frame: SceneFrame, ground: float, res: int = 32, lift: float = 0.08,
                    E: float = 3e4):
    """An MPM ``Model`` with one elastic body per block (world-frame dicts as ``export.world_blocks``)."""
    from engine.physics import Boundary, ModelBuilder

    dx = 1.0 / res
    b = ModelBuilder(res=(res,) * 3, dx=dx, ppc=2)
    floor = b.bound * dx
    k = 0.35                                                   # metres per scene radius
    for i, blk in enumerate(blocks):
        R = frame.rot @ np.asarray(blk["R"])                   # block -> normalised frame
        t = frame.to_norm(np.asarray(blk["t"])[None])[0]
        s = np.asarray(blk["scale"]) / frame.radius
        r = float(np.linalg.norm(s))
        # lattice in the simulation cube (spacing dx/2), mapped back to the normalised frame for the inside test;
        # normalised -> cube: x, z centred, the ground plane on the floor, lifted
        to_sim = lambda p: np.stack([0.5 + k * p[:, 0], floor + lift + k * (p[:, 1] - ground),  # noqa: E731
                                     0.5 + k * p[:, 2]], 1)
        c = to_sim(t[None])[0]
        sim = b.lattice(c - k * r, c + k * r)
        pts = np.stack([(sim[:, 0] - 0.5) / k, (sim[:, 1] - floor - lift) / k + ground, (sim[:, 2] - 0.5) / k], 1)
        inside = inside_outside(torch.as_tensor((pts - t) @ R), torch.tensor(blk["e"]), torch.as_tensor(s)) < 1.0
        sim = sim[inside.numpy()]
        sim = sim[(sim > floor + dx).all(1) & (sim < 1 - floor - dx).all(1)]
        if len(sim) < 8:
            continue
        colour = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)
        b.add_points(sim, material="elastic", E=E, nu=0.3, color=colour, vol=(dx / 2) ** 3)
    if not b.bodies:
        return None
    return b.finalize(boundary=Boundary(floor="sticky"))


SIM_CAMERA = {"eye": (0.5, 0.55, 1.75), "target": (0.5, 0.12, 0.5), "fov": 40.0}
"""The simulation video's camera (``render_points``' 3D dict): the floor square [0.09, 0.91]^2 fills the frame."""


def _pixel_rays(camera: dict, width: int, height: int):
    """(H, W, 3) ray directions through pixel centres for ``render_points``' 3D camera dict (same pinhole)."""
    eye, target = np.asarray(camera["eye"], float), np.asarray(camera["target"], float)
    up = np.asarray(camera.get("up", (0.0, 1.0, 0.0)), float)
    f = (target - eye) / np.linalg.norm(target - eye)
    s = np.cross(f, up)
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    focal = 0.5 * height / np.tan(np.radians(camera.get("fov", 40.0)) / 2)
    y, x = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return f + ((x - width / 2) / focal)[..., None] * s - ((y - height / 2) / focal)[..., None] * u


def floor_image(camera: dict, width: int, height: int, floor: float, lo: float = 0.0, hi: float = 1.0,
                tile: float = 0.1, background=(255, 255, 255)) -> np.ndarray:
    """(H, W, 3) uint8: the floor plane y = ``floor`` ray cast from ``camera``, a checker of ``tile`` metres over
    the simulation square [lo, hi]^2 in x and z, ``background`` elsewhere (behind and above it)."""
    eye = np.asarray(camera["eye"], float)
    d = _pixel_rays(camera, width, height)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (floor - eye[1]) / d[..., 1]
    p = eye + np.where(s > 0, s, np.nan)[..., None] * d
    inside = (s > 0) & (p[..., 0] >= lo) & (p[..., 0] <= hi) & (p[..., 2] >= lo) & (p[..., 2] <= hi)
    k = (np.floor(np.nan_to_num(p[..., 0]) / tile) + np.floor(np.nan_to_num(p[..., 2]) / tile)) % 2
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    img[inside] = np.where(k[inside, None] > 0, (200, 196, 188), (168, 163, 155))
    return img


def _project(camera: dict, width: int, height: int, pts: np.ndarray) -> np.ndarray:
    from engine.render.points import _project as project

    return project(np.asarray(pts, float), width, height, camera)[0]


def simulation_video(blocks: list[dict], frame: SceneFrame, ground: float, frames: int = 45, fps: int = 30,
                     size: int = 320) -> bytes:
    """simulation.mp4 as bytes: the blocks falling and settling (``frames`` frames of 1/60 s) on a checkered floor
    (10 cm tiles), with a time stamp and a 20 cm scale bar drawn on the floor."""
    from PIL import Image, ImageDraw

    from engine.io import save_video
    from engine.physics import Solver
    from engine.physics.viz import render_state

    model = blocks_to_model(blocks, frame, ground)
    imgs = []
    if model is None:
        imgs = [np.full((size, size, 3), 255, np.uint8)]
    else:
        solver, state = Solver(model), model.state()
        cam = SIM_CAMERA
        floor_y = float(model.bound * model.dx)
        lo, hi = floor_y, 1.0 - floor_y
        floor = floor_image(cam, size, size, floor_y, lo, hi)
        # scale bar: 20 cm along x on the floor's front edge
        z = hi - 0.04
        bar = _project(cam, size, size, np.array([[lo + 0.05, floor_y, z], [lo + 0.25, floor_y, z]]))
        dt = 2e-4
        sub = round((1 / 60) / dt)
        for f in range(frames):
            if f:
                solver.advance(state, sub, dt)
            parts = render_state(model, state, size, size, camera=cam)
            mask = (parts != 255).any(-1, keepdims=True)          # particles over the white background
            im = Image.fromarray(np.where(mask, parts, floor))
            d = ImageDraw.Draw(im)
            d.text((6, 6), f"t = {f / 60:.3f} s   ({len(blocks)} blocks, elastic MPM)", fill=(0, 0, 0))
            (x0, y0), (x1, y1) = bar
            d.line([(x0, y0), (x1, y1)], fill=(0, 0, 0), width=3)
            for x, y in bar:
                d.line([(x, y - 4), (x, y + 4)], fill=(0, 0, 0), width=2)
            d.text((x0, y0 + 6), "20 cm   (1 scene radius = 35 cm; tiles 10 cm)", fill=(0, 0, 0))
            imgs.append(np.asarray(im))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "simulation.mp4"
        save_video(p, imgs, fps=fps)
        return p.read_bytes()
