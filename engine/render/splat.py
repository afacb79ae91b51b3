"""3D Gaussian splatting (Kerbl et al. 2023) on CPU or GPU.

Stages:

1. ``project_gaussians`` (torch, differentiable): EWA splatting (Zwicker et al. 2001) turns each 3D Gaussian
   into a 2D one: ``Sigma2 = J W Sigma3 W^T J^T + 0.3 I`` (J the perspective Jacobian; the 0.3 px^2 term is the
   anti-aliasing low-pass filter of 3DGS), its inverse (the conic) and a 3-sigma pixel radius. SH degree <= 1
   colours are evaluated per view here.
2. Binning (torch, not differentiable): every Gaussian is listed in each 16x16 tile its 3-sigma box touches;
   lists are sorted by depth (one global sort by tile, stable over a depth-sorted order).
3. ``_rasterize`` (Taichi, hand-written backward): each pixel walks its tile's list front to back,
   ``alpha = min(0.99, o * exp(-0.5 d^T conic d))``, skips alpha < 1/255 and stops once transmittance would
   fall below 1e-4. Gradients flow to 2D means, conics, opacities, colours and depths, then by autograd to
   means, scales, quaternions, opacities and colours/SH.
"""
import math
from dataclasses import dataclass

import taichi as ti
import torch

from .. import backend, bridge
from ..launch import lean
from .camera import Camera
from .checks import check_finite
from .raster import expand_background

__all__ = ["SplatRender", "render_gaussians", "project_gaussians", "quat_to_rotmat", "SH_C0", "SH_C1"]

TILE = 16
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
_BLUR = 0.3          # px^2 low-pass added to every 2D covariance
_ALPHA_MIN = 1.0 / 255.0
_ALPHA_MAX = 0.99
_T_MIN = 1e-4


@dataclass
class SplatRender:
    """rgb: (B, H, W, C); alpha: (B, H, W); depth: (B, H, W) alpha-weighted camera depth (not normalised);
    radii: (B, N) pixel radius of each projected Gaussian (0 = culled)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    radii: torch.Tensor


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), normalised here -> (N, 3, 3) rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def project_gaussians(camera: Camera, means, scales, quats, near: float = 0.01):
    """EWA projection of N Gaussians into B views.

    Args:
        means: (N, 3) world; scales: (N, 3) standard deviations along the local axes; quats: (N, 4) (w, x, y, z).
    Returns:
        xy: (B, N, 2) pixel means; conic: (B, N, 3) inverse 2D covariance (a, b, c) = [[a, b], [b, c]];
        z: (B, N) camera depth; radius: (B, N) 3-sigma radius in pixels, 0 where culled (behind ``near``).
    """
    Rq = quat_to_rotmat(quats)
    M = Rq * scales[:, None, :]                                                      # R S
    cov3 = M @ M.transpose(1, 2)                                                     # (N, 3, 3)
    pc = camera.world_to_camera(means)                                               # (B, N, 3)
    x, y, z = pc.unbind(-1)
    zs = z.clamp_min(near)
    fx, fy = camera.fx[:, None], camera.fy[:, None]
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * x / zs ** 2, zero, fy / zs, -fy * y / zs ** 2], -1).reshape(*zs.shape, 2, 3)
    JW = J @ camera.R[:, None]                                                       # (B, N, 2, 3)
    cov2 = JW @ cov3[None] @ JW.transpose(-1, -2)
    a = cov2[..., 0, 0] + _BLUR
    b = cov2[..., 0, 1]
    c = cov2[..., 1, 1] + _BLUR
    det = (a * c - b * b).clamp_min(1e-12)
    conic = torch.stack([c / det, -b / det, a / det], -1)
    xy = torch.stack([fx * x / zs + camera.cx[:, None], fy * y / zs + camera.cy[:, None]], -1)
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.1))
    radius = torch.where(z > near, torch.ceil(3.0 * torch.sqrt(lam)), torch.zeros_like(z)).detach()
    return xy, conic, z, radius


def eval_sh1(camera: Camera, means, sh):
    """SH degree <= 1 colours per view: sh (N, 1 or 4, C) -> (B, N, C), clamped at 0 after the +0.5 offset."""
    out = SH_C0 * sh[None, :, 0]
    if sh.shape[1] >= 4:
        d = torch.nn.functional.normalize(means[None] - camera.center[:, None], dim=-1)   # (B, N, 3)
        x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
        out = out + SH_C1 * (-y * sh[None, :, 1] + z * sh[None, :, 2] - x * sh[None, :, 3])
    return (out + 0.5).clamp_min(0)


@ti.func
def _tile_box(xy: ti.template(), radius: ti.template(), b, g, H, W, ty_n, tx_n):
    # inclusive tile range (x0, x1, y0, y1) of the Gaussian's 3-sigma box; x0 > x1 when culled or off screen
    x, y, r = xy[b, g, 0], xy[b, g, 1], radius[b, g]
    box = ti.Vector([1, 0, 1, 0])
    if r > 0 and x + r >= 0 and x - r <= W and y + r >= 0 and y - r <= H:
        box = ti.Vector([ti.min(ti.max(ti.cast(ti.floor((x - r) / TILE), ti.i32), 0), tx_n - 1),
                         ti.min(ti.max(ti.cast(ti.floor((x + r) / TILE), ti.i32), 0), tx_n - 1),
                         ti.min(ti.max(ti.cast(ti.floor((y - r) / TILE), ti.i32), 0), ty_n - 1),
                         ti.min(ti.max(ti.cast(ti.floor((y + r) / TILE), ti.i32), 0), ty_n - 1)])
    return box


@lean
@ti.kernel
def _bin_count(xy: ti.types.ndarray(), radius: ti.types.ndarray(), count: ti.types.ndarray(), H: int, W: int):
    for b, g in ti.ndrange(xy.shape[0], xy.shape[1]):
        box = _tile_box(xy, radius, b, g, H, W, count.shape[1], count.shape[2])
        for ty, tx in ti.ndrange((box[2], box[3] + 1), (box[0], box[1] + 1)):
            ti.atomic_add(count[b, ty, tx], 1)


@lean
@ti.kernel
def _bin_fill(xy: ti.types.ndarray(), radius: ti.types.ndarray(), order: ti.types.ndarray(),
              cursor: ti.types.ndarray(), ids: ti.types.ndarray(), H: int, W: int):
    # one serial pass over all (view, Gaussian) in depth order: every tile's list comes out depth-sorted with
    # no sort at all (CPU: ~100k iterations, a few ms)
    N = xy.shape[1]
    ti.loop_config(serialize=True)
    for i in range(order.shape[0]):
        b, g = order[i] // N, order[i] % N
        box = _tile_box(xy, radius, b, g, H, W, cursor.shape[1], cursor.shape[2])
        for ty, tx in ti.ndrange((box[2], box[3] + 1), (box[0], box[1] + 1)):
            ids[cursor[b, ty, tx]] = g
            cursor[b, ty, tx] += 1


def _bin(xy, radius, z, H, W):
    """(tile-sorted, depth-sorted) Gaussian ids (P,) int32 and per-tile [start, end) ranges (B, ty_n, tx_n).

    On CPU a serial Taichi pass in global depth order fills the lists already sorted; elsewhere (GPU) a torch
    sort by tile, stable over the depth order, does the same.
    """
    if backend.settings().resolved_arch not in ("x64", "arm64"):
        return _bin_sort(xy, radius, z, H, W)
    B, N = z.shape
    ty_n, tx_n = (H + TILE - 1) // TILE, (W + TILE - 1) // TILE
    xy, radius = xy.detach().contiguous(), radius.detach().to(xy.dtype).contiguous()
    count = torch.zeros(B, ty_n, tx_n, dtype=torch.int32, device=xy.device)
    _bin_count(xy, radius, count, H, W)
    end = torch.cumsum(count.reshape(-1), 0, dtype=torch.int32)
    start = (end - count.reshape(-1)).reshape(B, ty_n, tx_n).contiguous()
    ids = torch.zeros(max(int(end[-1]), 1), dtype=torch.int32, device=xy.device)
    order = torch.argsort(z.detach().reshape(-1), stable=True).to(torch.int32)
    _bin_fill(xy, radius, order, start.clone(), ids, H, W)
    return ids, start, end.reshape(B, ty_n, tx_n).contiguous()


@torch.no_grad()
def _bin_sort(xy, radius, z, H, W):
    # torch binning: one global sort by tile, stable over a depth-sorted order
    B, N = z.shape
    ty_n, tx_n = (H + TILE - 1) // TILE, (W + TILE - 1) // TILE
    x0 = ((xy[..., 0] - radius) / TILE).floor().clamp(0, tx_n - 1).long()
    x1 = ((xy[..., 0] + radius) / TILE).floor().clamp(0, tx_n - 1).long()
    y0 = ((xy[..., 1] - radius) / TILE).floor().clamp(0, ty_n - 1).long()
    y1 = ((xy[..., 1] + radius) / TILE).floor().clamp(0, ty_n - 1).long()
    vis = (radius > 0) & (xy[..., 0] + radius >= 0) & (xy[..., 0] - radius <= W) \
        & (xy[..., 1] + radius >= 0) & (xy[..., 1] - radius <= H)
    nx, ny = (x1 - x0 + 1) * vis, (y1 - y0 + 1) * vis
    count = (nx * ny).reshape(-1)
    order = torch.argsort(z.reshape(-1), stable=True)                                # global depth order
    cnt = count[order]
    src = torch.repeat_interleave(order, cnt)                                        # flat (b * N + g) per pair
    first = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(src.numel(), device=z.device) - torch.repeat_interleave(first, cnt)
    b = src // N
    nxs = nx.reshape(-1)[src]
    tx = x0.reshape(-1)[src] + k % nxs
    ty = y0.reshape(-1)[src] + k // nxs
    tile = (b * ty_n + ty) * tx_n + tx
    tile_sorted, perm = torch.sort(tile, stable=True)                               # keeps depth order per tile
    ids = (src[perm] % N).to(torch.int32).contiguous()
    if ids.numel() == 0:      # as _bin: no empty array reaches the kernels (every tile range is empty, none is read)
        ids = torch.zeros(1, dtype=torch.int32, device=ids.device)
    n_tiles = B * ty_n * tx_n
    ranges = torch.bincount(tile_sorted, minlength=n_tiles)
    end = torch.cumsum(ranges, 0)
    start = (end - ranges).to(torch.int32).reshape(B, ty_n, tx_n).contiguous()
    return ids, start, end.to(torch.int32).reshape(B, ty_n, tx_n).contiguous()


@ti.func
def _gauss_alpha(gs: ti.template(), b, g, x, y):
    # gs[b, g] = (x, y, conic a, b, c, opacity, power cut-off); alpha = 0 below 1/255, where the cut-off on the
    # exponent skips the exp for the many list entries that are too far from the pixel
    dx, dy = x - gs[b, g, 0], y - gs[b, g, 1]
    power = -0.5 * (gs[b, g, 2] * dx * dx + gs[b, g, 4] * dy * dy) - gs[b, g, 3] * dx * dy
    a = 0.0
    if power <= 0 and power >= gs[b, g, 6]:
        a = ti.min(_ALPHA_MAX, gs[b, g, 5] * ti.exp(power))
        if a < _ALPHA_MIN:
            a = 0.0
    return a, power, dx, dy


@ti.func
def _tile_pixel(q, W, tx_n):
    # flat index q over (tile row, tile column, pixel in tile) -> pixel (py, px) and its tile: neighbouring
    # iterations share a tile, so the CPU threads walk one Gaussian list while it is hot in cache
    tile, p = q // (TILE * TILE), q % (TILE * TILE)
    ty, tx = tile // tx_n, tile % tx_n
    return ty * TILE + p // TILE, tx * TILE + p % TILE, ty, tx


@lean
@ti.kernel
def _splat_fwd(gs: ti.types.ndarray(), col: ti.types.ndarray(), z: ti.types.ndarray(), bg: ti.types.ndarray(),
               ids: ti.types.ndarray(), start: ti.types.ndarray(), end: ti.types.ndarray(), out: ti.types.ndarray(),
               alpha: ti.types.ndarray(), depth: ti.types.ndarray(), last: ti.types.ndarray()):
    C = col.shape[2]
    H, W = out.shape[1], out.shape[2]
    ty_n, tx_n = start.shape[1], start.shape[2]
    for b, q in ti.ndrange(out.shape[0], ty_n * tx_n * TILE * TILE):
        py, px, ty, tx = _tile_pixel(q, W, tx_n)
        if py < H and px < W:
            x, y = px + 0.5, py + 0.5
            T = 1.0
            d = 0.0
            s_end = start[b, ty, tx]
            for c in range(C):
                out[b, py, px, c] = 0.0
            for s in range(start[b, ty, tx], end[b, ty, tx]):
                g = ids[s]
                a, _p, _dx, _dy = _gauss_alpha(gs, b, g, x, y)
                if a > 0:
                    Tn = T * (1.0 - a)
                    if Tn < _T_MIN:
                        break
                    for c in range(C):
                        out[b, py, px, c] += T * a * col[b, g, c]
                    d += T * a * z[b, g]
                    T = Tn
                s_end = s + 1
            for c in range(C):
                out[b, py, px, c] += T * bg[b, py, px, c]
            depth[b, py, px] = d
            alpha[b, py, px] = 1.0 - T
            last[b, py, px] = s_end


@lean
@ti.kernel
def _splat_bwd(gs: ti.types.ndarray(), col: ti.types.ndarray(), z: ti.types.ndarray(), ids: ti.types.ndarray(),
               start: ti.types.ndarray(), last: ti.types.ndarray(), out: ti.types.ndarray(),
               alpha: ti.types.ndarray(), depth: ti.types.ndarray(), g_out: ti.types.ndarray(),
               g_alpha: ti.types.ndarray(), g_depth: ti.types.ndarray(), g_xy: ti.types.ndarray(),
               g_con: ti.types.ndarray(), g_op: ti.types.ndarray(), g_col: ti.types.ndarray(),
               g_z: ti.types.ndarray(), g_bg: ti.types.ndarray()):
    # front to back: with Sg = g . (what lies behind Gaussian i), dL/da_i = T_i G_i - (Sg - g_A T_S) / (1 - a_i);
    # a_i <= 0.99 keeps the division safe (as in 3DGS)
    C = col.shape[2]
    H, W = out.shape[1], out.shape[2]
    ty_n, tx_n = start.shape[1], start.shape[2]
    for b, q in ti.ndrange(out.shape[0], ty_n * tx_n * TILE * TILE):
        py, px, ty, tx = _tile_pixel(q, W, tx_n)
        if py < H and px < W:
            x, y = px + 0.5, py + 0.5
            TS = 1.0 - alpha[b, py, px]
            Sg = g_depth[b, py, px] * depth[b, py, px]
            for c in range(C):
                Sg += g_out[b, py, px, c] * out[b, py, px, c]
                g_bg[b, py, px, c] += g_out[b, py, px, c] * TS
            T = 1.0
            for s in range(start[b, ty, tx], last[b, py, px]):
                g = ids[s]
                a, power, dx, dy = _gauss_alpha(gs, b, g, x, y)
                if a > 0:
                    w = T * a
                    G = g_depth[b, py, px] * z[b, g]
                    for c in range(C):
                        G += g_out[b, py, px, c] * col[b, g, c]
                        g_col[b, g, c] += g_out[b, py, px, c] * w
                    g_z[b, g] += g_depth[b, py, px] * w
                    Sg -= w * G
                    ga = T * G - (Sg - g_alpha[b, py, px] * TS) / (1.0 - a)
                    if a < _ALPHA_MAX:
                        g_op[b, g] += ga * ti.exp(power)
                        gp = ga * a                                  # d alpha / d power = alpha
                        ca, cb, cc = gs[b, g, 2], gs[b, g, 3], gs[b, g, 4]
                        g_xy[b, g, 0] += gp * (ca * dx + cb * dy)
                        g_xy[b, g, 1] += gp * (cc * dy + cb * dx)
                        g_con[b, g, 0] += -0.5 * gp * dx * dx
                        g_con[b, g, 1] += -gp * dx * dy
                        g_con[b, g, 2] += -0.5 * gp * dy * dy
                    T *= 1.0 - a


def _pack(xy, con, op):
    # (B, N, 7) per-Gaussian record read by the rasterizer: one cache line instead of three scattered reads;
    # the last entry is the exponent below which alpha < 1/255 (+inf for opacity <= 0: never drawn)
    cut = torch.where(op > 0, math.log(_ALPHA_MIN) - torch.log(op.clamp_min(1e-30)), torch.full_like(op, math.inf))
    return torch.cat([xy, con, op[..., None], cut[..., None]], -1).contiguous()


class _Rasterize(bridge.Op):
    name = "splat_rasterize"
    fresh_grads = True  # backward allocates its gradients every call

    def __init__(self, H, W):
        self.H, self.W = H, W

    def forward(self, xy, con, op, col, z, bg, ids, start, end):
        B, C = xy.shape[0], col.shape[2]
        kw = dict(dtype=col.dtype, device=col.device)
        out = torch.zeros(B, self.H, self.W, C, **kw)
        alpha = torch.zeros(B, self.H, self.W, **kw)
        depth = torch.zeros(B, self.H, self.W, **kw)
        last = torch.zeros(B, self.H, self.W, dtype=torch.int32, device=col.device)
        gs = _pack(xy, con, op)
        _splat_fwd(gs, col, z, bg, ids, start, end, out, alpha, depth, last)
        saved = (xy, con, op, gs, col, z, bg.shape, ids, start, last, out.detach(), alpha.detach(), depth.detach())
        return (out, alpha, depth), saved

    def backward(self, saved, grads):
        xy, con, op, gs, col, z, bg_shape, ids, start, last, out, alpha, depth = saved
        g = [torch.zeros_like(t) for t in (xy, con, op, col, z)]
        g_bg = torch.zeros(bg_shape, dtype=col.dtype, device=col.device)
        _splat_bwd(gs, col, z, ids, start, last, out, alpha, depth, *grads, *g, g_bg)
        return (*g, g_bg, None, None, None)


def _check_gaussians(means, scales, quats, opacities, colors, sh):
    fn = "render_gaussians"
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"{fn}: means must be (N, 3), got {tuple(means.shape)}")
    N = means.shape[0]
    for name, x, tail in (("scales", scales, (3,)), ("quats", quats, (4,)), ("opacities", opacities, ())):
        if tuple(x.shape) != (N, *tail):
            raise ValueError(f"{fn}: {name} must be {(N, *tail)} for {N} Gaussians, got {tuple(x.shape)}")
    if colors is not None and (colors.dim() != 2 or colors.shape[0] != N):
        raise ValueError(f"{fn}: colors must be (N, C) with N = {N}, got {tuple(colors.shape)}")
    if colors is None and sh is not None and (sh.dim() != 3 or sh.shape[0] != N or sh.shape[1] not in (1, 4)):
        raise ValueError(f"{fn}: sh must be (N, 1 or 4, C) with N = {N}, got {tuple(sh.shape)}")
    for name, x in (("means", means), ("scales", scales), ("quats", quats), ("opacities", opacities),
                    ("colors", colors), ("sh", sh)):
        if x is not None:
            check_finite(name, x, fn)


def render_gaussians(camera: Camera, means, scales, quats, opacities, colors=None, sh=None,
                     background=0.0) -> SplatRender:
    """Render N 3D Gaussians from B cameras.

    Args:
        means: (N, 3); scales: (N, 3) positive std-devs (e.g. ``exp`` of a parameter); quats: (N, 4) (w, x, y, z);
        opacities: (N,) in [0, 1] (e.g. ``sigmoid`` of a parameter).
        colors: (N, C) view-independent colours/features, or
        sh: (N, 1 or 4, C) spherical-harmonic coefficients of degree 0 or 1 (3DGS convention, +0.5 offset).
        background: scalar, (C,), (B, C) or (B, H, W, C).
    """
    backend.ensure()
    _check_gaussians(means, scales, quats, opacities, colors, sh)
    dt, dev = backend.torch_dtype(), backend.torch_device()
    # onto the backend's device, where the camera lives (CPU inputs with arch=cuda would meet CUDA cameras)
    means, scales, quats, opacities = (x.to(device=dev, dtype=dt) for x in (means, scales, quats, opacities))
    xy, conic, z, radius = project_gaussians(camera, means, scales, quats)
    B, N = z.shape
    H, W = camera.height, camera.width
    if colors is not None:
        col = colors.to(device=dev, dtype=dt)[None].expand(B, -1, -1)
    elif sh is not None:
        col = eval_sh1(camera, means, sh.to(device=dev, dtype=dt))
    else:
        raise ValueError("render_gaussians needs colors= (N, C) or sh= (N, 1|4, C)")
    C = col.shape[-1]
    ids, start, end = _bin(xy.detach(), radius, z.detach(), H, W)
    bg = expand_background(background, B, H, W, C, dt, xy.device)
    out, alpha, depth = bridge.apply(_Rasterize(H, W), xy, conic, opacities[None].expand(B, -1), col, z, bg,
                                     ids, start, end)
    return SplatRender(out, alpha, depth, radius)
