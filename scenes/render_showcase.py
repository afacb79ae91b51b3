"""Orbit a textured mesh, a volume (hybrid with the mesh, DELTA style) and a Gaussian cloud; export normal and depth maps."""
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import trimesh

from engine import backend
from engine.scene import Range
from engine.render import (DirectionalLights, orbit_cameras, render_gaussians, render_mesh, render_volume)


@dataclass
class Config:
    frames: Annotated[int, Range(ge=1)] = 36
    """Frames in one full orbit."""
    resolution: Annotated[int, Range(ge=16, le=2048)] = 160
    """Width and height of each of the three panels, in pixels."""
    samples: Annotated[int, Range(ge=2, le=1024)] = 48
    """Volume samples per ray."""
    gaussians: Annotated[int, Range(ge=1, le=1_000_000)] = 4000
    """Number of Gaussians in the cloud."""
    elevation: Annotated[float, Range(ge=-89, le=89)] = 20.0
    """Camera elevation above the horizon, in degrees."""


def _checker(n=64, cells=8):
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    c = ((i * cells // n + j * cells // n) % 2)[..., None]
    return np.where(c, [0.95, 0.75, 0.3], [0.2, 0.35, 0.75])


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    def build(self):
        backend.ensure()
        dt = backend.torch_dtype()
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dt, device=backend.torch_device())  # noqa: E731
        # textured sphere: spherical UVs (seam faces stretch across u, acceptable for a demo)
        sphere = trimesh.creation.uv_sphere(radius=0.55, count=[24, 24])
        v = sphere.vertices / 0.55
        uv = np.stack([0.5 + np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi), 0.5 + np.arcsin(np.clip(v[:, 1], -1, 1)) / np.pi], 1)
        self.mesh = sphere
        self.verts, self.faces = t(sphere.vertices), torch.as_tensor(sphere.faces)
        self.uvs, self.texture = t(uv), t(_checker())
        # a smoky ring volume around the sphere: density (0) + colour (1:4) on a 48^3 grid over [-1, 1]^3
        g = np.linspace(-1, 1, 48)
        X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
        ring = np.exp(-((np.sqrt(X ** 2 + Z ** 2) - 0.8) ** 2 + Y ** 2) / 0.01)
        col = np.stack([0.9 + 0 * X, 0.4 + 0.4 * (Y + 1) / 2, 0.2 + 0 * X], -1)
        self.grid = t(np.concatenate([6.0 * ring[..., None], col], -1))
        # Gaussian cloud: a coloured helix
        rng = np.random.default_rng(0)
        s = rng.uniform(0, 1, self.cfg.gaussians)
        ang = s * 6 * np.pi
        means = np.stack([0.6 * np.cos(ang), 1.6 * s - 0.8, 0.6 * np.sin(ang)], 1) + rng.normal(0, 0.04, (len(s), 3))
        self.means = t(means)
        self.scales = t(np.exp(rng.normal(np.log(0.025), 0.2, (len(s), 3))))
        self.quats = t(rng.normal(size=(len(s), 4)))
        self.opac = t(np.full(len(s), 0.8))
        self.colors = t(np.stack([s, 0.5 + 0.5 * np.sin(ang), 1 - s], 1))
        self.lights = DirectionalLights.default(dt, backend.torch_device())
        # for the viewer: the checker colour at each sphere vertex, and the ring's dense voxels as points
        tex = _checker()
        ij = np.clip((uv[:, ::-1] * len(tex)).astype(int), 0, len(tex) - 1)
        self.vertex_colors = tex[ij[:, 0], ij[:, 1]]
        dense = ring > 0.3
        self.ring_points, self.ring_colors = np.stack([X[dense], Y[dense], Z[dense]], 1), col[dense]
        self.frame = 0
        self.out = None

    def step(self, frame: int):
        self.frame = frame

    def geometry(self):
        """The three panels side by side in 3D: the textured sphere; the sphere in its smoky ring (the ring's
        dense voxels as points); the Gaussian cloud (its centres). They turn as the video's camera orbits."""
        a = -2 * np.pi * self.frame / self.cfg.frames
        c, s = np.cos(a), np.sin(a)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        turn = lambda p, dx: np.asarray(p, float) @ rot.T + [dx, 0.0, 0.0]  # noqa: E731
        sphere = self.mesh.vertices
        means = self.means.detach().cpu().numpy()
        return {"meshes": [{"vertices": turn(sphere, -2.2), "faces": self.mesh.faces, "colors": self.vertex_colors},
                           {"vertices": turn(sphere, 0.0), "faces": self.mesh.faces, "colors": self.vertex_colors}],
                "particles": {"x": np.concatenate([turn(self.ring_points, 0.0), turn(means, 2.2)]),
                              "color": np.concatenate([self.ring_colors, self.colors.detach().cpu().numpy()]),
                              "radius": 0.02},
                "ground": -1.0, "bounds": ((-3.2, -1.0, -1.0), (3.2, 1.0, 1.0))}

    def _camera(self):
        c = self.cfg
        return orbit_cameras(1, radius=3.2, elevation=c.elevation, width=c.resolution, height=c.resolution,
                             fov_y=40, start=360.0 * self.frame / c.frames)

    @torch.no_grad()
    def render(self):
        cam = self._camera()
        bg = torch.tensor([1.0, 1.0, 1.0], dtype=backend.torch_dtype())
        mesh = render_mesh(self.verts, self.faces, cam, uvs=self.uvs, texture=self.texture, lights=self.lights,
                           mode="hard", background=bg)
        vol = render_volume(cam, grid=self.grid, n_samples=self.cfg.samples, stratified=False, mesh=mesh)
        gs = render_gaussians(cam, self.means, self.scales, self.quats, self.opac, colors=self.colors,
                              background=bg)
        self.out = (mesh, vol, gs)
        from engine.viewer.overlay import label_panels

        panels = [mesh.rgb[0], vol.rgb[0], gs.rgb[0]]
        img = torch.cat(panels, 1).clamp(0, 1).cpu().numpy()
        return label_panels((img * 255 + 0.5).astype(np.uint8),
                            ["textured mesh", "volume + mesh (hybrid)", f"{self.cfg.gaussians} Gaussians"])

    def _maps(self):
        if self.out is None:
            self.render()
        mesh, vol, gs = self.out
        normal = ((mesh.normals[0] * 0.5 + 0.5) * mesh.alpha[0, ..., None]).clamp(0, 1)
        from engine.viewer.overlay import depth_colormap

        near, far = 2.0, 4.4                                         # orbit radius 3.2 +- scene extent
        # hybrid expected depth normalised by everything that absorbed the ray (volume + mesh behind it)
        w = vol.alpha[0] + (1 - vol.alpha[0]) * mesh.alpha[0]
        to8 = lambda x: (x.cpu().numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
        depth = depth_colormap(mesh.depth[0].cpu().numpy(), mesh.alpha[0].cpu().numpy() > 0.5, near, far,
                               "mesh depth (camera z, world units)")
        vdepth = depth_colormap((vol.depth[0] / w.clamp_min(1e-6)).cpu().numpy(), (w > 0.05).cpu().numpy(), near,
                                far, "hybrid expected depth")
        return to8(normal), depth, vdepth

    def metrics(self):
        if self.out is None:
            self.render()
        mesh, vol, gs = self.out
        return {"mesh_coverage": float(mesh.alpha.mean()), "volume_alpha_mean": float(vol.alpha.mean()),
                "gaussian_alpha_mean": float(gs.alpha.mean()), "faces": int(self.faces.shape[0]),
                "gaussians": int(self.means.shape[0])}

    def exports(self):
        normal, depth, vdepth = self._maps()
        return {"normals.png": normal, "depth.png": depth, "hybrid_depth.png": vdepth, "mesh.obj": self.mesh}
