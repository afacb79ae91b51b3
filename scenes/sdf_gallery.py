"""Analytic SDFs and CSG, meshed by tide's marching cubes and spun on a turntable; each mesh exported as glb."""
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import trimesh

from engine import backend
from engine.scene import Range
from engine.fields import marching_cubes, sdf
from engine.fields.isosurface import grid_points

PALETTE = [(0.90, 0.45, 0.35), (0.35, 0.65, 0.90), (0.55, 0.80, 0.40), (0.95, 0.75, 0.30), (0.70, 0.50, 0.85),
           (0.40, 0.80, 0.75), (0.90, 0.55, 0.70), (0.75, 0.75, 0.75), (0.95, 0.60, 0.25)]


def gallery() -> dict:
    """Name -> SDF, every shape inside [-1, 1]^3."""
    R = sdf.rotation_matrix([1.0, 0.0, 0.0], 1.1)  # tilt the rings so their holes face the camera
    return {
        "sphere": sdf.Sphere(0.8),
        "round_box": sdf.RoundBox([0.7, 0.5, 0.6], 0.15),
        "capsule": sdf.Capsule(0.45, 0.35).rotate(sdf.rotation_matrix([0, 0, 1], 0.6)),
        "torus": sdf.Torus(0.6, 0.22).rotate(R),
        "superquadric": sdf.Superquadric([0.75, 0.75, 0.75], 0.3, 0.3),
        "box_minus_sphere": sdf.Box([0.65, 0.65, 0.65]) - sdf.Sphere(0.85),
        "cylinder_and_sphere": sdf.Cylinder(0.8, 0.45) & sdf.Sphere(0.8),
        "smooth_blobs": sdf.smooth_union(sdf.Sphere(0.45).translate([-0.35, 0, 0]),
                                         sdf.Sphere(0.4).translate([0.4, 0.1, 0]), 0.3),
        "ring_on_capsule": sdf.smooth_union(sdf.Torus(0.55, 0.15).rotate(R), sdf.Capsule(0.5, 0.25), 0.15),
    }


@dataclass
class Config:
    resolution: Annotated[int, Range(ge=8, le=512)] = 64
    """Marching-cubes samples per axis for each shape (over [-1, 1]^3)."""
    frames: Annotated[int, Range(ge=1)] = 48
    """Frames in one full turn (the runner's --frames decides how many are rendered)."""
    image: Annotated[int, Range(ge=32, le=4096)] = 384
    """Width and height of the video in pixels."""


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    def build(self):
        backend.ensure()
        n = self.cfg.resolution
        pts = grid_points((-1.0,) * 3, (1.0,) * 3, n)
        flat = pts.reshape(-1, 3)
        spacing = (2.0 / (n - 1),) * 3
        self.meshes = {}
        for name, shape in gallery().items():
            with torch.no_grad():
                values = shape(flat).reshape(n, n, n)
            surf = marching_cubes(values, 0.0, spacing)
            self.meshes[name] = trimesh.Trimesh(surf.verts - 1.0, surf.faces, process=False)
        self.angle = 0.0
        self._layout()

    def _layout(self):
        """Put the shapes on a 3 x 3 board (scaled to 0.45) and merge them into one mesh with face colours."""
        verts, faces, colors, base = [], [], [], 0
        for i, mesh in enumerate(self.meshes.values()):
            offset = np.array([(i % 3 - 1) * 1.1, (1 - i // 3) * 1.1, 0.0])
            verts.append(mesh.vertices * 0.45 + offset)
            faces.append(mesh.faces + base)
            colors.append(np.tile(PALETTE[i % len(PALETTE)], (len(mesh.faces), 1)))
            base += len(mesh.vertices)
        self.board = (np.concatenate(verts), np.concatenate(faces), np.concatenate(colors))

    def geometry(self):
        """The nine meshes on their 3 x 3 board, each in its colour, spinning about its own vertical axis."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        meshes = []
        for i, mesh in enumerate(self.meshes.values()):
            offset = np.array([(i % 3 - 1) * 1.1, (1 - i // 3) * 1.1, 0.0])
            meshes.append({"vertices": (mesh.vertices * 0.45) @ rot.T + offset, "faces": mesh.faces,
                           "color": PALETTE[i % len(PALETTE)]})
        return {"meshes": meshes, "bounds": ((-1.6, -1.6, -0.5), (1.6, 1.6, 0.5))}

    def step(self, frame: int):
        self.angle = 2 * np.pi * (frame + 1) / self.cfg.frames

    def render(self):
        from engine.render import Camera, DirectionalLights, render_mesh

        verts, faces, colors = self.board
        dt = backend.torch_dtype()
        # Spin every shape about its own vertical axis.
        centres = np.round(verts / 1.1) * 1.1
        centres[:, 2] = 0.0
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        spun = (verts - centres) @ rot.T + centres
        cam = Camera.from_look_at([0.0, 0.4, 4.6], (0.0, 0.0, 0.0), fov_y=40.0, width=self.cfg.image,
                                  height=self.cfg.image)
        out = render_mesh(torch.as_tensor(spun, dtype=dt), torch.as_tensor(faces), cam,
                          face_colors=torch.as_tensor(colors, dtype=dt), lights=DirectionalLights.default(dt),
                          mode="hard", background=1.0)
        return (out.rgb[0].clamp(0, 1).detach().cpu().numpy() * 255).astype(np.uint8)

    def metrics(self):
        out = {}
        for name, mesh in self.meshes.items():
            out[name] = {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                         "watertight": bool(mesh.is_watertight), "volume": float(mesh.volume)}
        out["sphere_volume_error"] = abs(out["sphere"]["volume"] / (4 / 3 * np.pi * 0.8 ** 3) - 1)
        return out

    def exports(self):
        return {f"{name}.glb": mesh for name, mesh in self.meshes.items()}
