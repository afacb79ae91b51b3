"""Multi-resolution hash-grid encoding (Mueller et al. 2022, Instant-NGP), as a Taichi kernel behind the bridge.

Level l has resolution ``R_l = floor(R_min * b^l)`` cells per axis, ``b = exp(ln(R_max / R_min) / (L - 1))``, and a
table of T feature vectors (F features each). A point in the unit cube is trilinearly interpolated from the 8
corners of its level-l cell; a corner's table row is its dense index when ``(R_l + 1)^3 <= T``, else the spatial
hash ``(x * 1) xor (y * 2654435761) xor (z * 805459861) mod T`` (the paper's primes). The L interpolated vectors
are concatenated. Gradients flow to the table (sparse scatter) and to the points (through the weights), by a
hand-written adjoint kernel. The first version (Taichi's autodiff of a point-major kernel, through the generic
kernel op, which cloned the whole table on every backward) ran encode+backward ~10x slower in one interleaved
benchmark run (scripts/bench_fields.py).
"""
import math
import os

import numpy as np
import taichi as ti
import torch

from .. import backend, bridge

__all__ = ["HashGrid", "hash_encode", "hash_encode_torch", "level_resolutions"]


@ti.func
def _cell(p, r, size, level, table: ti.template()):
    """Level ``level``'s cell of point ``p``: its lower corner, the fractional position in it, whether the level is
    dense (its (r+1)^3 corners fit in the table)."""
    g = p * r
    base = ti.min(ti.max(ti.floor(g).cast(ti.i32), 0), r - 1)
    return base, g - base, ti.cast(r + 1, ti.i64) ** 3 <= size


@ti.func
def _row(corner, r, size, dense):
    row = 0
    if dense:
        row = corner[0] + (r + 1) * (corner[1] + (r + 1) * corner[2])
    else:
        h = (ti.cast(corner[0], ti.u32) ^ (ti.cast(corner[1], ti.u32) * ti.u32(2654435761))
             ^ (ti.cast(corner[2], ti.u32) * ti.u32(805459861)))
        if size & (size - 1) == 0:  # T a power of two (as Instant-NGP's): a mask, not a ~30-cycle division
            row = ti.cast(h & ti.cast(size - 1, ti.u32), ti.i32)
        else:
            row = ti.cast(h % ti.cast(size, ti.u32), ti.i32)
    return row


@ti.kernel
def _encode(points: ti.types.ndarray(ndim=2), table: ti.types.ndarray(ndim=3), res: ti.types.ndarray(ndim=1),
            out: ti.types.ndarray(ndim=3), feats: ti.template()):
    size = table.shape[1]
    # Level-major: consecutive threads' work shares one level's table (T * F values, a few MB), which then stays
    # in cache; point-major order, or blocks of points taking every level in turn, sweep all L tables and miss on
    # almost every gather (3x slower here). ``out`` is (L, N, F) so that each level writes one contiguous block.
    for level, n in ti.ndrange(table.shape[0], points.shape[0]):
        r = res[level]
        base, frac, dense = _cell(ti.Vector([points[n, 0], points[n, 1], points[n, 2]]), r, size, level, table)
        acc = ti.Vector([frac[0] * 0.0 for _ in ti.static(range(feats))])  # in the points' dtype
        for c in ti.static(range(8)):
            d = ti.static((c & 1, (c >> 1) & 1, (c >> 2) & 1))
            w = (frac[0] if ti.static(d[0]) else 1.0 - frac[0]) * (frac[1] if ti.static(d[1]) else 1.0 - frac[1]) \
                * (frac[2] if ti.static(d[2]) else 1.0 - frac[2])
            row = _row(base + ti.Vector([d[0], d[1], d[2]]), r, size, dense)
            for f in ti.static(range(feats)):
                acc[f] += w * table[level, row, f]
        for f in ti.static(range(feats)):
            out[level, n, f] = acc[f]


@ti.func
def _encode_grad_one(points: ti.template(), table: ti.template(), res: ti.template(), grad_out: ti.template(),
                     grad_table: ti.template(), grad_points: ti.template(), want_points, feats: ti.template(),
                     level, n, exclusive: ti.template()):
    size = table.shape[1]
    r = res[level]
    p = ti.Vector([points[n, 0], points[n, 1], points[n, 2]])
    base, frac, dense = _cell(p, r, size, level, table)
    g = ti.Vector([grad_out[n, level * feats + f] for f in ti.static(range(feats))])
    gp = p * 0.0
    for c in ti.static(range(8)):
        d = ti.static((c & 1, (c >> 1) & 1, (c >> 2) & 1))
        wa = ti.Vector([frac[a] if ti.static(d[a]) else 1.0 - frac[a] for a in ti.static(range(3))])
        w = wa[0] * wa[1] * wa[2]
        row = _row(base + ti.Vector([d[0], d[1], d[2]]), r, size, dense)
        dot = 0.0 * w
        for f in ti.static(range(feats)):
            if ti.static(exclusive):  # this thread owns the level's rows: a plain read-modify-write, no CAS loop
                grad_table[level, row, f] = grad_table[level, row, f] + w * g[f]
            else:
                ti.atomic_add(grad_table[level, row, f], w * g[f])
            if want_points != 0:
                dot += g[f] * table[level, row, f]
        if want_points != 0:
            # dw/dp_a = (+-1) r * product of the other two factors (the clamp's zero slope is ignored)
            sign = ti.Vector([1.0 if ti.static(d[a]) else -1.0 for a in ti.static(range(3))])
            gp += dot * r * sign * ti.Vector([wa[1] * wa[2], wa[0] * wa[2], wa[0] * wa[1]])
    if want_points != 0:
        for a in ti.static(range(3)):
            ti.atomic_add(grad_points[n, a], gp[a])


@ti.kernel
def _encode_grad(points: ti.types.ndarray(ndim=2), table: ti.types.ndarray(ndim=3), res: ti.types.ndarray(ndim=1),
                 grad_out: ti.types.ndarray(ndim=2), grad_table: ti.types.ndarray(ndim=3),
                 grad_points: ti.types.ndarray(ndim=2), want_points: ti.i32, feats: ti.template()):
    """Hand-written adjoint of ``_encode`` for GPUs: one thread per (level, point), scattering ``w * dL/dout`` into
    the table rows with atomic adds, and ``dL/dp = sum dL/dout * table[row] * dw/dp`` (atomic over levels)."""
    for level, n in ti.ndrange(table.shape[0], points.shape[0]):
        _encode_grad_one(points, table, res, grad_out, grad_table, grad_points, want_points, feats, level, n, False)


@ti.kernel
def _encode_grad_by_level(points: ti.types.ndarray(ndim=2), table: ti.types.ndarray(ndim=3),
                          res: ti.types.ndarray(ndim=1), grad_out: ti.types.ndarray(ndim=2),
                          grad_table: ti.types.ndarray(ndim=3), grad_points: ti.types.ndarray(ndim=2),
                          want_points: ti.i32, feats: ti.template()):
    """The same adjoint for CPUs: a thread owns whole levels (L >> cores), so the table scatter needs no atomics
    (a float atomic add is a compare-and-swap loop on x86: it cost ~2x here)."""
    for level in range(table.shape[0]):
        for n in range(points.shape[0]):
            _encode_grad_one(points, table, res, grad_out, grad_table, grad_points, want_points, feats, level, n,
                             True)


def _by_level(n_levels: int) -> bool:
    """CPU with at least as many levels as cores: one thread per level, no atomics. Else the atomic kernel."""
    if _FORCE_GRAD_KERNEL is not None:
        return _FORCE_GRAD_KERNEL == "by_level"
    return backend.settings().resolved_arch in ("x64", "arm64") and n_levels >= (os.cpu_count() or 1)


_FORCE_GRAD_KERNEL = None
"""Tests set this to "atomic" or "by_level" to check both adjoint kernels on any arch."""


class _HashEncode(bridge.Op):
    """The encoding as a bridge op: inputs (points (N, 3), table (L, T, F), resolutions (L,) int32)."""

    name = "hash_encode"
    fresh_grads = True  # backward allocates its gradient buffers on every call

    def __init__(self, want_points: bool):
        self.want_points = want_points

    def forward(self, points, table, res):
        n_levels, _, feats = table.shape
        # (L, N, F): each level's pass writes one contiguous block; (N, L * F) rows would take a partial
        # cache-line write per point and level (~3x slower here), the transpose below costs one copy.
        out = torch.empty((n_levels, points.shape[0], feats), dtype=table.dtype, device=table.device)
        _encode(points, table, res, out, feats)
        return (out.permute(1, 0, 2).reshape(points.shape[0], n_levels * feats),), (points, table, res)

    def backward(self, saved, grad_outputs):
        points, table, res = saved
        grad_table = torch.zeros_like(table)
        grad_points = torch.zeros_like(points) if self.want_points else torch.zeros((1, 3), dtype=points.dtype,
                                                                                     device=points.device)
        kernel = _encode_grad_by_level if _by_level(table.shape[0]) else _encode_grad
        # grad_out is read in its (N, L F) layout: strided reads cost no more here than a transposed copy
        kernel(points, table, res, grad_outputs[0], grad_table, grad_points, int(self.want_points),
               int(table.shape[2]))
        return (grad_points if self.want_points else None), grad_table, None


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> np.ndarray:
    """(L,) int32 per-level resolutions, geometric from ``base_resolution`` to ``max_resolution``."""
    if n_levels == 1:
        return np.array([base_resolution], dtype=np.int32)
    b = math.exp(math.log(max_resolution / base_resolution) / (n_levels - 1))
    # +1e-9: exp/log round-off must not turn an exact 12 into 11.
    return np.array([int(math.floor(base_resolution * b ** level + 1e-9)) for level in range(n_levels)], dtype=np.int32)


def hash_encode(points: torch.Tensor, table: torch.Tensor, resolutions) -> torch.Tensor:
    """Encode points with a hash grid.

    Args:
        points: (N, 3) in the unit cube [0, 1]^3 (values outside are clamped to the boundary cells).
        table: (L, T, F) features.
        resolutions: (L,) ints, see ``level_resolutions``.

    Returns:
        (N, L * F) features, differentiable w.r.t. ``table`` and ``points``.
    """
    res = torch.as_tensor(np.asarray(resolutions, dtype=np.int32))
    if table.ndim != 3 or len(res) != table.shape[0]:
        raise ValueError(f"table must be (L, T, F) with L = len(resolutions) = {len(res)}, got {tuple(table.shape)}")
    points = points.to(table.dtype)
    return _HashEncode(points.requires_grad)(points, table, res.to(table.device))


def hash_encode_torch(points: torch.Tensor, table: torch.Tensor, resolutions) -> torch.Tensor:
    """The same encoding in plain torch (gathers per level; autograd scatters with index_add). A reference for
    tests and benchmarks; ``hash_encode`` is the fast path."""
    n_levels, size, feats = table.shape
    points = points.to(table.dtype)
    offs = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], device=points.device)
    outs = []
    for level, r in enumerate(np.asarray(resolutions).tolist()):
        g = points * r
        base = torch.floor(g).long().clamp(0, r - 1)
        frac = g - base
        corner = base[:, None, :] + offs  # (N, 8, 3)
        w = torch.where(offs.bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # (N, 8)
        if (r + 1) ** 3 <= size:
            row = corner[..., 0] + (r + 1) * (corner[..., 1] + (r + 1) * corner[..., 2])
        else:
            row = (corner[..., 0] ^ (corner[..., 1] * 2654435761) ^ (corner[..., 2] * 805459861)) & 0xFFFFFFFF
            row = row % size
        outs.append((w[..., None] * table[level][row]).sum(1))
    return torch.cat(outs, dim=1)


class HashGrid(torch.nn.Module):
    """Learnable hash-grid encoding of points in the box ``[lo, hi]``.

    Args:
        lo, hi: (3,) box corners in world units (points are mapped to the unit cube).
        n_levels (L), features (F), log2_size (log2 T), base_resolution, max_resolution: Instant-NGP's
            hyper-parameters (defaults are smaller than the paper's 16 levels / 2^19 so CPU runs stay quick).
    """

    def __init__(self, lo=(-1.0, -1.0, -1.0), hi=(1.0, 1.0, 1.0), n_levels: int = 8, features: int = 2,
                 log2_size: int = 15, base_resolution: int = 8, max_resolution: int = 128, seed: int = 0):
        super().__init__()
        dtype = backend.torch_dtype()
        self.register_buffer("lo", torch.as_tensor(lo, dtype=dtype))
        self.register_buffer("hi", torch.as_tensor(hi, dtype=dtype))
        self.resolutions = level_resolutions(n_levels, base_resolution, max_resolution)
        g = torch.Generator().manual_seed(seed)
        # The paper's init: uniform in +-1e-4, so the field starts near whatever the decoder's bias says.
        self.table = torch.nn.Parameter((torch.rand(n_levels, 2 ** log2_size, features, generator=g,
                                                    dtype=dtype) * 2 - 1) * 1e-4)

    @property
    def out_features(self) -> int:
        return self.table.shape[0] * self.table.shape[2]

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        unit = (points.to(self.table.dtype) - self.lo) / (self.hi - self.lo)
        return hash_encode(unit, self.table, self.resolutions)
