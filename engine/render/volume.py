"""Differentiable volume rendering (emission-absorption, NeRF quadrature) with an optional mesh (DELTA hybrid).

Along each pixel ray, ``S`` stratified samples at depths ``t_i`` in ``[near, far]`` get densities ``sigma_i``
(1/scene unit) and colours ``c_i``; then

    a_i = 1 - exp(-sigma_i * delta_i),  T_i = prod_{j<i} (1 - a_j),  w_i = T_i a_i
    rgb = sum_i w_i c_i + T_S * c_term,  depth = sum_i w_i t_i + T_S * z_term,  alpha = 1 - T_S

``delta_i`` is the bin width in world units. Without a mesh the terminal colour is the background and
``z_term = 0``. In hybrid mode (DELTA) a hard-rasterized mesh sets ``far`` to its depth (detached) and is the
terminal colour, so leftover transmittance lands on the mesh and image losses reach the mesh colours.

Sources: a dense grid (channel 0 density, the rest colour/features; trilinear) or any torch callable field.
A grid renders in one fused Taichi pass per ray (pixel ray and box clipping, sampling, trilinear lookup and
compositing; rays that miss the box take no samples, rays stop once T < 1e-4), and its backward replays each ray
front to back and scatters into the grid gradient. Per sample the forward keeps the transmittance factor and the
blended channels (so the replay needs no exp and no grid lookup), up to ``_CACHE_MAX`` values; beyond that the
backward recomputes them. A field's samples are composited by ``composite_rays``. Negative densities count as zero.
"""
import collections
import functools
import threading
import weakref
from dataclasses import dataclass

import taichi as ti
import torch

from .. import backend, bridge
from ..launch import lean
from .camera import Camera
from .checks import check_finite
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


@lean
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


@lean
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
@lean
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


@lean
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


# ---- fused grid renderer: ray setup, sampling, trilinear lookup and compositing in one pass per ray ------------
_NO_SAMPLE = 2.0
"""Cached transmittance factor of a sample that does not count (a real one lies in (0, 1])."""

_CACHE_MAX = 1 << 25
"""Rays x samples x (2 + C) up to which the forward keeps each sample's transmittance factor and blended channels
for the backward (128 MiB in f32), so the backward reads them instead of 8 grid corners and an exp; beyond it the
backward recomputes them."""

_T_MIN = 1e-4
"""A ray stops once its transmittance falls below this (forward and backward alike): later samples count as
empty space and the leftover transmittance still reaches the terminal colour."""

_TASK = 64
"""Rays per work item on the CPU: threads take items from a shared counter, so costly rays (long chords, dense
regions) and a thread that loses its core for a while do not leave the other threads idle."""

_SPAN = backend.CPU_SPAN
"""A loop over n workers runs n * _SPAN iterations, only every _SPAN-th working (backend.CPU_SPAN: else all n run
on one thread); correct for any schedule, as each worker has its own gradient copy and takes work from a counter."""

_RAY = 9
"""Per-ray state the forward leaves for the backward: grid-unit position of bin 0's start (3) and step per bin
(3), near depth, bin width in depth, bin width in world units."""


@ti.func
def _corner(base, k: ti.template(), Z, YZ):
    # flat grid-point index of corner k of the cell at ``base`` (bit 0 of k: +z, bit 1: +y, bit 2: +x)
    return base + ti.static(k & 1) + ti.static((k >> 1) & 1) * Z + ti.static(k >> 2) * YZ


@ti.func
def _cell_at(q, X, Y, Z):
    # q in grid units (inside the box) -> flat index of the lower corner of its cell, and the 8 corner weights
    i = ti.min(ti.cast(q[0], ti.i32), X - 2)
    j = ti.min(ti.cast(q[1], ti.i32), Y - 2)
    k = ti.min(ti.cast(q[2], ti.i32), Z - 2)
    fx, fy, fz = q[0] - i, q[1] - j, q[2] - k
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    w00, w01, w10, w11 = gy * gz, gy * fz, fy * gz, fy * fz
    w = ti.Vector([gx * w00, gx * w01, gx * w10, gx * w11, fx * w00, fx * w01, fx * w10, fx * w11])
    return (i * Y + j) * Z + k, w


@ti.func
def _inside(q, X, Y, Z):
    return 0.0 <= q[0] <= X - 1.0 and 0.0 <= q[1] <= Y - 1.0 and 0.0 <= q[2] <= Z - 1.0


@ti.func
def _sample(u: ti.template(), r, n, P, Q, near, bins, qc, tc, jitter: ti.template()):
    # grid-unit position and depth of sample n: jittered inside its bin (stratified), else the bin centre the
    # caller steps along (qc, tc)
    q, t = qc, tc
    if ti.static(jitter):
        f = n + u[r, n]
        q = P + f * Q
        t = near + f * bins
    return q, t


@functools.lru_cache(maxsize=None)
def _grid_kernels(Cp: int, real):
    """Forward/backward kernels for a (X, Y, Z, Cp) grid: channel 0 density, Cp - 1 colour channels. The grid
    is read as one Cp-vector per grid point, so a corner costs one index computation, not Cp."""
    C = Cp - 1
    cell_t = ti.types.ndarray(dtype=ti.types.vector(Cp, real), ndim=1)
    smp_t = ti.types.ndarray(dtype=ti.types.vector(Cp, real), ndim=1)      # per sample: blended channels

    @ti.func
    def lerp_all(grid: ti.template(), base, w, Z, YZ):
        # all 1 + C channels of one sample at once: weights x corner vectors
        v = w[0] * grid[base]
        for k in ti.static(range(1, 8)):
            v += w[k] * grid[_corner(base, k, Z, YZ)]
        return v

    @ti.func
    def setup(r, cam: ti.template(), box: ti.template(), near_a: ti.template(), far_a: ti.template(),
              cap: ti.template(), X, Y, Z, H, W, S, has_near: ti.template(), has_far: ti.template(),
              mesh: ti.template()):
        # pixel ray (as Camera.rays: through the pixel centre, ray parameter = camera depth), its slab test
        # against the box (as ray_box), the depth range and the per-ray stepping constants in grid units
        b = r // (H * W)
        p = r - b * H * W
        py = p // W
        px = p - py * W
        x = (px + 0.5 - cam[b, 14]) / cam[b, 12]
        y = (py + 0.5 - cam[b, 15]) / cam[b, 13]
        d = ti.Vector([cam[b, a] * x + cam[b, 3 + a] * y + cam[b, 6 + a] for a in ti.static(range(3))])
        o = ti.Vector([cam[b, 9 + a] for a in ti.static(range(3))])
        tn, tf = -1e30, 1e30
        for a in ti.static(range(3)):
            da = d[a]
            if ti.abs(da) < 1e-12:
                da = 1e-12
            t0 = (box[0, a] - o[a]) / da
            t1 = (box[1, a] - o[a]) / da
            tn = ti.max(tn, ti.min(t0, t1))
            tf = ti.min(tf, ti.max(t0, t1))
        near = ti.max(tn, 1e-3)
        if ti.static(has_near):
            near = near_a[r if near_a.shape[0] > 1 else 0]
        far = tf
        if ti.static(has_far):
            far = far_a[r if far_a.shape[0] > 1 else 0]
        if ti.static(mesh):
            far = ti.min(far, cap[r])
        far = ti.max(far, near)
        bins = (far - near) / S
        sc = ti.Vector([(X - 1) / (box[1, 0] - box[0, 0]), (Y - 1) / (box[1, 1] - box[0, 1]),
                        (Z - 1) / (box[1, 2] - box[0, 2])])
        q0 = (o - ti.Vector([box[0, 0], box[0, 1], box[0, 2]])) * sc
        dq = d * sc
        return b, py, px, q0 + near * dq, bins * dq, near, bins, bins * d.norm(), far > near

    @ti.func
    def fwd_ray(r, grid: ti.template(), cam: ti.template(), box: ti.template(), near_a: ti.template(),
                far_a: ti.template(), cap: ti.template(), tz: ti.template(), u: ti.template(), term: ti.template(),
                out: ti.template(), alpha: ti.template(), depth: ti.template(), n_used: ti.template(),
                ray: ti.template(), trs: ti.template(), smp: ti.template(), X, Y, Z, H, W, S, sb, sh, sw,
                cache: ti.template(), jitter: ti.template(), has_near: ti.template(), has_far: ti.template(),
                mesh: ti.template()):
        b, py, px, P, Q, near, bins, dl, hit = setup(r, cam, box, near_a, far_a, cap, X, Y, Z, H, W, S, has_near,
                                                     has_far, mesh)
        for a in ti.static(range(3)):
            ray[r, a] = P[a]
            ray[r, 3 + a] = Q[a]
        ray[r, 6] = near
        ray[r, 7] = bins
        ray[r, 8] = dl
        YZ = Y * Z
        T, dep, n = 1.0, 0.0, 0
        acc = ti.Vector([0.0 for _ in ti.static(range(Cp))])
        n_end = S if hit else 0                      # a ray that misses the box takes no samples
        qc, tc = P + 0.5 * Q, near + 0.5 * bins      # bin centres, stepped by addition (the backward steps alike)
        rs = r * S                                   # this ray's samples in the flat per-sample caches
        while n < n_end and T >= _T_MIN:
            q, t = _sample(u, r, n, P, Q, near, bins, qc, tc, jitter)
            tr = _NO_SAMPLE
            v = ti.Vector([0.0 for _ in ti.static(range(Cp))])
            if _inside(q, X, Y, Z):
                base, w = _cell_at(q, X, Y, Z)
                v = lerp_all(grid, base, w, Z, YZ)
                if v[0] > 0:
                    tr = ti.exp(-v[0] * dl)
                    a = T * (1.0 - tr)
                    acc += a * v                     # lane 0 (density) is not used
                    dep += a * t
                    T -= a
            if ti.static(cache):
                trs[rs + n] = tr
                smp[rs + n] = v          # the whole blended vector: one store LLVM's SLP pass vectorizes cleanly
            n += 1
            qc += Q
            tc += bins
        tb = b * sb + py * sh + px * sw
        for ch in ti.static(range(C)):
            out[r, ch] = acc[ch + 1] + T * term[tb, ch]
        zt = 0.0
        if ti.static(mesh):
            zt = tz[r]
        depth[r] = dep + T * zt
        alpha[r] = 1.0 - T
        n_used[r] = n

    @lean
    @ti.kernel
    def fwd(grid: cell_t, cam: ti.types.ndarray(), box: ti.types.ndarray(), near_a: ti.types.ndarray(),
            far_a: ti.types.ndarray(), cap: ti.types.ndarray(), tz: ti.types.ndarray(), u: ti.types.ndarray(),
            term: ti.types.ndarray(), out: ti.types.ndarray(), alpha: ti.types.ndarray(), depth: ti.types.ndarray(),
            n_used: ti.types.ndarray(), ray: ti.types.ndarray(), trs: ti.types.ndarray(), smp: smp_t,
            counter: ti.types.ndarray(), X: int, Y: int, Z: int, H: int, W: int, S: int, sb: int, sh: int, sw: int,
            n_workers: int, cache: ti.template(), jitter: ti.template(), has_near: ti.template(),
            has_far: ti.template(), mesh: ti.template(), dynamic: ti.template()):
        # ``dynamic`` (CPU): n_workers threads take _TASK rays at a time from ``counter``; else one thread per ray
        R = out.shape[0]
        if ti.static(dynamic):
            for it in range(n_workers * _SPAN):
                if it % _SPAN == 0:
                    while True:
                        task = ti.atomic_add(counter[0], 1)
                        if task * _TASK >= R:
                            break
                        for r in range(task * _TASK, ti.min(R, task * _TASK + _TASK)):
                            fwd_ray(r, grid, cam, box, near_a, far_a, cap, tz, u, term, out, alpha, depth, n_used,
                                    ray, trs, smp, X, Y, Z, H, W, S, sb, sh, sw, cache, jitter, has_near, has_far, mesh)
        else:
            for r in range(R):
                fwd_ray(r, grid, cam, box, near_a, far_a, cap, tz, u, term, out, alpha, depth, n_used, ray, trs, smp,
                        X, Y, Z, H, W, S, sb, sh, sw, cache, jitter, has_near, has_far, mesh)

    @ti.func
    def bwd_ray(r, gofs, opaque_zero: ti.template(), grid: ti.template(), ray: ti.template(), u: ti.template(),
                out: ti.template(), alpha: ti.template(), depth: ti.template(), n_used: ti.template(),
                g_out: ti.template(), g_alpha: ti.template(), g_depth: ti.template(), trs: ti.template(),
                smp: ti.template(), g_grid: ti.template(), g_term: ti.template(), X, Y, Z, S, cache: ti.template(),
                jitter: ti.template(), private: ti.template()):
        # The compositing adjoint of ``_comp_bwd`` replayed front to back (transmittance factors and colours from
        # smp when ``cache``, else recomputed), scattered to the 8 corners of each sample's cell in g_grid[gofs:]
        P = ti.Vector([ray[r, 0], ray[r, 1], ray[r, 2]])
        Q = ti.Vector([ray[r, 3], ray[r, 4], ray[r, 5]])
        near, bins, dl = ray[r, 6], ray[r, 7], ray[r, 8]
        YZ = Y * Z
        TS = 1.0 - alpha[r]
        go = ti.Vector([g_out[r, ch] for ch in ti.static(range(C))])
        for ch in ti.static(range(C)):
            g_term[r, ch] = go[ch] * TS
        gd = g_depth[r]
        Sg = gd * depth[r] + go.dot(ti.Vector([out[r, ch] for ch in ti.static(range(C))]))  # g . what lies behind
        ga = g_alpha[r] * TS
        G0 = ti.Vector([0.0] + [go[ch] for ch in ti.static(range(C))])     # g . colour of a corner vector
        G1 = ti.Vector([dl] + [go[ch] for ch in ti.static(range(C))])      # per-channel factor of v below
        zero = opaque_zero[0]
        T = 1.0
        qc, tc = P + 0.5 * Q, near + 0.5 * bins
        rs = r * S
        for n in range(n_used[r]):
            q, t = _sample(u, r, n, P, Q, near, bins, qc, tc, jitter)
            qc += Q
            tc += bins
            tr, gcv = _NO_SAMPLE, 0.0
            base, w = _cell_at(q, X, Y, Z)
            if ti.static(cache):
                tr = trs[rs + n]
                gcv = G0.dot(smp[rs + n])
            elif _inside(q, X, Y, Z):
                s = 0.0
                for k in ti.static(range(8)):
                    s += w[k] * grid[_corner(base, k, Z, YZ)][0]
                if s > 0:
                    tr = ti.exp(-s * dl)
            if tr <= 1.0:
                if ti.static(not cache):
                    gcv = G0.dot(lerp_all(grid, base, w, Z, YZ))
                gc = gd * t + gcv
                a = T * (1.0 - tr)
                Sg -= a * gc
                T -= a
                # d out / d sigma = delta (T_{n+1} (g . c_n) - S_n) + delta T_S g_alpha; d out / d c = a g
                # (+ zero: a value from memory the optimizer cannot fold; without it LLVM re-associates each
                # w[k] * G1[c] * A[c] lane by lane and the 8 corner updates below are no longer whole-vector ops)
                v = G1 * ti.Vector([T * gc - Sg + ga] + [a for _ in ti.static(range(C))]) + zero
                for k in ti.static(range(8)):
                    i = gofs + _corner(base, k, Z, YZ)
                    if ti.static(private):
                        g_grid[i] = g_grid[i] + w[k] * v
                    else:
                        for ch in ti.static(range(Cp)):
                            ti.atomic_add(g_grid[i][ch], w[k] * v[ch])

    @lean
    @ti.kernel
    def bwd(grid: cell_t, ray: ti.types.ndarray(), u: ti.types.ndarray(), out: ti.types.ndarray(),
            alpha: ti.types.ndarray(), depth: ti.types.ndarray(), n_used: ti.types.ndarray(),
            g_out: ti.types.ndarray(), g_alpha: ti.types.ndarray(), g_depth: ti.types.ndarray(),
            trs: ti.types.ndarray(), smp: smp_t, g_grid: cell_t, g_term: ti.types.ndarray(),
            counter: ti.types.ndarray(), opaque_zero: cell_t, X: int, Y: int, Z: int, S: int, n_workers: int,
            cache: ti.template(), jitter: ti.template(), private: ti.template()):
        # ``private`` (CPU): worker w scatters into its own copy g_grid[w * cells:] with plain adds (~3x cheaper
        # than atomics) and takes _TASK rays at a time from ``counter``; else one copy, atomics, a thread per ray
        R = out.shape[0]
        cells = X * Y * Z
        if ti.static(private):
            for it in range(n_workers * _SPAN):
                if it % _SPAN == 0:
                    gofs = (it // _SPAN) * cells
                    while True:
                        task = ti.atomic_add(counter[0], 1)
                        if task * _TASK >= R:
                            break
                        for r in range(task * _TASK, ti.min(R, task * _TASK + _TASK)):
                            bwd_ray(r, gofs, opaque_zero, grid, ray, u, out, alpha, depth, n_used, g_out, g_alpha,
                                    g_depth, trs, smp, g_grid, g_term, X, Y, Z, S, cache, jitter, private)
        else:
            for r in range(R):
                bwd_ray(r, 0, opaque_zero, grid, ray, u, out, alpha, depth, n_used, g_out, g_alpha, g_depth, trs, smp,
                        g_grid, g_term, X, Y, Z, S, cache, jitter, private)

    return fwd, bwd


@lean
@ti.kernel
def _fill_zero(a: ti.types.ndarray()):
    for i in range(a.shape[0]):
        a[i] = 0


@lean
@ti.kernel
def _sum_copies(copies: ti.types.ndarray(), out: ti.types.ndarray(), n: int):
    # out = sum of the n copies stacked in ``copies`` (flat), leaving the copies zeroed for the next backward
    N = out.shape[0]
    for i in range(N):
        v = copies[i]
        copies[i] = 0
        for w in range(1, n):
            v += copies[w * N + i]
            copies[w * N + i] = 0
        out[i] = v


_SCRATCH_MAX = 64 << 20
"""Bytes of zeroed per-thread gradient copies kept between backward passes (a fresh buffer costs a page fault per
4 KiB and a zeroing pass); larger ones are allocated per call."""

_scratch: dict = {}
_scratch_lock = threading.Lock()


def _take_scratch(numel: int, dtype, device) -> torch.Tensor:
    """A zeroed flat buffer, reused across calls when small enough (never shared by two calls at once)."""
    with _scratch_lock:
        buf = _scratch.pop((numel, dtype, device), None)
    if buf is None:
        buf = torch.empty(numel, dtype=dtype, device=device)
        _fill_zero(buf)                  # in Taichi: a torch fill would leave torch's threads spinning
    return buf


def _give_scratch(buf: torch.Tensor):
    """Return a buffer that ``_sum_copies`` has zeroed again."""
    if buf.numel() * buf.element_size() <= _SCRATCH_MAX:
        with _scratch_lock:
            _scratch.clear()
            _scratch[(buf.numel(), buf.dtype, buf.device)] = buf


_POOL_MAX = 256 << 20
"""Bytes of per-call work buffers (the per-sample caches and per-ray state) kept for reuse once the op that used
them is gone: a fresh large tensor comes from the OS and costs a page fault per 4 KiB on first touch (~6 ms for
the 20 MB a 128x128x64 render caches, more than its whole forward kernel on 2 cores)."""

_pool: "collections.OrderedDict[tuple, list]" = collections.OrderedDict()    # least recently returned first
_pool_lock = threading.Lock()


def _pool_take(shape, dtype, device) -> torch.Tensor:
    """An uninitialised tensor, from the pool when one of this shape is free."""
    key = (tuple(shape), dtype, device)
    with _pool_lock:
        free = _pool.get(key)
        if free:
            t = free.pop()
            if not free:
                del _pool[key]
            return t
    return torch.empty(shape, dtype=dtype, device=device)


def _pool_give(*tensors):
    """Return work buffers nothing else holds (called when their op is garbage collected). Beyond _POOL_MAX the
    buffers of the shapes returned longest ago are dropped first."""
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    with _pool_lock:
        for t in tensors:
            key = (tuple(t.shape), t.dtype, t.device)
            _pool.setdefault(key, []).append(t)
            _pool.move_to_end(key)
        held = sum(nbytes(t) for free in _pool.values() for t in free)
        while held > _POOL_MAX and _pool:
            key, free = next(iter(_pool.items()))
            held -= nbytes(free.pop(0))
            if not free:
                del _pool[key]


_COPIES_MAX = 1 << 30
"""Bytes of private gradient copies the CPU backward may allocate: fewer threads scatter when a grid is so large
that one copy per thread would exceed it."""


def _scatter_copies(n_rays: int):
    """(n_copies, private) for the backward scatter: one private gradient copy per CPU thread (plain adds), else
    one copy and atomics (GPU). ``private`` also selects the CPU scheduling (threads take rays from a shared
    counter) over one thread per ray, in the forward too."""
    if backend.settings().resolved_arch in ("x64", "arm64"):
        return max(1, min(int(ti.lang.impl.current_cfg().cpu_max_num_threads), n_rays)), True
    return 1, False


def _workers():
    return max(1, int(ti.lang.impl.current_cfg().cpu_max_num_threads))


class _GridRender(bridge.Op):
    name = "render_volume_grid"
    fresh_grads = True

    def __init__(self, n_samples: int, jitter: bool, image, term_strides, has_near: bool, has_far: bool,
                 mesh: bool):
        self.S, self.jitter = int(n_samples), bool(jitter)
        self.B, self.H, self.W = image
        self.tstr = term_strides
        self.flags = (bool(has_near), bool(has_far), bool(mesh))

    def forward(self, grid, term, cam, box, near, far, cap, tz, u):
        R, Cp, S = self.B * self.H * self.W, grid.shape[3], self.S
        kw = dict(dtype=grid.dtype, device=grid.device)
        out, alpha, depth = torch.empty(R, Cp - 1, **kw), torch.empty(R, **kw), torch.empty(R, **kw)
        cache = R * S * (Cp + 1) <= _CACHE_MAX
        n_used = _pool_take((R,), torch.int32, grid.device)
        ray = _pool_take((R, _RAY), grid.dtype, grid.device)
        trs = _pool_take((R * S if cache else 1,), grid.dtype, grid.device)
        smp = _pool_take((R * S if cache else 1, Cp), grid.dtype, grid.device)
        # back to the pool when this op (held by the autograd graph, or nothing under no_grad) is collected: only
        # the forward and backward kernels ever see these buffers
        weakref.finalize(self, _pool_give, n_used, ray, trs, smp)
        counter = torch.zeros(1, dtype=torch.int32, device=grid.device)
        dynamic = _scatter_copies(R)[1]                # CPU: rays handed out by a shared counter
        fwd, _ = _grid_kernels(Cp, backend.real())
        fwd(grid.reshape(-1, Cp), cam, box, near, far, cap, tz, u, term.reshape(-1, Cp - 1), out, alpha, depth,
            n_used, ray, trs, smp, counter, *grid.shape[:3], self.H, self.W, S, *self.tstr, _workers(), cache,
            self.jitter, *self.flags, dynamic)
        saved = (grid, term.shape, u, out, alpha, depth, n_used, ray, trs, smp, cache)
        return (out, alpha, depth), saved

    def backward(self, saved, grads):
        grid, term_shape, u, out, alpha, depth, n_used, ray, trs, smp, cache = saved
        g_out, g_alpha, g_depth = grads
        Cp = grid.shape[3]
        n_copies, private = _scatter_copies(out.shape[0])
        n_copies = max(1, min(n_copies, _COPIES_MAX // (grid.numel() * grid.element_size()))) if private else 1
        g_grid = torch.empty(grid.shape, dtype=grid.dtype, device=grid.device)
        if n_copies == 1:
            copies = g_grid.reshape(-1)
            _fill_zero(copies)
        else:
            copies = _take_scratch(n_copies * grid.numel(), grid.dtype, grid.device)
        g_term = torch.empty(out.shape, dtype=grid.dtype, device=grid.device)
        counter = torch.zeros(1, dtype=torch.int32, device=grid.device)
        _, bwd = _grid_kernels(Cp, backend.real())
        bwd(grid.reshape(-1, Cp), ray, u, out, alpha, depth, n_used, g_out, g_alpha, g_depth, trs, smp,
            copies.reshape(-1, Cp), g_term, counter, torch.zeros(1, Cp, dtype=grid.dtype, device=grid.device),
            *grid.shape[:3], self.S, n_copies, cache,
            self.jitter, private)
        if n_copies > 1:
            _sum_copies(copies, g_grid.reshape(-1), n_copies)
            _give_scratch(copies)
        g_term = g_term.reshape(self.B, self.H, self.W, -1).sum_to_size(term_shape)
        return g_grid, g_term, None, None, None, None, None, None, None


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, bbox):
    """Slab test: per-ray (near, far) parameters where rays (..., 3) cross the box; far <= near if they miss."""
    lo = torch.as_tensor(bbox[0], dtype=dirs.dtype, device=dirs.device)
    hi = torch.as_tensor(bbox[1], dtype=dirs.dtype, device=dirs.device)
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    a, b = (lo - origins) * inv, (hi - origins) * inv
    return torch.minimum(a, b).amax(-1), torch.maximum(a, b).amin(-1)


def _camera_table(camera: Camera, dt, dev) -> torch.Tensor:
    """(B, 16) per camera: world-to-camera R (row-major), camera centre, fx, fy, cx, cy (no gradients)."""
    B = camera.batch
    cols = [camera.R.reshape(B, 9), camera.center.reshape(B, 3)] + [v.reshape(B, 1) for v in
                                                                       (camera.fx, camera.fy, camera.cx, camera.cy)]
    return torch.cat([c.detach().to(dev, dt) for c in cols], 1).contiguous()


def _compact(x: torch.Tensor):
    """A (B, H, W, C) tensor, possibly a broadcast view -> (the un-broadcast (b, h, w, C) slice, its strides in
    rows of C for the pixel index (b, y, x))."""
    idx = tuple(slice(0, 1) if (st == 0 and n > 1) else slice(None) for st, n in zip(x.stride()[:3], x.shape[:3]))
    small = x[idx]
    b, h, w = small.shape[:3]
    return small, (h * w if b > 1 else 0, w if h > 1 else 0, 1 if w > 1 else 0)


def _per_ray(v, B: int, H: int, W: int, dt, dev):
    """A scalar or a (B, H, W)-broadcastable depth bound -> (1,) or (B * H * W,) (no gradients)."""
    v = torch.as_tensor(v, dtype=dt, device=dev).detach()
    return v.reshape(1) if v.numel() == 1 else v.expand(B, H, W).reshape(-1)


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
    B, H, W = camera.batch, camera.height, camera.width
    R, S = B * H * W, int(n_samples)
    # drawn on the generator's device (a CPU generator cannot fill a CUDA tensor), then moved: same numbers per seed
    u = torch.rand(B, H, W, S, dtype=dt, device=generator.device if generator is not None else dev,
                   generator=generator).to(dev) if stratified else None
    if grid is not None:
        # fused path: rays, box clipping, sampling and compositing in one Taichi pass per ray; nothing image- or
        # sample-sized is staged in torch (torch's worker threads keep spinning for ms after a parallel op and
        # would compete with the kernel for the cores)
        if grid.dim() != 4:
            raise ValueError(f"render_volume: grid must be (X, Y, Z, 1 + C), got {tuple(grid.shape)}")
        check_finite("grid", grid, "render_volume")
        grid = grid.to(dt)
        if min(grid.shape[:3]) < 2:
            raise ValueError(f"grid must have at least 2 points per axis, got {tuple(grid.shape[:3])}")
        C = grid.shape[-1] - 1
        if C < 1:
            raise ValueError(f"grid needs density plus at least one colour/feature channel, got shape "
                             f"{tuple(grid.shape)}; append a constant channel for density-only volumes")
        none = torch.zeros(1, dtype=dt, device=dev)
        if mesh is not None:
            covered = mesh.alpha.detach() > 0.5
            mz = mesh.depth.detach().to(dt)
            cap = torch.where(covered, mz, torch.full_like(mz, float("inf"))).reshape(R)
            tz = torch.where(covered, mz, torch.zeros_like(mz)).reshape(R)
            terminal = mesh.rgb
        else:
            cap = tz = none
            terminal = expand_background(background, B, H, W, C, dt, dev)
        term, strides = _compact(terminal)
        box = torch.as_tensor(bbox, dtype=dt, device=dev).reshape(2, 3)
        near_a = none if near is None else _per_ray(near, B, H, W, dt, dev)
        far_a = none if far is None else _per_ray(far, B, H, W, dt, dev)
        uu = u.reshape(R, S) if u is not None else torch.zeros(1, 1, dtype=dt, device=dev)
        op = _GridRender(S, u is not None, (B, H, W), strides, near is not None, far is not None, mesh is not None)
        rgb, alpha, depth = bridge.apply(op, grid, term, _camera_table(camera, dt, dev), box, near_a, far_a, cap, tz,
                                         uu)
        return VolumeRender(rgb.reshape(B, H, W, C), alpha.reshape(B, H, W), depth.reshape(B, H, W))
    o, d = camera.rays()
    box_near, box_far = ray_box(o, d, bbox)
    near_t = box_near.clamp_min(1e-3) if near is None else torch.as_tensor(near, dtype=dt, device=dev).expand(B, H, W)
    far_t = box_far if far is None else torch.as_tensor(far, dtype=dt, device=dev).expand(B, H, W)
    if mesh is not None:
        covered = mesh.alpha.detach() > 0.5
        far_t = torch.where(covered, torch.minimum(far_t, mesh.depth.detach()), far_t)
        terminal = mesh.rgb
        tz = torch.where(covered, mesh.depth.detach(), torch.zeros_like(far_t))
    else:
        tz = torch.zeros(B, H, W, dtype=dt, device=dev)
        terminal = None
    far_t = torch.maximum(far_t, near_t)                                      # empty interval: no samples count
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
