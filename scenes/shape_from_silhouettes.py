"""Shape from silhouettes: optimise a grid SDF so its marching-cubes mesh, soft-rasterized (or hard-rasterized and
antialiased), matches target masks."""
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import trimesh

from engine import backend
from engine.scene import Choices, Range
from engine.fields import DenseGrid, chamfer_distance, marching_cubes, marching_cubes_torch, sample_surface, sdf
from engine.fields.isosurface import grid_points


def target_shape():
    """The known shape to recover: a rounded box fused with a ring (convex enough for silhouettes to pin down)."""
    R = sdf.rotation_matrix([1.0, 0.0, 0.0], np.pi / 2)
    return sdf.smooth_union(sdf.RoundBox([0.45, 0.3, 0.3], 0.1), sdf.Torus(0.45, 0.12).rotate(R).translate(
        [0.0, 0.25, 0.0]), 0.1)


@dataclass
class Config:
    grid: Annotated[int, Range(ge=8, le=256)] = 24
    """SDF grid nodes per axis over [-1, 1]^3 (the optimised parameters)."""
    views: Annotated[int, Range(ge=1, le=256)] = 8
    """Number of target silhouettes (cameras on two rings around the shape)."""
    image: Annotated[int, Range(ge=16, le=2048)] = 64
    """Silhouette width and height in pixels."""
    iterations: Annotated[int, Range(ge=0)] = 150
    """Adam steps."""
    lr: Annotated[float, Range(gt=0)] = 0.01
    """Adam learning rate on grid values (world units)."""
    raster: Annotated[str, Choices("soft", "hard")] = "soft"
    """Silhouette renderer: "soft" (blurred coverage, K layers) or "hard" (z-buffer with silhouette antialiasing:
    gradients only at the outline pixels)."""
    sigma: Annotated[float, Range(gt=0)] = 2e-5
    """Soft-rasterizer blur (squared NDC units)."""
    faces_per_pixel: Annotated[int, Range(ge=1, le=64)] = 16
    """K of the soft rasterizer (more layers keep small marching-cubes faces from dropping out of the blend)."""
    smooth_weight: Annotated[float, Range(ge=0)] = 0.5
    """Weight of the grid smoothness term (squared second differences of the SDF values)."""
    frame_every: Annotated[int, Range(ge=1)] = 10
    """Add a progress frame to the video every this many iterations."""
    seed: Annotated[int, Range(ge=0, lt=2**31)] = 0
    """Seed for surface sampling in the Chamfer metric."""


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    def build(self):
        from engine.render import Camera, render_mesh

        backend.ensure()
        dt = backend.torch_dtype()
        self.lo, self.hi = (-1.0,) * 3, (1.0,) * 3
        n = self.cfg.views
        az = np.linspace(0, 2 * np.pi, n, endpoint=False)
        el = np.where(np.arange(n) % 2 == 0, 0.5, -0.3)  # alternate rings above and below
        eyes = 3.0 * np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], 1)
        self.cameras = Camera.from_look_at(torch.as_tensor(eyes, dtype=dt), (0.0, 0.0, 0.0), fov_y=40.0,
                                           width=self.cfg.image, height=self.cfg.image)
        self.target = self._mesh_of(target_shape(), 64)
        with torch.no_grad():
            # Targets are exact binary masks (hard rasterization), as a camera's segmentation would be.
            self.target_alpha = render_mesh(*self.target, self.cameras, mode="hard").alpha
        self.field = DenseGrid((self.cfg.grid,) * 3, self.lo, self.hi,
                               init=lambda x: torch.linalg.norm(x, dim=1) - 0.5)  # start from a sphere
        self.spacing = self.field.spacing()
        self.target_points, _ = sample_surface(*self.target, 5000, generator=torch.Generator().manual_seed(
            self.cfg.seed))
        self.chamfer_start = self.chamfer()
        self.history = []
        self.angle = 0.0

    def _mesh_of(self, shape, n):
        pts = grid_points(self.lo, self.hi, n).reshape(-1, 3)
        with torch.no_grad():
            values = shape(pts).reshape(n, n, n)
        surf = marching_cubes(values, 0.0, (2.0 / (n - 1),) * 3)
        dt = backend.torch_dtype()
        return torch.as_tensor(surf.verts - 1.0, dtype=dt), torch.as_tensor(surf.faces)

    def _silhouettes(self, verts, faces):
        from engine.render import render_mesh

        if self.cfg.raster == "hard":
            return render_mesh(verts, faces, self.cameras, mode="hard", antialias=True).alpha
        out = render_mesh(verts, faces, self.cameras, mode="soft", sigma=self.cfg.sigma,
                          faces_per_pixel=self.cfg.faces_per_pixel)
        return out.alpha

    def current_mesh(self):
        """(verts (V, 3) differentiable w.r.t. the grid values, faces (F, 3)) of the current zero level set."""
        verts, faces = marching_cubes_torch(self.field.values, 0.0, self.spacing)
        return verts + torch.as_tensor(self.lo, dtype=verts.dtype), faces

    def chamfer(self) -> float:
        with torch.no_grad():
            verts, faces = self.current_mesh()
            pts, _ = sample_surface(verts, faces, 5000, generator=torch.Generator().manual_seed(self.cfg.seed))
            return float(chamfer_distance(pts, self.target_points, squared=False))

    def _smoothness(self):
        v = self.field.values
        total = 0.0
        for axis in range(3):
            d2 = v.narrow(axis, 2, v.shape[axis] - 2) - 2 * v.narrow(axis, 1, v.shape[axis] - 2) + v.narrow(
                axis, 0, v.shape[axis] - 2)
            total = total + (d2 ** 2).mean()
        return total

    def optimize(self, run):
        opt = torch.optim.Adam(self.field.parameters(), lr=self.cfg.lr)

        def state():
            return {"values": self.field.values.detach().clone(), "opt": opt.state_dict()}

        def load(blob):
            with torch.no_grad():
                self.field.values.copy_(blob["values"])
            opt.load_state_dict(blob["opt"])

        run.units.update(loss="mask MSE + weighted smoothness", silhouette="mask MSE, unitless",
                         chamfer="world units (shape in [-1, 1]^3)")
        for it in run.loop(self.cfg.iterations, state=state, load=load, desc="silhouettes"):
            loss, sil = self.iterate(opt)
            if it % self.cfg.frame_every == 0 or it == self.cfg.iterations - 1:
                run.log(loss=loss, silhouette=sil, chamfer=self.chamfer())
                run.frame(self.render())
            else:
                run.log(loss=loss, silhouette=sil)

    def iterate(self, opt):
        """One Adam step; returns (total loss, silhouette MSE)."""
        verts, faces = self.current_mesh()
        sil = ((self._silhouettes(verts, faces) - self.target_alpha) ** 2).mean()
        loss = sil + self.cfg.smooth_weight * self._smoothness()
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.history.append(sil.item())
        return loss.item(), sil.item()

    def geometry(self):
        """The recovered mesh (orange, left) and the target (blue, right), turning like the video's camera."""
        c, s = np.cos(-self.angle), np.sin(-self.angle)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        with torch.no_grad():
            verts, faces = self.current_mesh()
        return {"meshes": [{"vertices": verts.double().cpu().numpy() @ rot.T - [1.1, 0, 0],
                            "faces": faces.cpu().numpy(), "color": (0.9, 0.55, 0.3)},
                           {"vertices": self.target[0].double().cpu().numpy() @ rot.T + [1.1, 0, 0],
                            "faces": self.target[1].cpu().numpy(), "color": (0.45, 0.7, 0.9)}],
                "ground": -1.0, "bounds": ((-2.2, -1.0, -1.0), (2.2, 1.0, 1.0))}

    def step(self, frame: int):
        self.angle = 2 * np.pi * (frame + 1) / 48

    def render(self):
        """Left: the current mesh, shaded; right: the target, from the same rotating camera."""
        from engine.render import Camera, DirectionalLights, render_mesh

        dt = backend.torch_dtype()
        eye = [3.0 * np.sin(self.angle + 0.6), 1.2, 3.0 * np.cos(self.angle + 0.6)]
        cam = Camera.from_look_at(eye, (0.0, 0.0, 0.0), fov_y=40.0, width=256, height=256)
        panels = []
        with torch.no_grad():
            for (verts, faces), colour in ((self.current_mesh(), (0.9, 0.55, 0.3)), (self.target, (0.45, 0.7, 0.9))):
                out = render_mesh(verts.to(dt), faces, cam, face_colors=torch.tensor([colour], dtype=dt).expand(
                    len(faces), 3), lights=DirectionalLights.default(dt), mode="hard", background=1.0)
                panels.append((out.rgb[0].clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
        from engine.viewer.overlay import label_panels

        return label_panels(np.concatenate(panels, axis=1), [f"recovered mesh ({len(self.history)} steps)",
                                                             "target"])

    def metrics(self):
        return {"chamfer_start": self.chamfer_start, "chamfer_end": self.chamfer(),
                "silhouette_mse_last": self.history[-1] if self.history else None,
                "iterations": len(self.history)}

    def exports(self):
        verts, faces = self.current_mesh()
        return {"recovered.glb": trimesh.Trimesh(verts.detach().cpu().numpy(), faces.cpu().numpy(), process=False),
                "target.glb": trimesh.Trimesh(self.target[0].numpy(), self.target[1].numpy(), process=False)}
