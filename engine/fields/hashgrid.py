"""Multi-resolution hash-grid encoding (Mueller et al. 2022, Instant-NGP), as a Taichi kernel behind the bridge.

Level l has resolution ``R_l = floor(R_min * b^l)`` cells per axis, ``b = exp(ln(R_max / R_min) / (L - 1))``, and a
table of T feature vectors (F features each). A point in the unit cube is trilinearly interpolated from the 8
corners of its level-l cell; a corner's table row is its dense index when ``(R_l + 1)^3 <= T``, else the spatial
hash ``(x * 1) xor (y * 2654435761) xor (z * 805459861) mod T`` (the paper's primes). The L interpolated vectors
are concatenated. Gradients flow to the table (sparse scatter) and to the points (through the weights).
"""
import math

import numpy as np
import taichi as ti
import torch

from .. import backend, bridge

__all__ = ["HashGrid", "hash_encode", "level_resolutions"]


@ti.kernel
def _encode(points: ti.types.ndarray(), table: ti.types.ndarray(), res: ti.types.ndarray(),
            out: ti.types.ndarray()):
    for n, level in ti.ndrange(points.shape[0], table.shape[0]):
        size, feats = table.shape[1], table.shape[2]  # read inside the loop: autodiff wants one loop, nothing else
        r = res[level]
        dense = ti.cast(r + 1, ti.i64) ** 3 <= size
        g = ti.Vector([points[n, 0], points[n, 1], points[n, 2]]) * r
        base = ti.min(ti.max(ti.floor(g).cast(ti.i32), 0), r - 1)
        frac = g - base
        for c in ti.static(range(8)):
            d = ti.static((c & 1, (c >> 1) & 1, (c >> 2) & 1))
            corner = base + ti.Vector([d[0], d[1], d[2]])
            w = 1.0
            for a in ti.static(range(3)):
                w *= frac[a] if ti.static(d[a]) else 1.0 - frac[a]
            row = 0
            if dense:
                row = corner[0] + (r + 1) * (corner[1] + (r + 1) * corner[2])
            else:
                h = (ti.cast(corner[0], ti.u32) ^ (ti.cast(corner[1], ti.u32) * ti.u32(2654435761))
                     ^ (ti.cast(corner[2], ti.u32) * ti.u32(805459861)))
                row = ti.cast(h % ti.cast(size, ti.u32), ti.i32)
            for f in range(feats):
                out[n, level * feats + f] += w * table[level, row, f]


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> np.ndarray:
    """(L,) int32 per-level resolutions, geometric from ``base_resolution`` to ``max_resolution``."""
    if n_levels == 1:
        return np.array([base_resolution], dtype=np.int32)
    b = math.exp(math.log(max_resolution / base_resolution) / (n_levels - 1))
    # +1e-9: exp/log round-off must not turn an exact 12 into 11.
    return np.array([int(math.floor(base_resolution * b ** level + 1e-9)) for level in range(n_levels)], dtype=np.int32)


_OP = bridge.KernelOp(_encode, outputs=lambda pts, tab, res: [((pts.shape[0], tab.shape[0] * tab.shape[2]),
                                                                tab.dtype)], name="hash_encode")


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
    return _OP(points.to(table.dtype), table, res)


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
