"""A neural radiance field for distillation/refinement: tide's hash grid + a small MLP head, volume-rendered.

Same interface as ``distill.MeshField`` / ``distill.GaussianField``: ``render(params (B, V, 3), size)`` returns
(B, V, 6, size, size) RGB + normal views over white (``views.composite``), and ``regularizer``, ``asset``,
``exports``. Pass it to ``distill.distill(asset, rep=NerfField())``.

The field maps a point (world units) to a density (1 / world unit) and 6 features: colour (sigmoid) and a
*predicted* normal. The normal is a head output (as Ref-NeRF's predicted normals), not the density gradient:
the hash encoding has no second derivative through ``engine.bridge``, so a gradient normal could not be trained by
the normal renders. A density prior (a ball of ``prior_radius`` around the cameras' target, radial normals) keeps
the first renders from being empty; the network learns the residual.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine import backend

from . import views
from .shapes import Asset

__all__ = ["NerfField"]

LO, HI = -1.0, 1.0


class NerfField(torch.nn.Module):
    """Hash grid (``n_levels`` x 2 features, 2^``log2_size`` entries per level, up to ``max_resolution``) + MLP
    (``hidden`` wide, 2 layers) -> density (softplus, with the ball prior of sharpness ``prior_sharpness``) and
    colour + normal. ``n_samples`` per ray, stratified while ``training``."""

    def __init__(self, asset: Asset | None = None, n_levels: int = 6, log2_size: int = 13, max_resolution: int = 64,
                 hidden: int = 32, n_samples: int = 32, prior_radius: float = 0.4, prior_sharpness: float = 30.0,
                 seed: int = 0):
        super().__init__()
        from engine.fields import MLP, HashGrid

        # the asset is not used for the init: a NeRF has no cheap exact init from a mesh, distillation fits it
        del asset
        self.encoding = HashGrid((LO,) * 3, (HI,) * 3, n_levels=n_levels, features=2, log2_size=log2_size,
                                 base_resolution=4, max_resolution=max_resolution, seed=seed)
        self.head = MLP(self.encoding.out_features, 7, hidden, 2, beta=10.0)
        self.n_samples = int(n_samples)
        self.prior_radius, self.prior_sharpness = float(prior_radius), float(prior_sharpness)
        self._gen = torch.Generator().manual_seed(seed)

    def field(self, pts: torch.Tensor):
        """(..., 3) world points -> density (...) (1 / world unit) and features (..., 6) (colour, normal)."""
        shape = pts.shape[:-1]
        x = pts.reshape(-1, 3)
        h = self.head(self.encoding(x))
        d = x - torch.tensor(views.TARGET, dtype=x.dtype, device=x.device)
        r = d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        sigma = F.softplus(h[:, 0] + self.prior_sharpness * (self.prior_radius - r[:, 0])) * 20.0
        rgb = torch.sigmoid(h[:, 1:4])
        n = F.normalize(h[:, 4:7] + d / r, dim=-1, eps=1e-6)
        return sigma.reshape(shape), torch.cat([rgb, n], -1).reshape(*shape, 6)

    def render(self, params: torch.Tensor, size: int) -> torch.Tensor:
        from engine.render import render_volume

        cam = views.cameras(params, size)
        out = render_volume(cam, field=self.field, bbox=((LO,) * 3, (HI,) * 3), n_samples=self.n_samples,
                            stratified=self.training, generator=self._gen, background=0.0)
        a = out.alpha.clamp(0, 1)
        rgb = out.rgb[..., :3] / a[..., None].clamp_min(1e-3)
        n = F.normalize(out.rgb[..., 3:], dim=-1, eps=1e-6)
        img = views.composite(rgb.clamp(0, 1), n, a, size)
        return img.reshape(*params.shape[:2], 6, size, size)

    def regularizer(self) -> torch.Tensor:
        """Small L2 on the hash table (keeps empty space from growing floaters where no view constrains it)."""
        return 1e-4 * self.encoding.table.square().mean()

    @torch.no_grad()
    def asset(self, resolution: int = 48, level: float = 10.0) -> Asset:
        """The ``level`` density iso-surface (marching cubes on a ``resolution``^3 grid) with the field's colours."""
        from engine.fields import marching_cubes

        a = torch.linspace(LO, HI, resolution, dtype=backend.torch_dtype())
        pts = torch.stack(torch.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)
        sig = torch.cat([self.field(p)[0] for p in pts.split(1 << 16)]).reshape((resolution,) * 3)
        surf = marching_cubes(sig.cpu().numpy(), level, ((HI - LO) / (resolution - 1),) * 3)
        verts = torch.as_tensor(surf.verts + LO, dtype=pts.dtype)
        cols = self.field(verts)[1][:, :3] if len(verts) else verts.new_zeros(0, 3)
        return Asset(verts, torch.as_tensor(surf.faces), cols)

    def exports(self, name: str) -> dict:
        return {f"{name}.glb": self.asset().to_trimesh()}
