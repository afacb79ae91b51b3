"""Distil a mesh asset into a differentiable representation by an L1 loss between renders from random cameras.

Representations (each renders (B, V, 6, S, S) RGB + normal views through ``views``' cameras, see ``views``):
- ``MeshField``: an SDF grid meshed by ``marching_cubes_torch`` (gradients reach the grid values through the
  interpolated vertices) plus a colour grid sampled at the vertices, rendered by the hard rasterizer with
  antialiased silhouettes (DMTet-like).
- ``GaussianField``: 3D Gaussians initialised from surface samples (colour and normal as 6 feature channels),
  rendered by the splatter.
- ``NerfField`` (``nerf.py``): tide's hash grid + an MLP head, volume-rendered.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine import backend
from engine.errors import MeshError

from . import views
from .shapes import Asset

__all__ = ["load_asset", "MeshField", "GaussianField", "make_representation", "distill", "psnr", "ssim",
           "REPRESENTATIONS"]

REPRESENTATIONS = ("mesh", "gaussians", "nerf")
LO, HI = -1.0, 1.0


def load_asset(path) -> Asset:
    """obj/ply/glb -> Asset with per-vertex colours (vertex colours as stored, a texture sampled at the vertices'
    uvs, or a uniform grey when the file has neither). MeshError (one line) for a missing or unreadable file."""
    from engine.io.mesh import MESH_SUFFIXES, load_mesh

    p = Path(path)
    if p.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(f"asset must be one of {', '.join(MESH_SUFFIXES)}, got {p.name}")
    tm = load_mesh(p)
    dt = backend.torch_dtype()
    kind = getattr(tm.visual, "kind", None)
    try:
        vis = tm.visual.to_color() if kind == "texture" else tm.visual   # texture: sampled at the vertex uvs
        cols = (np.asarray(vis.vertex_colors, dtype=np.float64)[:, :3] / 255.0 if kind is not None
                else np.full((len(tm.vertices), 3), 0.7))
    except Exception:  # noqa: BLE001 - a visual trimesh cannot convert: no colour information
        cols = np.full((len(tm.vertices), 3), 0.7)
    if cols.shape[0] != len(tm.vertices):
        cols = np.full((len(tm.vertices), 3), 0.7)
    return Asset(torch.as_tensor(np.asarray(tm.vertices), dtype=dt), torch.as_tensor(np.asarray(tm.faces)),
                 torch.as_tensor(cols, dtype=dt))


def _sdf_of(asset: Asset, n: int) -> np.ndarray:
    """The asset's signed distance (``shapes.mesh_sdf``) on the n^3 grid over [LO, HI]^3, truncated at +-0.2 (far
    from the surface the value does not matter, and a truncated SDF keeps the grid smooth there)."""
    from .shapes import mesh_sdf

    a = np.linspace(LO, HI, n)
    pts = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)
    return np.clip(mesh_sdf(asset, pts), -0.2, 0.2).reshape(n, n, n)


def _sample_grid(grid: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """grid (C, n, n, n) indexed [c, i, j, k] over x, y, z in [LO, HI]; pts (N, 3) -> (N, C), trilinear."""
    g = ((pts - LO) / (HI - LO) * 2 - 1).flip(-1)            # grid_sample wants (x=k, y=j, z=i)
    return F.grid_sample(grid[None], g.view(1, -1, 1, 1, 3).to(grid.dtype), align_corners=True).view(
        grid.shape[0], -1).T


class MeshField(torch.nn.Module):
    """SDF grid (n^3 over [-1, 1]^3, world units) + colour grid (3, n, n, n) (colour logits)."""

    def __init__(self, asset: Asset | None, n: int = 32):
        super().__init__()
        dt = backend.torch_dtype()
        self.n = n
        if asset is None:      # from scratch: a sphere of radius 0.4 at the object centre, grey
            a = torch.linspace(LO, HI, n, dtype=dt)
            X = torch.stack(torch.meshgrid(a, a, a, indexing="ij"), -1)
            sdf = (X - torch.tensor(views.TARGET, dtype=dt)).norm(dim=-1) - 0.4
            col = torch.zeros(3, n, n, n, dtype=dt)
        else:
            sdf = torch.as_tensor(_sdf_of(asset, n), dtype=dt)
            from scipy.spatial import cKDTree

            a = np.linspace(LO, HI, n)
            pts = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)
            idx = cKDTree(asset.verts.detach().cpu().numpy()).query(pts)[1]
            c = asset.colors.detach().cpu().numpy()[idx].clip(0.02, 0.98)
            col = torch.as_tensor(np.log(c / (1 - c)), dtype=dt).T.reshape(3, n, n, n)
        self.sdf = torch.nn.Parameter(sdf)
        self.color = torch.nn.Parameter(col)

    def surface(self):
        """(verts (V, 3) differentiable w.r.t. the SDF grid, faces (F, 3), colours (V, 3) differentiable)."""
        from engine.fields import marching_cubes_torch

        verts, faces = marching_cubes_torch(self.sdf, 0.0, ((HI - LO) / (self.n - 1),) * 3)
        verts = verts + LO
        return verts, faces, torch.sigmoid(_sample_grid(self.color, verts))

    def render(self, params: torch.Tensor, size: int) -> torch.Tensor:
        verts, faces, cols = self.surface()
        if len(faces) == 0:
            return torch.ones(*params.shape[:2], 6, size, size, dtype=self.sdf.dtype)
        return views.render_asset(verts, faces, cols, params, size)

    def regularizer(self) -> torch.Tensor:
        v = self.sdf
        return sum(((v.narrow(a, 2, self.n - 2) - 2 * v.narrow(a, 1, self.n - 2) + v.narrow(a, 0, self.n - 2)) ** 2)
                   .mean() for a in range(3))

    def asset(self) -> Asset:
        with torch.no_grad():
            v, f, c = self.surface()
        return Asset(v.detach(), f, c.detach())

    def exports(self, name: str) -> dict:
        return {f"{name}.glb": self.asset().to_trimesh()}


class GaussianField(torch.nn.Module):
    """N Gaussians: means (N, 3), log-scales (N, 3), quaternions (N, 4), opacity logits (N,), colour logits (N, 3)
    and a normal (N, 3) that is splatted as 3 more feature channels."""

    def __init__(self, asset: Asset | None, n: int = 3000, seed: int = 0):
        super().__init__()
        from engine.fields import face_normals, sample_surface

        dt = backend.torch_dtype()
        g = torch.Generator().manual_seed(seed)
        if asset is None:
            means = torch.randn(n, 3, generator=g, dtype=dt)
            means = 0.4 * means / means.norm(dim=1, keepdim=True) + torch.tensor(views.TARGET, dtype=dt)
            nrm = means - torch.tensor(views.TARGET, dtype=dt)
            col = torch.zeros(n, 3, dtype=dt)
        else:
            means, fi = sample_surface(asset.verts.to(dt), asset.faces, n, generator=g)
            nrm = face_normals(asset.verts.to(dt), asset.faces)[fi]
            c = asset.colors.to(dt)[asset.faces[fi]].mean(1).clamp(0.02, 0.98)
            col = torch.log(c / (1 - c))
        self.means = torch.nn.Parameter(means.detach().clone())
        self.log_scales = torch.nn.Parameter(torch.full((n, 3), float(np.log(0.02)), dtype=dt))
        self.quats = torch.nn.Parameter(torch.tensor([1.0, 0, 0, 0], dtype=dt).repeat(n, 1))
        self.opacity = torch.nn.Parameter(torch.full((n,), 2.0, dtype=dt))
        self.color = torch.nn.Parameter(col)
        self.normal = torch.nn.Parameter(F.normalize(nrm, dim=1).detach().clone())

    def render(self, params: torch.Tensor, size: int) -> torch.Tensor:
        from engine.render import render_gaussians

        cam = views.cameras(params, 2 * size)
        feat = torch.cat([torch.sigmoid(self.color), F.normalize(self.normal, dim=1, eps=1e-6)], 1)
        out = render_gaussians(cam, self.means, self.log_scales.exp(), F.normalize(self.quats, dim=1),
                               torch.sigmoid(self.opacity), colors=feat, background=0.0)
        a = out.alpha.clamp(0, 1)
        rgb = out.rgb[..., :3] / a[..., None].clamp_min(1e-3)
        n = F.normalize(out.rgb[..., 3:], dim=-1, eps=1e-6)
        return views.composite(rgb.clamp(0, 1), n, a, size).reshape(*params.shape[:2], 6, size, size)

    def regularizer(self) -> torch.Tensor:
        return (self.log_scales.exp() - 0.02).clamp_min(0).square().mean()

    def exports(self, name: str) -> dict:
        from engine.io import PointCloud

        with torch.no_grad():
            return {f"{name}.ply": PointCloud(self.means.detach().cpu().numpy(),
                                              torch.sigmoid(self.color).cpu().numpy())}

    def asset(self) -> Asset:
        """The Gaussian centres as a point 'surface' (no faces): used for Chamfer metrics."""
        with torch.no_grad():
            return Asset(self.means.detach().clone(), torch.zeros(0, 3, dtype=torch.long),
                         torch.sigmoid(self.color).detach())


def make_representation(kind: str, asset: Asset | None, **kw):
    if kind == "mesh":
        return MeshField(asset, **kw)
    if kind == "gaussians":
        return GaussianField(asset, **kw)
    if kind == "nerf":
        from .nerf import NerfField

        return NerfField(asset, **kw)
    raise ValueError(f"representation must be one of {', '.join(REPRESENTATIONS)}, got {kind!r}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of images in [0, 1] (torchmetrics), any matching shapes (..., C, H, W)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a.float().flatten(0, -4), b.float().flatten(0, -4), data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of images in [0, 1] (torchmetrics, 7-pixel Gaussian window for small views)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(a.float().flatten(0, -4), b.float().flatten(0, -4),
                                                     data_range=1.0, kernel_size=7))


def distill(asset: Asset, kind: str = "mesh", steps: int = 30, size: int = 32, views_per_step: int = 1,
            lr: float = 0.01, ssim_weight: float = 0.0, seed: int = 0, rep=None, **kw) -> tuple:
    """Fit ``kind`` to ``asset`` by L1 (+ ``ssim_weight`` (1 - SSIM)) on RGB + normal renders from random view
    sets. Returns (representation, report dict: PSNR/SSIM on 2 held-out view sets (fixed seed, not trained on),
    wall time in seconds)."""
    t0 = time.perf_counter()
    rep = rep if rep is not None else make_representation(kind, asset, **kw)
    opt = torch.optim.Adam(rep.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        p = views.view_params(views_per_step, g)
        with torch.no_grad():
            target = views.render_asset(asset.verts, asset.faces, asset.colors, p, size)
        img = rep.render(p, size)
        loss = (img - target).abs().mean()
        if ssim_weight:
            from torchmetrics.functional.image import structural_similarity_index_measure

            loss = loss + ssim_weight * (1 - structural_similarity_index_measure(
                img.flatten(0, 1).float(), target.flatten(0, 1).float(), data_range=1.0, kernel_size=7))
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = evaluate(rep, asset, size)
    report["wall_s"] = time.perf_counter() - t0
    return rep, report


@torch.no_grad()
def evaluate(rep, asset: Asset, size: int = 32) -> dict:
    """PSNR/SSIM of ``rep`` against ``asset`` on 2 fixed held-out view sets (seed 12345, not used in training)."""
    p = views.view_params(2, torch.Generator().manual_seed(12345))
    ref = views.render_asset(asset.verts, asset.faces, asset.colors, p, size)
    img = rep.render(p, size)
    return {"psnr": psnr(img, ref), "ssim": ssim(img, ref)}
