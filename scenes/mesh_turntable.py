"""Spin a mesh file on a turntable: rasterized, coloured by normal and Lambert-lit; exported as glb, obj and a ply.

The ply holds area-weighted surface samples coloured like the render."""
from dataclasses import dataclass
from typing import Annotated
from pathlib import Path

import numpy as np
import trimesh

import torch

from engine import backend
from engine.io import PointCloud, load_mesh
from engine.scene import Range
from engine.render import Camera, DirectionalLights, render_mesh

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class Config:
    mesh: str = str(ASSETS / "meshes" / "knot.obj")
    """Mesh file to show (obj, ply, glb, stl, off)."""
    samples: Annotated[int, Range(ge=1, le=10_000_000)] = 40000
    """Surface points in the exported ply (area-weighted)."""
    frames: Annotated[int, Range(ge=1)] = 48
    """Frames in one full turn."""
    resolution: Annotated[int, Range(ge=16, le=4096)] = 384
    """Image width and height in pixels."""


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    def build(self):
        mesh = load_mesh(self.cfg.mesh)
        # normalise into the unit cube so any mesh frames the same way
        lo, hi = mesh.bounds
        mesh.apply_translation(-(lo + hi) / 2)
        mesh.apply_scale(0.8 / float(np.max(hi - lo)))
        mesh.apply_translation([0.5, 0.5, 0.5])
        self.mesh = mesh
        pts, face = trimesh.sample.sample_surface(mesh, self.cfg.samples, seed=0)
        self.points = pts
        self.colors = 0.5 + 0.5 * mesh.face_normals[face]
        self.angle = 0.0

    def step(self, frame: int):
        self.angle = 2 * np.pi * (frame + 1) / self.cfg.frames

    def _rotate(self, points):
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        return (points - 0.5) @ rot.T + 0.5

    def render(self):
        r = self.cfg.resolution
        dt = backend.torch_dtype()
        cam = Camera.from_look_at([0.5, 0.9, 2.0], target=(0.5, 0.5, 0.5), fov_y=35.0, width=r, height=r)
        verts = torch.as_tensor(self._rotate(self.mesh.vertices), dtype=dt)
        faces = torch.as_tensor(self.mesh.faces, dtype=torch.int64)
        colours = torch.as_tensor(0.5 + 0.5 * self.mesh.vertex_normals, dtype=dt)   # object-space normals
        out = render_mesh(verts, faces, cam, colors=colours, lights=DirectionalLights.default(dt), mode="hard",
                          background=1.0)
        return (out.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def geometry(self):
        return {"meshes": [{"vertices": self._rotate(self.mesh.vertices), "faces": self.mesh.faces, "color": (0.85, 0.6, 0.35)}],
                "ground": 0.05, "bounds": ((0, 0, 0), (1, 1, 1))}

    def metrics(self):
        return {"vertices": int(len(self.mesh.vertices)), "faces": int(len(self.mesh.faces)),
                "area": float(self.mesh.area), "watertight": bool(self.mesh.is_watertight)}

    def exports(self):
        return {"mesh.glb": self.mesh, "mesh.obj": self.mesh, "surface.ply": PointCloud(self.points, self.colors)}
