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


def simulation_video(blocks: list[dict], frame: SceneFrame, ground: float, frames: int = 45, fps: int = 30,
                     size: int = 320) -> bytes:
    """simulation.mp4 as bytes: the blocks falling and settling (``frames`` frames of 1/60 s; a time stamp)."""
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
        dt = 2e-4
        sub = round((1 / 60) / dt)
        for f in range(frames):
            if f:
                solver.advance(state, sub, dt)
            im = Image.fromarray(render_state(model, state, size, size))
            ImageDraw.Draw(im).text((6, 6), f"t = {f / 60:.2f} s  ({len(blocks)} blocks, elastic MPM)",
                                    fill=(0, 0, 0))
            imgs.append(np.asarray(im))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "simulation.mp4"
        save_video(p, imgs, fps=fps)
        return p.read_bytes()
