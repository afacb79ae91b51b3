"""Differentiable volume rendering (emission-absorption, NeRF quadrature) with an optional mesh (DELTA hybrid).

Along each pixel ray, ``S`` stratified samples at depths ``t_i`` in ``[near, far]`` get densities ``sigma_i``
(1/scene unit) and colours ``c_i``; then

    a_i = 1 - exp(-sigma_i * delta_i),  T_i = prod_{j<i} (1 - a_j),  w_i = T_i a_i
    rgb = sum_i w_i c_i + T_S * c_term,  depth = sum_i w_i t_i + T_S * z_term,  alpha = 1 - T_S

``delta_i`` is the bin width in world units. Without a mesh the terminal colour is the background and
``z_term = 0``. In hybrid mode (DELTA) a hard-rasterized mesh sets ``far`` to its depth (detached) and is the
terminal colour, so leftover transmittance lands on the mesh and image losses reach the mesh colours.

Sources: a dense grid (channel 0 density, the rest colour/features; trilinear) or any torch callable field.
A grid renders in one fused Taichi pass per ray (sampling, trilinear lookup and compositing; rays stop once
T < 1e-4), and its backward replays each ray front to back and scatters into the grid gradient; the only per-sample
state kept is each sample's transmittance factor (one float, so the replay needs no exp or density lookup), and
not even that beyond ``_CACHE_MAX`` samples. A field's samples are composited by ``composite_rays``. Negative densities count as zero.
"""
from dataclasses import dataclass

import taichi as ti
import torch

from .. import backend, bridge
from .camera import Camera
from .raster import expand_background

__all__ = ["VolumeRender", "render_volume", "composite_rays", "trilinear", "ray_box"]


@dataclass
class VolumeRender:
    """rgb: (B, H, W, C); alpha: (B, H, W) volume opacity 1 - T_S; depth: (B, H, W) expected camera depth
    (not normalised by alpha; includes the terminal depth in hybrid mode)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor


# ---- trilinear grid lookup ------------------------------------------------------------------------------------
@ti.func
def _cell(p, n):
    # p in [0, 1] -> lower corner index and fraction on a vertex-aligned grid of n points
    f = ti.min(ti.max(p * (n - 1), 0.0), n - 1.0)
    i = ti.min(ti.cast(ti.floor(f), ti.i32), n - 2)
    return i, f - i


@ti.kernel
def _tri_fwd(grid: ti.types.ndarray(), pts: ti.types.ndarray(), out: ti.types.ndarray()):
    X, Y, Z = grid.shape[0], grid.shape[1], grid.shape[2]
    for n in range(pts.shape[0]):
        px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
        if 0.0 <= px <= 1.0 and 0.0 <= py <= 1.0 and 0.0 <= pz <= 1.0:
            i, fx = _cell(px, X)
            j, fy = _cell(py, Y)
            k, fz = _cell(pz, Z)
            for c in range(grid.shape[3]):
                v = 0.0
                for d in ti.static(range(8)):
                    di, dj, dk = d & 1, (d >> 1) & 1, (d >> 2) & 1
                    w = (fx if di else 1 - fx) * (fy if dj else 1 - fy) * (fz if dk else 1 - fz)
                    v += w * grid[i + di, j + dj, k + dk, c]
                out[n, c] = v


@ti.kernel
def _tri_bwd(pts: ti.types.ndarray(), g_out: ti.types.ndarray(), g_grid: ti.types.ndarray()):
    X, Y, Z = g_grid.shape[0], g_grid.shape[1], g_grid.shape[2]
    for n in range(pts.shape[0]):
        px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
        if 0.0 <= px <= 1.0 and 0.0 <= py <= 1.0 and 0.0 <= pz <= 1.0:
            i, fx = _cell(px, X)
            j, fy = _cell(py, Y)
            k, fz = _cell(pz, Z)
            for c in range(g_grid.shape[3]):
                g = g_out[n, c]
                if g != 0:
                    for d in ti.static(range(8)):
                        di, dj, dk = d & 1, (d >> 1) & 1, (d >> 2) & 1
                        w = (fx if di else 1 - fx) * (fy if dj else 1 - fy) * (fz if dk else 1 - fz)
                        g_grid[i + di, j + dj, k + dk, c] += w * g


class _Trilinear(bridge.Op):
    name = "trilinear"

    def forward(self, grid, pts):
        out = torch.zeros(pts.shape[0], grid.shape[3], dtype=grid.dtype, device=grid.device)
        _tri_fwd(grid, pts, out)
        return (out,), (grid.shape, pts)

    def backward(self, saved, grads):
        shape, pts = saved
        g = torch.zeros(shape, dtype=grads[0].dtype, device=grads[0].device)
        _tri_bwd(pts, grads[0], g)
        return g, None


def trilinear(grid: torch.Tensor, points: torch.Tensor, bbox=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))) -> torch.Tensor:
    """Sample ``grid`` (X, Y, Z, C) (vertex-aligned over ``bbox``) at ``points`` (..., 3) -> (..., C).

    Zero outside the box. Differentiable w.r.t. ``grid`` (not the points).
    """
    lo = torch.as_tensor(bbox[0], dtype=grid.dtype, device=grid.device)
    hi = torch.as_tensor(bbox[1], dtype=grid.dtype, device=grid.device)
    if min(grid.shape[:3]) < 2:
        raise ValueError(f"grid must have at least 2 points per axis, got {tuple(grid.shape[:3])}")
    p = ((points.detach().to(grid.dtype) - lo) / (hi - lo)).reshape(-1, 3)
    return bridge.apply(_Trilinear(), grid, p).reshape(*points.shape[:-1], grid.shape[3])


# ---- ray compositing ------------------------------------------------------------------------------------------
@ti.kernel
def _comp_fwd(sig: ti.types.ndarray(), col: ti.types.ndarray(), t: ti.types.ndarray(), dl: ti.types.ndarray(),
              term: ti.types.ndarray(), tz: ti.types.ndarray(), out: ti.types.ndarray(), alpha: ti.types.ndarray(),
              depth: ti.types.ndarray()):
    C = col.shape[2]
    for r in range(sig.shape[0]):
        T = 1.0
        d = 0.0
        for i in range(sig.shape[1]):
            tr = ti.exp(-ti.max(sig[r, i], 0.0) * dl[r, i])
            w = T * (1.0 - tr)
            for c in range(C):
                out[r, c] += w * col[r, i, c]
            d += w * t[r, i]
            T *= tr
        for c in range(C):
            out[r, c] += T * term[r, c]
        depth[r] = d + T * tz[r]
        alpha[r] = 1.0 - T


@ti.kernel
def _comp_bwd(sig: ti.types.ndarray(), col: ti.types.ndarray(), t: ti.types.ndarray(), dl: ti.types.ndarray(),
              out: ti.types.ndarray(), alpha: ti.types.ndarray(), depth: ti.types.ndarray(),
              g_out: ti.types.ndarray(), g_alpha: ti.types.ndarray(), g_depth: ti.types.ndarray(),
              g_sig: ti.types.ndarray(), g_col: ti.types.ndarray(), g_term: ti.types.ndarray()):
    # d out / d sigma_i = delta_i (T_{i+1} c_i - S_i) with S_i = out - sum_{j<=i} w_j c_j (what lies behind i);
    # d alpha / d sigma_i = delta_i T_S. Walking front to back needs no division by (1 - a_i).
    C = col.shape[2]
    for r in range(sig.shape[0]):
        TS = 1.0 - alpha[r]
        # the colour part of sum_c g_c S_i, tracked as one scalar: G - sum_{j<=i} w_j (g . c_j)
        Sg = g_depth[r] * depth[r]
        for c in range(C):
            Sg += g_out[r, c] * out[r, c]
        T = 1.0
        for i in range(sig.shape[1]):
            s = sig[r, i]
            tr = ti.exp(-ti.max(s, 0.0) * dl[r, i])
            w = T * (1.0 - tr)
            gc = g_depth[r] * t[r, i]
            for c in range(C):
                gc += g_out[r, c] * col[r, i, c]
                g_col[r, i, c] += g_out[r, c] * w
            Sg -= w * gc
            T *= tr
            if s > 0:
                g_sig[r, i] += dl[r, i] * (T * gc - Sg + g_alpha[r] * TS)
        for c in range(C):
            g_term[r, c] += g_out[r, c] * TS


class _CompositeRays(bridge.Op):
    name = "composite_rays"

    def forward(self, sig, col, term, t, dl, tz):
        R, C = sig.shape[0], col.shape[2]
        out = torch.zeros(R, C, dtype=col.dtype, device=col.device)
        alpha = torch.zeros(R, dtype=col.dtype, device=col.device)
        depth = torch.zeros(R, dtype=col.dtype, device=col.device)
        _comp_fwd(sig, col, t, dl, term, tz, out, alpha, depth)
        return (out, alpha, depth), (sig, col, t, dl, out.detach(), alpha.detach(), depth.detach(), term.shape)

    def backward(self, saved, grads):
        sig, col, t, dl, out, alpha, depth, term_shape = saved
        g_sig, g_col = torch.zeros_like(sig), torch.zeros_like(col)
        g_term = torch.zeros(term_shape, dtype=col.dtype, device=col.device)
        _comp_bwd(sig, col, t, dl, out, alpha, depth, *grads, g_sig, g_col, g_term)
        return g_sig, g_col, g_term, None, None, None


def composite_rays(sigma, colors, t, delta, terminal, terminal_depth):
    """Emission-absorption compositing of R rays with S samples each.

    Args:
        sigma: (R, S) densities; colors: (R, S, C); t: (R, S) sample depths; delta: (R, S) world bin widths;
        terminal: (R, C) colour behind the last sample; terminal_depth: (R,).
    Returns:
        rgb (R, C), alpha (R,), depth (R,). Differentiable w.r.t. sigma, colors and terminal.
    """
    return bridge.apply(_CompositeRays(), sigma, colors, terminal, t.detach(), delta.detach(),
                        terminal_depth.detach())


# ---- fused grid renderer: sampling + trilinear + compositing in one pass per ray ---------------------------------
_NO_SAMPLE = 2.0
"""Cached transmittance factor of a sample that does not count (a real one lies in (0, 1])."""

_CACHE_MAX = 1 << 25
"""Rays x samples up to which the forward keeps each sample's transmittance factor for the backward (128 MiB in
f32); beyond it the backward recomputes them (exp and density lookup, ~25 % slower)."""

_T_MIN = 1e-4
"""A ray stops once its transmittance falls below this (forward and backward alike): later samples count as
empty space and the leftover transmittance still reaches the terminal colour."""


@ti.func
def _ray_in_grid(o: ti.template(), d: ti.template(), box: ti.template(), shape: ti.template(), r):
    # ray origin and direction in grid-index units (0 .. X - 1 across the box), once per ray: a sample at depth t
    # is then q0 + t dq, with no per-sample box reads or divisions
    q0 = ti.Vector([(o[r, a] - box[0, a]) * (shape[a] - 1) / (box[1, a] - box[0, a]) for a in ti.static(range(3))])
    dq = ti.Vector([d[r, a] * (shape[a] - 1) / (box[1, a] - box[0, a]) for a in ti.static(range(3))])
    return q0, dq


@ti.func
def _offset(u: ti.template(), r, n, jitter):
    # sample position inside its bin: the stratified jitter, or the bin centre (u is then a (1, 1) dummy)
    v = 0.5
    if jitter:
        v = u[r, n]
    return v


@ti.func
def _locate(shape: ti.template(), q):
    # q in grid-index units -> (inside the box, flat index of the lower corner in the (X, Y, Z, Cp) grid,
    # 8 corner weights)
    X, Y, Z, Cp = shape[0], shape[1], shape[2], shape[3]
    inside = 0.0 <= q[0] <= X - 1.0 and 0.0 <= q[1] <= Y - 1.0 and 0.0 <= q[2] <= Z - 1.0
    i = ti.min(ti.max(ti.cast(ti.floor(q[0]), ti.i32), 0), X - 2)
    j = ti.min(ti.max(ti.cast(ti.floor(q[1]), ti.i32), 0), Y - 2)
    k = ti.min(ti.max(ti.cast(ti.floor(q[2]), ti.i32), 0), Z - 2)
    fx, fy, fz = q[0] - i, q[1] - j, q[2] - k
    w = ti.Vector([((fx if c & 1 else 1 - fx) * (fy if (c >> 1) & 1 else 1 - fy) * (fz if (c >> 2) & 1 else 1 - fz))
                   for c in ti.static(range(8))])
    return inside, ((i * Y + j) * Z + k) * Cp, w


@ti.func
def _corner(shape: ti.template(), corner: ti.template()):
    # flat offset of a cell corner (bit 0: +x, bit 1: +y, bit 2: +z) from the lower corner
    return (ti.static(corner & 1) * shape[1] * shape[2] * shape[3] + ti.static((corner >> 1) & 1) * shape[2] * shape[3]
            + ti.static((corner >> 2) & 1) * shape[3])


@ti.func
def _lookup(grid: ti.template(), shape: ti.template(), base, w, c):
    v = 0.0
    for corner in ti.static(range(8)):
        v += w[corner] * grid[base + _corner(shape, corner) + c]
    return v


@ti.func
def _lookup_colour(grid: ti.template(), shape: ti.template(), base, w, C: ti.template()):
    # channels 1..C of one sample, corner-major: each corner's channels are contiguous in the (X, Y, Z, 1 + C)
    # grid, so this reads 8 short runs instead of C passes of 8 scattered loads
    v = ti.Vector([0.0 for _ in ti.static(range(C))])
    for corner in ti.static(range(8)):
        i = base + _corner(shape, corner) + 1
        for c in ti.static(range(C)):
            v[c] += w[corner] * grid[i + c]
    return v


@ti.kernel
def _grid_fwd(grid: ti.types.ndarray(), box: ti.types.ndarray(), o: ti.types.ndarray(),
              d: ti.types.ndarray(), near: ti.types.ndarray(), far: ti.types.ndarray(), u: ti.types.ndarray(),
              term: ti.types.ndarray(), tz: ti.types.ndarray(), out: ti.types.ndarray(), alpha: ti.types.ndarray(),
              depth: ti.types.ndarray(), n_used: ti.types.ndarray(), trs: ti.types.ndarray(), X: int, Y: int,
              Z: int, S: int, jitter: int, C: ti.template(), cache: ti.template()):
    # grid is the flat (X, Y, Z, 1 + C) array; C (colour channels) is compile-time so a sample's colour lives in
    # registers. ``cache``: each sample's transmittance factor exp(-sigma delta) goes to trs (R, S), _NO_SAMPLE
    # where it does not count (outside the box, sigma <= 0), so the backward needs neither exp nor density lookup
    shape = ti.Vector([X, Y, Z, C + 1])
    for r in range(o.shape[0]):
        bins = (far[r] - near[r]) / S
        dl = bins * ti.sqrt(d[r, 0] ** 2 + d[r, 1] ** 2 + d[r, 2] ** 2)
        q0, dq = _ray_in_grid(o, d, box, shape, r)
        T, dep, n = 1.0, 0.0, 0
        acc = ti.Vector([0.0 for _ in ti.static(range(C))])
        while n < S and T >= _T_MIN:
            t = near[r] + (n + _offset(u, r, n, jitter)) * bins
            inside, base, w = _locate(shape, q0 + t * dq)
            tr = _NO_SAMPLE
            if inside:
                s = _lookup(grid, shape, base, w, 0)
                if s > 0:
                    tr = ti.exp(-s * dl)
                    a = T * (1.0 - tr)
                    acc += a * _lookup_colour(grid, shape, base, w, C)
                    dep += a * t
                    T -= a
            if ti.static(cache):
                trs[r, n] = tr
            n += 1
        for c in ti.static(range(C)):
            out[r, c] = acc[c] + T * term[r, c]
        depth[r] = dep + T * tz[r]
        alpha[r] = 1.0 - T
        n_used[r] = n


@ti.func
def _scatter_all(g: ti.template(), shape: ti.template(), base, w, v, private: ti.template()):
    # v: (1 + C) channel gradients of one sample, added to its 8 corners (corner-major, contiguous channels)
    for corner in ti.static(range(8)):
        i = base + _corner(shape, corner)
        for c in ti.static(range(v.n)):
            if ti.static(private):
                g[i + c] = g[i + c] + w[corner] * v[c]
            else:
                ti.atomic_add(g[i + c], w[corner] * v[c])


@ti.kernel
def _grid_bwd(grid: ti.types.ndarray(), box: ti.types.ndarray(), o: ti.types.ndarray(),
              d: ti.types.ndarray(), near: ti.types.ndarray(), far: ti.types.ndarray(), u: ti.types.ndarray(),
              out: ti.types.ndarray(), alpha: ti.types.ndarray(), depth: ti.types.ndarray(),
              n_used: ti.types.ndarray(), g_out: ti.types.ndarray(), g_alpha: ti.types.ndarray(),
              g_depth: ti.types.ndarray(), trs: ti.types.ndarray(), g_grid: ti.types.ndarray(), X: int, Y: int,
              Z: int, S: int, jitter: int, n_chunks: int, private: ti.template(), C: ti.template(),
              cache: ti.template()):
    # The compositing adjoint of ``_comp_bwd`` replayed front to back per ray (transmittance factors from trs
    # when ``cache``, else recomputed), then
    # scattered to the 8 grid corners. ``private``: each chunk of rays accumulates into its own copy of the
    # gradient grid (g_grid is n_chunks flat copies) with plain adds, ~3x cheaper than atomics on CPU;
    # otherwise every ray is its own chunk and atomics add into one copy (GPU).
    R = o.shape[0]
    shape = ti.Vector([X, Y, Z, C + 1])
    for ch in range(n_chunks):
        r0 = ch * (R // n_chunks) + ti.min(ch, R % n_chunks)
        r1 = r0 + R // n_chunks + (1 if ch < R % n_chunks else 0)
        g = ch * grid.shape[0] if ti.static(private) else 0
        for r in range(r0, r1):
            bins = (far[r] - near[r]) / S
            dl = bins * ti.sqrt(d[r, 0] ** 2 + d[r, 1] ** 2 + d[r, 2] ** 2)
            TS = 1.0 - alpha[r]
            go = ti.Vector([g_out[r, c] for c in ti.static(range(C))])
            Sg = g_depth[r] * depth[r]          # g . (everything behind the current sample), colour and depth
            for c in ti.static(range(C)):
                Sg += go[c] * out[r, c]
            ga = g_alpha[r] * TS
            q0, dq = _ray_in_grid(o, d, box, shape, r)
            T = 1.0
            for n in range(n_used[r]):
                t = near[r] + (n + _offset(u, r, n, jitter)) * bins
                inside, base, w = _locate(shape, q0 + t * dq)
                tr = _NO_SAMPLE
                if ti.static(cache):
                    tr = trs[r, n]
                elif inside:
                    s = _lookup(grid, shape, base, w, 0)
                    if s > 0:
                        tr = ti.exp(-s * dl)
                if tr <= 1.0:
                    a = T * (1.0 - tr)
                    gc = g_depth[r] * t + go.dot(_lookup_colour(grid, shape, base, w, C))
                    Sg -= a * gc
                    T -= a
                    # d out / d sigma = delta (T_{n+1} (g . c_n) - S_n) + delta T_S g_alpha; d out / d c = a g
                    v = ti.Vector([dl * (T * gc - Sg + ga)] + [go[c] * a for c in ti.static(range(C))])
                    _scatter_all(g_grid, shape, g + base, w, v, private)


def _scatter_copies(n_rays: int):
    """(n_chunks, private) for the backward scatter: one private gradient copy per CPU thread, else atomics."""
    if backend.settings().resolved_arch in ("x64", "arm64"):
        n = max(1, min(int(ti.lang.impl.current_cfg().cpu_max_num_threads), n_rays))
        return n, True
    return max(n_rays, 1), False


class _GridRender(bridge.Op):
    name = "render_volume_grid"

    def __init__(self, n_samples: int, jitter: bool):
        self.S, self.jitter = int(n_samples), int(jitter)

    def forward(self, grid, term, box, o, d, near, far, u, tz):
        R, C = o.shape[0], term.shape[1]
        kw = dict(dtype=grid.dtype, device=grid.device)
        out, alpha, depth = torch.empty(R, C, **kw), torch.empty(R, **kw), torch.empty(R, **kw)
        n_used = torch.empty(R, dtype=torch.int32, device=grid.device)
        cache = R * self.S <= _CACHE_MAX
        trs = torch.empty(R, self.S, **kw) if cache else torch.empty(1, 1, **kw)
        _grid_fwd(grid.reshape(-1), box, o, d, near, far, u, term, tz, out, alpha, depth, n_used, trs,
                  *grid.shape[:3], self.S, self.jitter, C, cache)
        saved = (grid, box, o, d, near, far, u, out.detach(), alpha.detach(), depth.detach(), n_used, trs, cache)
        return (out, alpha, depth), saved

    def backward(self, saved, grads):
        grid, box, o, d, near, far, u, out, alpha, depth, n_used, trs, cache = saved
        g_out, g_alpha, g_depth = grads
        n_chunks, private = _scatter_copies(o.shape[0])
        g_grid = torch.zeros((n_chunks if private else 1, grid.numel()), dtype=grid.dtype, device=grid.device)
        _grid_bwd(grid.reshape(-1), box, o, d, near, far, u, out, alpha, depth, n_used, g_out, g_alpha, g_depth,
                  trs, g_grid.reshape(-1), *grid.shape[:3], self.S, self.jitter, n_chunks, private,
                  grid.shape[3] - 1, cache)
        g_term = g_out * (1.0 - alpha)[:, None]
        return g_grid.sum(0).reshape(grid.shape), g_term, None, None, None, None, None, None, None


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, bbox):
    """Slab test: per-ray (near, far) parameters where rays (..., 3) cross the box; far <= near if they miss."""
    lo = torch.as_tensor(bbox[0], dtype=dirs.dtype, device=dirs.device)
    hi = torch.as_tensor(bbox[1], dtype=dirs.dtype, device=dirs.device)
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    a, b = (lo - origins) * inv, (hi - origins) * inv
    return torch.minimum(a, b).amax(-1), torch.maximum(a, b).amin(-1)


def render_volume(camera: Camera, *, grid: torch.Tensor | None = None, field=None,
                  bbox=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)), n_samples: int = 64, near=None, far=None,
                  stratified: bool = True, generator: torch.Generator | None = None, background=0.0,
                  mesh=None) -> VolumeRender:
    """Render a density/colour volume from B cameras.

    Args:
        grid: (X, Y, Z, 1 + C) vertex-aligned over ``bbox``; channel 0 is density, the rest colour/features.
        field: instead of a grid, a callable ``points (..., 3) -> (sigma (...), colour (..., C))`` in torch.
        n_samples: S samples per ray.
        near, far: scalars or (B, H, W) camera depths; default: where each ray crosses ``bbox``.
        stratified: jitter each sample inside its bin (training); False takes bin centres (deterministic).
        background: scalar, (C,) or (B, H, W, C) colour behind the volume (ignored where the mesh covers).
        mesh: hybrid mode (DELTA): a hard ``MeshRender`` of the same cameras (its ``rgb`` over the background,
            ``alpha`` and ``depth``). Where it covers a pixel the ray stops at the mesh and ends on its colour.
    """
    backend.ensure()
    if (grid is None) == (field is None):
        raise ValueError("render_volume needs exactly one of grid= or field=")
    dt, dev = backend.torch_dtype(), backend.torch_device()
    o, d = camera.rays()
    B, H, W, _ = d.shape
    S = int(n_samples)
    box_near, box_far = ray_box(o, d, bbox)
    near_t = box_near.clamp_min(1e-3) if near is None else torch.as_tensor(near, dtype=dt, device=dev).expand(B, H, W)
    far_t = box_far if far is None else torch.as_tensor(far, dtype=dt, device=dev).expand(B, H, W)
    C = (grid.shape[-1] - 1) if grid is not None else None
    if mesh is not None:
        covered = mesh.alpha.detach() > 0.5
        far_t = torch.where(covered, torch.minimum(far_t, mesh.depth.detach()), far_t)
        terminal = mesh.rgb
        tz = torch.where(covered, mesh.depth.detach(), torch.zeros_like(far_t))
    else:
        tz = torch.zeros(B, H, W, dtype=dt, device=dev)
        terminal = None
    far_t = torch.maximum(far_t, near_t)                                      # empty interval: no samples count
    R = B * H * W
    u = torch.rand(B, H, W, S, dtype=dt, device=dev, generator=generator) if stratified else None
    if grid is not None:
        # fused path: one Taichi pass per ray, nothing per sample is staged in torch
        box = torch.as_tensor(bbox, dtype=dt, device=dev).reshape(2, 3)
        grid = grid.to(dt)
        if min(grid.shape[:3]) < 2:
            raise ValueError(f"grid must have at least 2 points per axis, got {tuple(grid.shape[:3])}")
        if C < 1:
            raise ValueError(f"grid needs density plus at least one colour/feature channel, got shape "
                             f"{tuple(grid.shape)}; append a constant channel for density-only volumes")
        if terminal is None:
            terminal = expand_background(background, B, H, W, C, dt, dev)
        uu = u.reshape(R, S) if u is not None else torch.zeros(1, 1, dtype=dt, device=dev)
        rgb, alpha, depth = bridge.apply(_GridRender(S, u is not None), grid, terminal.reshape(R, C), box,
                                         o.expand(B, H, W, 3).reshape(R, 3), d.reshape(R, 3), near_t.reshape(R),
                                         far_t.reshape(R), uu, tz.reshape(R))
        return VolumeRender(rgb.reshape(B, H, W, C), alpha.reshape(B, H, W), depth.reshape(B, H, W))
    if u is None:
        u = torch.full((B, H, W, S), 0.5, dtype=dt, device=dev)
    bins = (far_t - near_t)[..., None] / S
    t = near_t[..., None] + (torch.arange(S, dtype=dt, device=dev) + u) * bins            # (B, H, W, S)
    delta = (bins * d.norm(dim=-1, keepdim=True)).expand(B, H, W, S)
    pts = o[..., None, :] + t[..., None] * d[..., None, :]                              # (B, H, W, S, 3)
    sig, col = field(pts)
    C = col.shape[-1]
    if terminal is None:
        terminal = expand_background(background, B, H, W, C, dt, dev)
    rgb, alpha, depth = composite_rays(sig.reshape(R, S), col.reshape(R, S, C), t.reshape(R, S),
                                       delta.reshape(R, S), terminal.reshape(R, C), tz.reshape(R))
    return VolumeRender(rgb.reshape(B, H, W, C), alpha.reshape(B, H, W), depth.reshape(B, H, W))
