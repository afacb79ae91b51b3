"""The hybrid avatar (after DELTA): an explicit skinned body mesh plus a canonical radiance field for clothing and
hair, rendered by tide's hybrid volume renderer (the mesh depth is each ray's far bound, the mesh colour the
terminal colour: C = sum_i w_i c_i + T_N c_mesh).

Posing the field: a posed point x maps to canonical space by k-NN inverse skinning (k = 6): the skinning weights
of its k nearest posed body vertices, blended by inverse distance, give a blended transform M(x), and
x_c = M(x)^-1 x. Points farther than a cut-off from the body get no density (no floaters far from the person).
For speed the posed field is resampled once per frame onto a posed-space grid (the grid points' canonical
coordinates are computed once per frame and cached, since frames' poses are fixed), and the grid goes through the
fused grid path of ``render_volume``; gradients flow from the images to the grid values and on to the field.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .body import lbs

__all__ = ["knn_inverse_skinning", "HybridAvatar", "HybridRender", "body_subset"]


class HybridRender(NamedTuple):
    rgb: torch.Tensor
    """(B, H, W, 3) the composite: sum_i w_i c_i + T_N c_mesh (background 0 where no mesh)."""
    alpha: torch.Tensor
    """(B, H, W) total coverage: mesh + (1 - mesh) * field."""
    mesh_alpha: torch.Tensor
    """(B, H, W) the body mesh's coverage."""
    cloth_alpha: torch.Tensor
    """(B, H, W) the clothing field's accumulated opacity in front of the mesh (what the cloth mask supervises)."""


def body_subset(verts: torch.Tensor, faces: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ~n body vertices spread by area (for the k-NN searches; anny's 13,718 are dense at the face)."""
    from .gaussian import face_frames

    _, area = face_frames(verts, faces)
    g = torch.Generator().manual_seed(seed)
    f = torch.multinomial(area.double(), min(n, len(faces)), replacement=False, generator=g)
    return torch.unique(faces[f, 0])


def knn_inverse_skinning(points, posed_verts, skin_idx, skin_w, T, k: int = 6, cutoff: float = 0.15,
                         rest_shift=None):
    """Map posed points to canonical space by k-NN inverse skinning (no gradients: poses are data).

    Args:
        points: (P, 3) posed-space points; posed_verts: (Vs, 3) posed body vertices with sparse skinning
        (skin_idx, skin_w: (Vs, K)); T: (J, 4, 4) the frame's bone transforms.
        k: neighbours; cutoff: metres beyond which a point is invalid (no density; its canonical point is
            left at the posed one).
        rest_shift: optional (Vs, 3) per-vertex displacement added in canonical space, blended like the weights
            (clothing transfer: maps one body's canonical space into another's by vertex correspondence).
    Returns: canonical (P, 3), valid (P,) bool, nearest distance (P,).
    """
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    d, nn_ = cKDTree(posed_verts.detach().cpu().double().numpy()).query(pts, k=k)
    d = torch.as_tensor(d, dtype=points.dtype)
    nn_ = torch.as_tensor(nn_, dtype=torch.long)
    valid = d[:, 0] < cutoff
    canon = points.detach().clone()
    x, d_v, n_v = points[valid], d[valid], nn_[valid]
    iw = 1.0 / (d_v + 1e-4)
    iw = iw / iw.sum(1, keepdim=True)                                                 # (p, k)
    w = skin_w[n_v] * iw[..., None]                                                   # (p, k, K)
    M = (T[skin_idx[n_v]] * w[..., None, None]).sum((1, 2))                           # (p, 4, 4)
    xc = torch.linalg.solve(M[:, :3, :3], (x - M[:, :3, 3])[..., None]).squeeze(-1)
    if rest_shift is not None:
        xc = xc + (rest_shift[n_v] * iw[..., None]).sum(1)
    canon[valid] = xc
    return canon, valid, d[:, 0]


class HybridAvatar(nn.Module):
    """Skinned body mesh (learned per-vertex offsets and colours) + canonical clothing field.

    Args:
        body: the BodyModel (rest mesh and skinning); voxel: posed-grid spacing (metres); cutoff: the k-NN
        inverse-skinning distance cut-off; margin: grid margin around the posed body (metres);
        density_bias: the head's initial raw density (softplus(bias) * 30 1/m: -5 gives 0.2 1/m, a near-empty field).
    """

    def __init__(self, body, voxel: float = 0.025, cutoff: float = 0.15, margin: float = 0.15, knn_verts: int = 3000,
                 levels: int = 8, log2_size: int = 15, hidden: int = 32, density_bias: float = -5.0):
        super().__init__()
        from engine.fields import HashGrid
        from engine.fields.mlp import MLP

        dt = body.rest_verts.dtype
        self.body = body
        self.voxel, self.cutoff, self.margin = voxel, cutoff, margin
        self.offset = nn.Parameter(torch.zeros_like(body.rest_verts))
        self.colour = nn.Parameter(torch.zeros_like(body.rest_verts))
        lo = body.rest_verts.min(0).values - margin
        hi = body.rest_verts.max(0).values + margin
        self.encoding = HashGrid(lo.tolist(), hi.tolist(), n_levels=levels, log2_size=log2_size,
                                 base_resolution=8, max_resolution=128)
        self.head = MLP(self.encoding.out_features, 4, hidden, 2, beta=10.0)
        with torch.no_grad():
            self.head.net[-1].bias.copy_(torch.tensor([density_bias, 0.0, 0.0, 0.0], dtype=dt))
        self.register_buffer("sub", body_subset(body.rest_verts, body.faces, knn_verts))
        self._grids = {}

    # ---- the field ----------------------------------------------------------------------------------------------
    def field(self, canon: torch.Tensor):
        """(P, 3) canonical points -> density (P,) in 1/m and colour (P, 3) in [0, 1]."""
        raw = self.head(self.encoding(canon))
        return 30.0 * nn.functional.softplus(raw[:, 0]), torch.sigmoid(raw[:, 1:])

    def posed_grid(self, key, T: torch.Tensor, body=None, rest_shift=None):
        """Cached posed-space grid of a frame: (canonical points (P, 3), valid (P,), (X, Y, Z), bbox)."""
        if key in self._grids:
            return self._grids[key]
        body = body or self.body
        with torch.no_grad():
            verts = lbs(body.rest_verts, body.skin_idx, body.skin_w, T[None])[0]
            lo = verts.min(0).values - self.margin
            hi = verts.max(0).values + self.margin
            n = ((hi - lo) / self.voxel).ceil().long() + 1
            axes = [torch.linspace(float(lo[i]), float(lo[i] + (n[i] - 1) * self.voxel), int(n[i]),
                                   dtype=verts.dtype) for i in range(3)]
            pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            sub = self.sub
            canon, valid, _ = knn_inverse_skinning(pts, verts[sub], body.skin_idx[sub], body.skin_w[sub], T,
                                                   cutoff=self.cutoff,
                                                   rest_shift=None if rest_shift is None else rest_shift[sub])
            hi = torch.stack([a[-1] for a in axes])
            entry = (canon, valid, tuple(int(x) for x in n), (lo.tolist(), hi.tolist()))
        self._grids[key] = entry
        return entry

    def body_verts(self, T: torch.Tensor, body=None) -> torch.Tensor:
        """Posed body vertices (V, 3) with the learned offsets (added at rest, so they move with the skin)."""
        body = body or self.body
        return lbs(body.rest_verts + self.offset, body.skin_idx, body.skin_w, T[None])[0]

    def render(self, key, T, cameras, n_samples: int = 48, stratified: bool = True, body=None, rest_shift=None,
               with_body: bool = True, with_clothes: bool = True, grad_offsets: bool = True,
               timer: dict | None = None) -> HybridRender:
        """Render frame ``key`` (bone transforms T (J, 4, 4)) from ``cameras``.

        grad_offsets: False detaches the posed vertices, so the raster's backward skips the vertex-position
            gradients (its costliest part); the colours and the field still get theirs.
        timer: a dict that receives the forward seconds of each part (grid, lbs, mesh, field, volume).
        """
        import time

        from engine.render import render_mesh, render_volume

        clock = [time.perf_counter()]

        def lap(name):
            now = time.perf_counter()
            if timer is not None:
                timer[name] = timer.get(name, 0.0) + now - clock[0]
            clock[0] = now

        body = body or self.body
        canon, valid, shape, box = self.posed_grid(key, T, body, rest_shift)
        lap("grid")
        verts = self.body_verts(T, body)
        if not grad_offsets:
            verts = verts.detach()
        lap("lbs")
        if with_body:
            mesh = render_mesh(verts, body.faces, cameras, colors=torch.sigmoid(self.colour), mode="hard",
                               background=0.0)
        lap("mesh")
        # the field runs only where the cut-off lets density exist (about a third of the grid)
        grid = torch.zeros(len(canon), 4, dtype=canon.dtype)
        if with_clothes:
            sig, col = self.field(canon[valid])
            grid = grid.index_put((valid.nonzero()[:, 0],), torch.cat([sig[:, None], col], 1))
        grid = grid.reshape(*shape, 4)
        lap("field")
        vol = render_volume(cameras, grid=grid, bbox=box, n_samples=n_samples, stratified=stratified,
                            mesh=mesh if with_body else None, background=0.0)
        lap("volume")
        if not with_body:
            return HybridRender(vol.rgb, vol.alpha, torch.zeros_like(vol.alpha), vol.alpha)
        alpha = mesh.alpha + (1 - mesh.alpha) * vol.alpha
        return HybridRender(vol.rgb, alpha, mesh.alpha, vol.alpha)

    def clothing_mesh(self, level: float = 20.0, res: int = 96):
        """The clothing field as a mesh by marching cubes in canonical space (density iso-level ``level`` 1/m),
        vertex colours from the field. Returns (verts (n, 3), faces (m, 3), colours (n, 3)) numpy arrays."""
        import numpy as np

        from engine.fields import marching_cubes

        lo, hi = self.encoding.lo, self.encoding.hi
        ext = hi - lo
        n = (ext / ext.max() * res).ceil().long().clamp_min(8)
        axes = [torch.linspace(float(lo[i]), float(hi[i]), int(n[i]), dtype=lo.dtype) for i in range(3)]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        with torch.no_grad():
            from scipy.spatial import cKDTree

            d = torch.as_tensor(cKDTree(self.body.rest_verts[self.sub].double().numpy()).query(
                pts.double().numpy())[0], dtype=pts.dtype)
            sig = torch.cat([self.field(pts[s:s + 65536])[0] for s in range(0, len(pts), 65536)])
            sig = torch.where(d < self.cutoff, sig, torch.zeros_like(sig))
        vol = sig.reshape(*n.tolist())
        if float(vol.max()) <= level:
            return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3))
        spacing = tuple(float(ext[i] / (n[i] - 1)) for i in range(3))
        surf = marching_cubes(vol.float(), level, spacing)
        v = torch.as_tensor(surf.verts, dtype=lo.dtype) + lo
        with torch.no_grad():
            c = self.field(v)[1]
        return v.numpy(), np.asarray(surf.faces), c.numpy()
