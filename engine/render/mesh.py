"""``render_mesh``: rasterize + attributes + shading + compositing, hard or soft, in one call."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import backend
from .attributes import face_attributes, interpolate, sample_texture
from .camera import Camera
from .raster import Fragments, expand_background, rasterize, soft_composite
from .shading import DirectionalLights, face_normals, lambert

__all__ = ["MeshRender", "render_mesh"]


@dataclass
class MeshRender:
    """Output of ``render_mesh``.

    rgb: (B, H, W, C) composited colour/features (C = 3 for colours).
    alpha: (B, H, W) coverage in [0, 1] (hard: 0/1).
    depth: (B, H, W) camera depth z of the nearest face (hard) or the alpha-weighted depth (soft, not divided by
        alpha); 0 where empty.
    normals: (B, H, W, 3) world unit normal of the nearest face; 0 where empty.
    fragments: the ``Fragments`` used.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor
    fragments: Fragments


def render_mesh(verts: torch.Tensor, faces: torch.Tensor, camera: Camera, *, colors=None, face_colors=None,
                uvs=None, texture=None, lights: DirectionalLights | None = None, mode: str = "soft",
                sigma: float = 1e-4, faces_per_pixel: int = 8, opacity=1.0, background=0.0) -> MeshRender:
    """Render a triangle mesh (or B meshes sharing ``faces``) from B cameras.

    Args:
        verts: (V, 3) or (B, V, 3) world positions.
        faces: (F, 3) int vertex indices.
        colors: (V, C) or (B, V, C) per-vertex colours/features of any width C.
        face_colors: (F, C) or (B, F, C) per-face colours/features (used if ``colors`` is None).
        uvs: (V, 2) per-vertex or (F, 3, 2) per-corner texture coordinates; with ``texture`` (Ht, Wt, C) or
            (B, Ht, Wt, C). Texture colour multiplies ``colors`` if both are given.
        lights: ambient + Lambert directional lights (flat shading by face normals); None = unlit.
        mode: "hard" (z-buffer, 1 layer, gradients only to colours/features/texels) or "soft" (K layers,
            gradients also to vertex positions and opacity).
        sigma: soft blur in squared NDC units (DBW: 1e-4 coarse, 5e-6 fine).
        faces_per_pixel: K in soft mode.
        opacity: scalar, (F,) or (B, F) per-face opacity in [0, 1] (soft mode).
        background: scalar, (C,), (B, C) or an image (B, H, W, C).
    """
    backend.ensure()
    dt, dev = backend.torch_dtype(), backend.torch_device()
    verts = verts.to(dt)
    faces = faces.to(device=dev, dtype=torch.int32)
    if verts.dim() == 2:
        verts = verts.unsqueeze(0)
    if mode not in ("hard", "soft"):
        raise ValueError(f"render_mesh mode must be 'hard' or 'soft', got {mode!r}")
    hard = mode == "hard"
    frags = rasterize(verts, faces, camera, faces_per_pixel=1 if hard else faces_per_pixel,
                      sigma=0.0 if hard else sigma)
    p2f = frags.pix_to_face
    B, H, W, K = p2f.shape
    mask = (p2f >= 0)

    feats = None
    if colors is not None:
        feats = interpolate(frags, face_attributes(colors.to(dt), faces))
    elif face_colors is not None:
        fc = face_colors.to(dt)
        fc = fc.unsqueeze(0) if fc.dim() == 2 else fc
        feats = interpolate(frags, fc[:, :, None].expand(-1, -1, 3, -1))
    if texture is not None:
        if uvs is None:
            raise ValueError("render_mesh: a texture needs uvs (V, 2) or (F, 3, 2)")
        uvs = uvs.to(dt)
        face_uv = uvs if uvs.dim() == 3 else face_attributes(uvs, faces)[0]
        tex = sample_texture(texture.to(dt), interpolate(frags, face_uv), frags)
        feats = tex if feats is None else feats * tex
    if feats is None:
        feats = torch.ones(B, H, W, K, 3, dtype=dt, device=dev)

    fn = face_normals(verts, faces).expand(B, -1, -1)                                       # (B, F, 3)

    def gather_normals(p2f_k):
        # (B, H, W, k) face ids -> (B, H, W, k, 3) normals, 0 in empty slots
        idx = p2f_k.clamp_min(0).long().reshape(B, -1, 1).expand(-1, -1, 3)
        return torch.gather(fn, 1, idx).reshape(*p2f_k.shape, 3) * (p2f_k >= 0)[..., None]

    if lights is not None:
        pix_n = gather_normals(p2f)
        feats = feats * lambert(pix_n, lights)
    else:
        pix_n = gather_normals(p2f[..., :1])          # only the nearest layer is reported

    C = feats.shape[-1]
    if hard:
        m = mask[..., 0].to(dt)
        bg = expand_background(background, B, H, W, C, dt, dev)
        rgb = feats[..., 0, :] * m[..., None] + bg * (1 - m[..., None])
        depth = torch.where(mask[..., 0], frags.zbuf[..., 0], torch.zeros_like(frags.zbuf[..., 0]))
        return MeshRender(rgb, m, depth, pix_n[..., 0, :], frags)

    # soft: composite colour and depth together (depth channel over a zero background)
    z = torch.where(mask, frags.zbuf, torch.zeros_like(frags.zbuf)).unsqueeze(-1)
    bg = expand_background(background, B, H, W, C, dt, dev)
    bgz = torch.cat([bg, torch.zeros(B, H, W, 1, dtype=dt, device=dev)], -1)
    screen = camera.project(verts)
    out, alpha, _layers = soft_composite(screen, faces, frags, torch.cat([feats, z], -1), opacity, bgz, sigma, W, H)
    return MeshRender(out[..., :C], alpha, out[..., C], pix_n[..., 0, :], frags)
