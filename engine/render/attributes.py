"""Per-pixel attributes from fragments: barycentric interpolation and bilinear texture lookup (differentiable).

Both are Taichi kernels with hand-written backward passes behind ``engine.bridge``. Gradients reach the attributes,
texels and texture coordinates, and the barycentrics when they carry gradients (``differentiable_fragments``: then
the geometry and camera get the gradients of the shading inside each face).
"""

import taichi as ti
import torch

from .. import bridge
from ..launch import lean
from .raster import Fragments

__all__ = ["interpolate", "sample_texture", "face_attributes"]


@lean
@ti.kernel
def _interp_fwd(attr: ti.types.ndarray(), p2f: ti.types.ndarray(), bary: ti.types.ndarray(),
                out: ti.types.ndarray()):
    for b, y, x, k in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2], p2f.shape[3]):
        f = p2f[b, y, x, k]
        for c in range(attr.shape[3]):
            out[b, y, x, k, c] = 0.0
        if f >= 0:
            for c in range(attr.shape[3]):
                out[b, y, x, k, c] = (bary[b, y, x, k, 0] * attr[b, f, 0, c] + bary[b, y, x, k, 1] * attr[b, f, 1, c]
                                      + bary[b, y, x, k, 2] * attr[b, f, 2, c])


@lean
@ti.kernel
def _interp_bwd(attr: ti.types.ndarray(), p2f: ti.types.ndarray(), bary: ti.types.ndarray(),
                g_out: ti.types.ndarray(), g_attr: ti.types.ndarray(), g_bary: ti.types.ndarray(),
                want_bary: ti.template()):
    # g_bary (B, H, W, K, 3) is written whole when ``want_bary``: d out_c / d bary_i = attr[f, i, c]
    for b, y, x, k in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2], p2f.shape[3]):
        f = p2f[b, y, x, k]
        gb = ti.Vector([0.0, 0.0, 0.0])
        if f >= 0:
            for c in range(g_attr.shape[3]):
                g = g_out[b, y, x, k, c]
                for i in ti.static(range(3)):
                    g_attr[b, f, i, c] += bary[b, y, x, k, i] * g
                    if ti.static(want_bary):
                        gb[i] += attr[b, f, i, c] * g
        if ti.static(want_bary):
            for i in ti.static(range(3)):
                g_bary[b, y, x, k, i] = gb[i]


class _Interpolate(bridge.Op):
    name = "interpolate"
    fresh_grads = True  # backward allocates its gradient every call

    def __init__(self, bary_grad: bool = False):
        self.bary_grad = bool(bary_grad)

    def forward(self, attr, p2f, bary):
        B, H, W, K = p2f.shape
        out = torch.empty(B, H, W, K, attr.shape[3], dtype=attr.dtype, device=attr.device)   # written whole
        _interp_fwd(attr, p2f, bary, out)
        return (out,), (attr, p2f, bary)

    def backward(self, saved, grads):
        attr, p2f, bary = saved
        g_attr = torch.zeros(attr.shape, dtype=grads[0].dtype, device=grads[0].device)
        g_bary = torch.empty(bary.shape if self.bary_grad else (1, 1, 1, 1, 3), dtype=bary.dtype, device=bary.device)
        _interp_bwd(attr, p2f, bary, grads[0], g_attr, g_bary, self.bary_grad)
        return g_attr, None, (g_bary if self.bary_grad else None)


def face_attributes(attrs: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-vertex (B, V, C) or (V, C) -> per-face-corner (B, F, 3, C); per-face (B, F, C) is broadcast to corners
    by ``attrs[:, :, None].expand(-1, -1, 3, -1)`` instead."""
    if attrs.dim() == 2:
        attrs = attrs.unsqueeze(0)
    f = faces.long()
    # index_select: advanced indexing of a tensor that requires grad is ~100x slower on CPU
    return attrs.index_select(1, f.reshape(-1)).reshape(attrs.shape[0], *f.shape, attrs.shape[2])


def interpolate(fragments: Fragments, face_attrs: torch.Tensor) -> torch.Tensor:
    """Interpolate per-face-corner attributes at each fragment.

    Args:
        face_attrs: (B, F, 3, C) or (F, 3, C) any width C (colours, UVs, normals, features).
    Returns:
        (B, H, W, K, C); zero in empty slots. Differentiable w.r.t. ``face_attrs``, and w.r.t. the barycentrics
        when they require grad (``raster.differentiable_fragments``).
    """
    p2f = fragments.pix_to_face
    if face_attrs.dim() == 3:
        face_attrs = face_attrs.unsqueeze(0)
    face_attrs = face_attrs.expand(p2f.shape[0], -1, -1, -1)
    bary = fragments.bary.to(face_attrs.dtype)
    return bridge.apply(_Interpolate(bary.requires_grad and torch.is_grad_enabled()), face_attrs, p2f, bary)


@ti.func
def _texel_coords(u, v, Ht, Wt):
    # uv in [0, 1], v up (OBJ convention); texel centres at (i + 0.5) / size; clamp to edge
    fx = ti.min(ti.max(u * Wt - 0.5, 0.0), Wt - 1.0)
    fy = ti.min(ti.max((1.0 - v) * Ht - 0.5, 0.0), Ht - 1.0)
    x0 = ti.min(ti.cast(ti.floor(fx), ti.i32), Wt - 2)
    y0 = ti.min(ti.cast(ti.floor(fy), ti.i32), Ht - 2)
    x0 = ti.max(x0, 0)
    y0 = ti.max(y0, 0)
    return x0, y0, fx - x0, fy - y0


@lean
@ti.kernel
def _tex_fwd(tex: ti.types.ndarray(), uv: ti.types.ndarray(), p2f: ti.types.ndarray(), out: ti.types.ndarray()):
    Ht, Wt = tex.shape[1], tex.shape[2]
    for b, y, x, k in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2], p2f.shape[3]):
        if p2f[b, y, x, k] >= 0:
            x0, y0, tx, ty = _texel_coords(uv[b, y, x, k, 0], uv[b, y, x, k, 1], Ht, Wt)
            x1, y1 = ti.min(x0 + 1, Wt - 1), ti.min(y0 + 1, Ht - 1)
            for c in range(tex.shape[3]):
                out[b, y, x, k, c] = ((1 - ty) * ((1 - tx) * tex[b, y0, x0, c] + tx * tex[b, y0, x1, c])
                                      + ty * ((1 - tx) * tex[b, y1, x0, c] + tx * tex[b, y1, x1, c]))


@lean
@ti.kernel
def _tex_bwd(tex: ti.types.ndarray(), uv: ti.types.ndarray(), p2f: ti.types.ndarray(), g_out: ti.types.ndarray(),
             g_tex: ti.types.ndarray(), g_uv: ti.types.ndarray()):
    # texels: the bilinear weights; uv: d out / d(tx, ty) times d(tx, ty) / d(u, v) = (Wt, -Ht), 0 where clamped
    Ht, Wt = g_tex.shape[1], g_tex.shape[2]
    for b, y, x, k in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2], p2f.shape[3]):
        gu, gv = 0.0, 0.0
        if p2f[b, y, x, k] >= 0:
            u, v = uv[b, y, x, k, 0], uv[b, y, x, k, 1]
            x0, y0, tx, ty = _texel_coords(u, v, Ht, Wt)
            x1, y1 = ti.min(x0 + 1, Wt - 1), ti.min(y0 + 1, Ht - 1)
            for c in range(g_tex.shape[3]):
                g = g_out[b, y, x, k, c]
                g_tex[b, y0, x0, c] += (1 - ty) * (1 - tx) * g
                g_tex[b, y0, x1, c] += (1 - ty) * tx * g
                g_tex[b, y1, x0, c] += ty * (1 - tx) * g
                g_tex[b, y1, x1, c] += ty * tx * g
                t00, t01, t10, t11 = tex[b, y0, x0, c], tex[b, y0, x1, c], tex[b, y1, x0, c], tex[b, y1, x1, c]
                gu += g * ((1 - ty) * (t01 - t00) + ty * (t11 - t10))
                gv += g * ((1 - tx) * (t10 - t00) + tx * (t11 - t01))
            fx, fy = u * Wt - 0.5, (1.0 - v) * Ht - 0.5
            gu = gu * Wt if 0.0 < fx < Wt - 1.0 else 0.0
            gv = -gv * Ht if 0.0 < fy < Ht - 1.0 else 0.0
        g_uv[b, y, x, k, 0] = gu
        g_uv[b, y, x, k, 1] = gv


class _SampleTexture(bridge.Op):
    name = "sample_texture"
    fresh_grads = True  # backward allocates its gradients every call

    def forward(self, tex, uv, p2f):
        B, H, W, K = p2f.shape
        out = torch.zeros(B, H, W, K, tex.shape[3], dtype=tex.dtype, device=tex.device)
        _tex_fwd(tex, uv, p2f, out)
        return (out,), (tex, uv, p2f)

    def backward(self, saved, grads):
        tex, uv, p2f = saved
        g_tex = torch.zeros_like(tex)
        g_uv = torch.empty_like(uv)                                      # written whole
        _tex_bwd(tex, uv, p2f, grads[0], g_tex, g_uv)
        return g_tex, g_uv, None


def sample_texture(texture: torch.Tensor, uv: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Bilinear texture lookup.

    Args:
        texture: (B, Ht, Wt, C) or (Ht, Wt, C); row 0 is the top of the image (v = 1).
        uv: (B, H, W, K, 2) texture coordinates in [0, 1] (e.g. ``interpolate(fragments, face_uvs)``); clamped.
    Returns:
        (B, H, W, K, C), zero in empty slots. Differentiable w.r.t. ``texture`` and ``uv`` (the uv gradient is
        piecewise constant across texels and 0 where the lookup is clamped at the texture's edge).
    """
    if texture.dim() == 3:
        texture = texture.unsqueeze(0)
    p2f = fragments.pix_to_face
    texture = texture.expand(p2f.shape[0], -1, -1, -1)
    if texture.shape[1] < 2 or texture.shape[2] < 2:
        raise ValueError(f"texture must be at least 2x2 texels, got {tuple(texture.shape[1:3])}")
    return bridge.apply(_SampleTexture(), texture, uv.to(texture.dtype), p2f)
