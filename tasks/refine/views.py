"""Multi-view cameras and the RGB + normal renders that the denoiser sees.

A view set is V = 4 cameras at azimuths ``az0 + (0, 90, 180, 270)`` degrees (MVDream's orthogonal views), one
elevation and one distance, all looking at the object centre ``TARGET``. Camera parameters per view are
``(azimuth, elevation, distance)`` in radians, radians, world units; the denoiser's camera embedding is built
from them (absolute azimuth: a class has a canonical front, +z).

Images are (B, V, 6, S, S) in [0, 1]: RGB (unlit albedo) and the world normal mapped to ``(n + 1) / 2``, both
composited over a white background; they are rendered at ``2 S`` and averaged down to ``S`` (antialiasing that
keeps gradients).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine import backend
from engine.render import Camera

V = 4
"""Views per set."""
TARGET = (0.0, -0.15, 0.0)
"""Where every camera looks (world units): about the centre of the objects, which stand on y = -0.6."""
FOV = 40.0
"""Vertical field of view (degrees)."""

__all__ = ["V", "TARGET", "FOV", "view_params", "cameras", "render_asset", "composite"]


def view_params(batch: int, generator: torch.Generator | None = None, elevation=(-5.0, 35.0),
                distance=(2.6, 3.4), azimuth0=None) -> torch.Tensor:
    """(batch, V, 3) random view sets: per set one start azimuth (uniform, or ``azimuth0`` degrees), elevation
    (degrees range) and distance (world units range), the V views 90 degrees apart."""
    dt = torch.float64
    u = torch.rand(batch, 3, generator=generator, dtype=dt)
    az0 = u[:, 0] * 2 * math.pi if azimuth0 is None else torch.full((batch,), math.radians(azimuth0), dtype=dt)
    el = torch.deg2rad(elevation[0] + (elevation[1] - elevation[0]) * u[:, 1])
    dist = distance[0] + (distance[1] - distance[0]) * u[:, 2]
    az = az0[:, None] + torch.arange(V, dtype=dt) * (math.pi / 2)
    return torch.stack([az % (2 * math.pi), el[:, None].expand(-1, V), dist[:, None].expand(-1, V)], -1)


def cameras(params: torch.Tensor, size: int) -> Camera:
    """(N, 3) or (B, V, 3) view parameters -> one Camera batch of N = B V cameras, ``size`` x ``size`` pixels."""
    p = params.reshape(-1, 3).to(torch.float64)
    az, el, d = p[:, 0], p[:, 1], p[:, 2]
    tgt = torch.tensor(TARGET, dtype=torch.float64)
    eye = torch.stack([d * torch.cos(el) * torch.sin(az), d * torch.sin(el), d * torch.cos(el) * torch.cos(az)], -1)
    return Camera.from_look_at((eye + tgt).to(backend.torch_dtype()), TARGET, fov_y=FOV, width=size, height=size)


def composite(rgb: torch.Tensor, normals: torch.Tensor, alpha: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) colour, (N, H, W, 3) world normals, (N, H, W) alpha -> (N, 6, size, size) over white."""
    a = alpha[..., None]
    img = torch.cat([rgb * a + (1 - a), (normals * 0.5 + 0.5) * a + (1 - a)], -1).permute(0, 3, 1, 2)
    if img.shape[-1] != size:
        img = F.adaptive_avg_pool2d(img, size)
    return img


def render_asset(verts, faces, colors, params: torch.Tensor, size: int = 32, mode: str = "hard") -> torch.Tensor:
    """Render a vertex-coloured mesh from view parameters (B, V, 3) -> (B, V, 6, size, size) RGB + normal images.

    ``mode="hard"`` (z-buffer, antialiased silhouettes) is differentiable w.r.t. vertices and colours."""
    from engine.render import render_mesh, vertex_normals

    B = params.shape[0] if params.dim() == 3 else 1
    cam = cameras(params, 2 * size)
    vn = vertex_normals(verts, faces)[0]
    out = render_mesh(verts, faces, cam, colors=torch.cat([colors, vn], -1), mode=mode,
                      antialias=(mode == "hard"), background=0.0)
    feat = out.rgb
    n = F.normalize(feat[..., 3:], dim=-1, eps=1e-6)
    # the antialiased alpha blends the interpolated colour with the (zero) background: undo it for the colour
    a = out.alpha.clamp(0, 1)
    rgb = feat[..., :3] / a[..., None].clamp_min(1e-3)
    img = composite(rgb.clamp(0, 1), n, a, size)
    return img.reshape(B, -1, 6, size, size)
