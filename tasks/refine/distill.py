"""Distil a coloured mesh into a differentiable representation (BoostDream step 1).

The asset is rendered (unlit vertex colours over a white background) from random cameras around it, and the
representation is fitted to those renders by an L1 loss. Two representations:

- ``SDFMesh``: a dense SDF grid (``engine.fields.DenseGrid``) meshed by ``marching_cubes_torch`` (vertices are
  differentiable w.r.t. the grid values, the grid analogue of the MeshSDF rule) with a colour grid sampled at the
  vertices; rendered by ``engine.render.render_mesh`` (hard z-buffer, antialiased silhouettes so the outline moves
  the surface).
- ``Gaussians``: 3D Gaussians initialised from ``sample_surface`` points of the asset, rendered by
  ``engine.render.render_gaussians``.

Both expose ``render(camera) -> (B, H, W, 3)`` and ``parameters()``; ``distill`` runs the fit and returns held-out
PSNR and the wall time. Units: world units for positions, RGB in [0, 1].
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine import backend
from engine.render import Camera

__all__ = ["random_cameras", "held_out_cameras", "render_asset_rgb", "SDFMesh", "Gaussians", "DistillResult",
           "distill", "psnr", "REPRESENTATIONS"]

CENTER = (0.0, -0.15, 0.0)
"""Where the cameras look (world units): the middle of the procedural shapes, which stand on y = -0.6."""
FOV = 40.0
"""Vertical field of view of the distillation cameras (degrees)."""


def _camera(az: torch.Tensor, el: torch.Tensor, dist: torch.Tensor, size: int, center=CENTER) -> Camera:
    """Cameras at azimuth/elevation (radians, (N,)) and distance (world units, (N,)) looking at ``center``."""
    c = torch.tensor(center, dtype=torch.float64)
    eye = torch.stack([dist * torch.cos(el) * torch.sin(az), dist * torch.sin(el),
                       dist * torch.cos(el) * torch.cos(az)], -1) + c
    return Camera.from_look_at(eye.to(backend.torch_dtype()), center, fov_y=FOV, width=size, height=size)


def random_cameras(n: int, size: int, generator: torch.Generator | None = None, elevation=(-10.0, 50.0),
                   distance=(2.6, 3.4), center=CENTER) -> Camera:
    """``n`` cameras at uniform random azimuth, elevation in ``elevation`` degrees, distance in ``distance``."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    az = u[:, 0] * 2 * math.pi
    el = torch.deg2rad(elevation[0] + (elevation[1] - elevation[0]) * u[:, 1])
    d = distance[0] + (distance[1] - distance[0]) * u[:, 2]
    return _camera(az, el, d, size, center)


def held_out_cameras(n: int, size: int, elevation: float = 25.0, distance: float = 3.0, center=CENTER) -> Camera:
    """A fixed ring of ``n`` cameras, offset by half a step from azimuth 0 so no view equals a training view by
    construction (training views are random)."""
    az = (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * math.pi / n)
    el = torch.full((n,), math.radians(elevation), dtype=torch.float64)
    return _camera(az, el, torch.full((n,), float(distance), dtype=torch.float64), size, center)


def render_asset_rgb(verts, faces, colors, camera: Camera, background: float = 1.0) -> torch.Tensor:
    """Unlit vertex-coloured mesh -> (B, H, W, 3) over a white background (hard raster, antialiased edges)."""
    from engine.render import render_mesh

    out = render_mesh(verts, faces, camera, colors=colors, mode="hard", antialias=True, background=background)
    return out.rgb


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (any equal shapes)."""
    mse = float(((a.detach() - b.detach()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


# ---- representations -----------------------------------------------------------------------------------------
class SDFMesh(torch.nn.Module):
    """A mesh from a dense SDF grid over ``[lo, hi]^3`` (``resolution``^3 nodes) plus a colour grid.

    The SDF starts as a sphere of ``radius`` around ``center``; colours start grey. ``mesh()`` returns
    ``(verts (V, 3), faces (F, 3), colors (V, 3))`` with verts and colours differentiable w.r.t. the grids.
    """

    def __init__(self, resolution: int = 32, lo: float = -1.0, hi: float = 1.0, center=CENTER, radius: float = 0.5,
                 color_resolution: int | None = None):
        super().__init__()
        from engine.fields import DenseGrid

        c = torch.tensor(center)
        self.sdf = DenseGrid((resolution,) * 3, (lo,) * 3, (hi,) * 3,
                             init=lambda p: (p - c.to(p)).norm(dim=-1) - radius)
        cr = color_resolution or resolution
        self.color = torch.nn.Parameter(torch.zeros(1, 3, cr, cr, cr, dtype=backend.torch_dtype()))
        self.lo, self.hi = lo, hi

    def mesh(self):
        from engine.fields import marching_cubes_torch

        verts, faces = marching_cubes_torch(self.sdf.values, 0.0, self.sdf.spacing())
        if len(faces) == 0:
            raise ValueError("SDFMesh: the SDF grid has no zero crossing (the surface vanished)")
        verts = verts + self.lo
        # grid_sample's (x, y, z) order indexes (W, H, D): our colour grid is (D=x, H=y, W=z), so reverse the axes
        g = ((verts - self.lo) / (self.hi - self.lo) * 2 - 1).flip(-1).to(self.color.dtype)
        col = F.grid_sample(self.color, g.view(1, -1, 1, 1, 3), align_corners=True).view(3, -1).t()
        return verts, faces, torch.sigmoid(col)

    def render(self, camera: Camera) -> torch.Tensor:
        v, f, c = self.mesh()
        return render_asset_rgb(v, f, c, camera)

    def regularizer(self) -> torch.Tensor:
        """Squared differences of neighbouring SDF values beyond one grid step (keeps the grid SDF-like and smooth
        away from the surface, where the renders give no gradient)."""
        s = self.sdf.values
        h = self.sdf.spacing()[0]
        d = [torch.diff(s, dim=k) for k in range(3)]
        return sum(F.relu(x.abs() - h).square().mean() for x in d)

    def export(self, path):
        """Write the mesh with vertex colours (glb/ply/obj by suffix), atomically."""
        import trimesh

        from engine.io.atomic import atomic_path

        v, f, c = (x.detach().cpu().numpy() for x in self.mesh())
        rgba = np.concatenate([(c.clip(0, 1) * 255).astype(np.uint8), np.full((len(c), 1), 255, np.uint8)], 1)
        m = trimesh.Trimesh(v, f, vertex_colors=rgba, process=False)
        with atomic_path(path) as tmp:
            m.export(str(tmp), file_type=str(path).rsplit(".", 1)[-1])
        return path


class Gaussians(torch.nn.Module):
    """3D Gaussians: means (N, 3), log std-devs (N, 3), quaternions (N, 4), opacity logits (N,), colour logits (N, 3).

    Initialised from ``n`` area-weighted surface samples of a mesh, with the colour of the nearest vertex and a
    scale of about the mean spacing of the samples."""

    def __init__(self, verts, faces, colors, n: int = 2000, generator: torch.Generator | None = None):
        super().__init__()
        from engine.fields import sample_surface

        dt = backend.torch_dtype()
        verts = torch.as_tensor(verts, dtype=dt)
        pts, idx = sample_surface(verts, faces, n, generator=generator)
        cols = torch.as_tensor(colors, dtype=dt)[torch.as_tensor(faces)[idx, 0]]
        area = float(torch.linalg.cross(verts[faces[:, 1]] - verts[faces[:, 0]],
                                        verts[faces[:, 2]] - verts[faces[:, 0]]).norm(dim=-1).sum() / 2)
        spacing = math.sqrt(area / n)
        self.means = torch.nn.Parameter(pts.detach().clone())
        self.log_scales = torch.nn.Parameter(torch.full((n, 3), math.log(0.5 * spacing), dtype=dt))
        q = torch.zeros(n, 4, dtype=dt)
        q[:, 0] = 1
        self.quats = torch.nn.Parameter(q)
        self.opacity_logits = torch.nn.Parameter(torch.full((n,), 2.0, dtype=dt))
        self.color_logits = torch.nn.Parameter(torch.logit(cols.clamp(0.02, 0.98)))

    def render(self, camera: Camera) -> torch.Tensor:
        from engine.render import render_gaussians

        out = render_gaussians(camera, self.means, self.log_scales.exp(), F.normalize(self.quats, dim=-1),
                               torch.sigmoid(self.opacity_logits), colors=torch.sigmoid(self.color_logits),
                               background=1.0)
        return out.rgb

    def regularizer(self) -> torch.Tensor:
        """Penalise Gaussians much larger than their start (needle/blob artefacts between views)."""
        return F.relu(self.log_scales - math.log(0.1)).square().mean()

    def export(self, path):
        """Write a 3DGS-style binary ply (x y z, f_dc_0..2, opacity, scale_0..2, rot_0..3), atomically."""
        from engine.io.atomic import write_bytes

        sh_c0 = 0.28209479177387814  # degree-0 SH constant: rgb = 0.5 + C0 * f_dc
        rgb = torch.sigmoid(self.color_logits)
        cols = [self.means, (rgb - 0.5) / sh_c0, self.opacity_logits[:, None], self.log_scales,
                F.normalize(self.quats, dim=-1)]
        data = torch.cat([c.detach().cpu().double() for c in cols], 1).numpy().astype("<f4")
        names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                 "rot_0", "rot_1", "rot_2", "rot_3"]
        head = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % len(data)
        head += "".join(f"property float {n}\n" for n in names) + "end_header\n"
        write_bytes(path, head.encode() + data.tobytes())
        return path


REPRESENTATIONS = ("mesh", "gaussians")


@dataclass
class DistillResult:
    """``model``: the fitted representation; ``psnr``: mean held-out PSNR (dB) after / ``psnr_start`` before the
    fit; ``wall_s``: seconds of the fit; ``losses``: L1 per step."""

    model: torch.nn.Module
    psnr: float
    psnr_start: float
    wall_s: float
    losses: list = field(default_factory=list)


def distill(verts, faces, colors, representation: str = "mesh", steps: int = 200, size: int = 48, views: int = 4,
            lr: float | None = None, reg: float = 1.0, held_out: int = 6, seed: int = 0, resolution: int = 32,
            n_gaussians: int = 2000, callback=None) -> DistillResult:
    """Fit ``representation`` ("mesh" or "gaussians") to the vertex-coloured mesh by L1 between renders.

    Args:
        verts (V, 3), faces (F, 3), colors (V, 3): the asset (world units, RGB in [0, 1]).
        steps: Adam steps; each renders ``views`` random cameras at ``size`` x ``size`` pixels.
        reg: weight of the representation's regulariser.
        held_out: views of the fixed ring scored by PSNR before and after.
        callback: optional ``f(step, loss)``.
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}: use one of {', '.join(REPRESENTATIONS)}")
    dt = backend.torch_dtype()
    verts = torch.as_tensor(verts, dtype=dt)
    faces = torch.as_tensor(faces, dtype=torch.int64)
    colors = torch.as_tensor(colors, dtype=dt)
    g = torch.Generator().manual_seed(int(seed))
    if representation == "mesh":
        model = SDFMesh(resolution)
        lr = 0.01 if lr is None else lr
        groups = [{"params": [model.sdf.values], "lr": lr}, {"params": [model.color], "lr": 10 * lr}]
    else:
        model = Gaussians(verts, faces, colors, n_gaussians, generator=g)
        lr = 0.005 if lr is None else lr
        groups = [{"params": [model.means], "lr": lr * 0.2}, {"params": [model.log_scales, model.quats], "lr": lr},
                  {"params": [model.opacity_logits, model.color_logits], "lr": 10 * lr}]
    test_cam = held_out_cameras(held_out, size)
    with torch.no_grad():
        test_ref = render_asset_rgb(verts, faces, colors, test_cam)
        psnr_start = psnr(model.render(test_cam).clamp(0, 1), test_ref)
    opt = torch.optim.Adam(groups)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        cam = random_cameras(views, size, generator=g)
        with torch.no_grad():
            ref = render_asset_rgb(verts, faces, colors, cam)
        opt.zero_grad()
        loss = (model.render(cam) - ref).abs().mean()
        total = loss + reg * model.regularizer()
        total.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, float(loss))
    wall = time.perf_counter() - t0
    with torch.no_grad():
        score = psnr(model.render(test_cam).clamp(0, 1), test_ref)
    return DistillResult(model, score, psnr_start, wall, losses)
