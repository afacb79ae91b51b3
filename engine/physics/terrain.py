"""Heightfield terrain for MPM: Perlin noise (own implementation) or an array, turned into grid-node colliders
(per-column floor height and normal, see ``Model``), and particle beds of any material laid on it."""
from __future__ import annotations

import numpy as np

__all__ = ["perlin", "heightfield", "add_bed", "basin", "normals_of"]


def _fade(t):
    return t * t * t * (t * (t * 6 - 15) + 10)  # Perlin 2002 "improved noise" quintic


def _perlin_octave(coords: np.ndarray, rng: np.random.Generator, period: int) -> np.ndarray:
    """One octave of gradient noise at points ``coords`` (M, k) in lattice units, k = 1 or 2, tiling ``period``."""
    k = coords.shape[1]
    if k == 1:
        grads = rng.uniform(-1, 1, size=period)
        i0 = np.floor(coords[:, 0]).astype(int)
        f = coords[:, 0] - i0
        g0, g1 = grads[i0 % period], grads[(i0 + 1) % period]
        return (1 - _fade(f)) * g0 * f + _fade(f) * g1 * (f - 1)
    ang = rng.uniform(0, 2 * np.pi, size=(period, period))
    grads = np.stack([np.cos(ang), np.sin(ang)], -1)
    i0 = np.floor(coords).astype(int)
    f = coords - i0
    out = 0.0
    for cx in (0, 1):
        for cz in (0, 1):
            g = grads[(i0[:, 0] + cx) % period, (i0[:, 1] + cz) % period]
            d = f - np.array([cx, cz])
            w = (_fade(f[:, 0]) if cx else 1 - _fade(f[:, 0])) * (_fade(f[:, 1]) if cz else 1 - _fade(f[:, 1]))
            out = out + w * (g * d).sum(1)
    return out


def perlin(points, scale: float = 4.0, octaves: int = 6, persistence: float = 0.5, lacunarity: float = 2.0,
           seed: int = 0) -> np.ndarray:
    """Fractal Perlin noise at ``points`` (M,) or (M, 2) in [0, 1]-ish units; returns (M,) roughly in [-1, 1].

    ``scale`` lattice cells per unit at the first octave; each octave multiplies frequency by ``lacunarity`` and
    amplitude by ``persistence`` (SoftZoo's defaults: 6, 0.5, 2).
    """
    p = np.asarray(points, dtype=float)
    p = p[:, None] if p.ndim == 1 else p
    rng = np.random.default_rng(seed)
    total, amp, freq, norm = np.zeros(len(p)), 1.0, scale, 0.0
    for _ in range(int(octaves)):
        period = int(np.ceil(freq)) + 2
        total += amp * _perlin_octave(p * freq, rng, period * 4)
        norm += amp
        amp *= persistence
        freq *= lacunarity
    return total / norm * 2.0  # gradient noise peaks near ±0.5 per octave


def heightfield(res, dx: float, base: float, array=None, amplitude: float = 0.0, scale: float = 4.0,
                seed: int = 0, bound: int = 3, **noise) -> tuple[np.ndarray, np.ndarray]:
    """Floor height [m] and unit normal of every grid column.

    Args:
        res, dx: the grid (``Model.res``, ``Model.dx``).
        base: mean floor height [m].
        array: optional heights [m] sampled uniformly over the domain ((K,) in 2D, (K, L) in 3D); resampled
            linearly to the grid columns and added to ``base``.
        amplitude: Perlin noise amplitude [m] added on top (0 = flat).
        bound: wall band: the floor never goes below it.
    Returns:
        heights (res[0],) or (res[0], res[2]); normals (…, d).
    """
    d = len(res)
    cols = [np.arange(res[0]) * dx] if d == 2 else np.meshgrid(np.arange(res[0]) * dx, np.arange(res[2]) * dx,
                                                                  indexing="ij")
    shape = (res[0],) if d == 2 else (res[0], res[2])
    h = np.full(shape, float(base))
    if array is not None:
        a = np.asarray(array, dtype=float)
        if d == 2:
            h += np.interp(np.linspace(0, 1, res[0]), np.linspace(0, 1, len(a)), a)
        else:
            from scipy.ndimage import map_coordinates

            u = np.linspace(0, a.shape[0] - 1, res[0])
            w = np.linspace(0, a.shape[1] - 1, res[2])
            U, W = np.meshgrid(u, w, indexing="ij")
            h += map_coordinates(a, [U, W], order=1, mode="nearest")
    if amplitude:
        pts = cols[0].ravel() if d == 2 else np.stack([c.ravel() for c in cols], 1)
        h += amplitude * perlin(pts / (res[0] * dx), scale=scale, seed=seed, **noise).reshape(shape)
    h = np.maximum(h, bound * dx)
    return h, normals_of(h, dx)


def normals_of(heights, dx: float) -> np.ndarray:
    """Unit outward normals (…, d) of a heightfield: (res[0],) in 2D or (res[0], res[2]) in 3D."""
    h = np.asarray(heights, dtype=float)
    d = h.ndim + 1
    grads = np.gradient(h, dx) if d == 3 else [np.gradient(h, dx)]
    n = np.zeros(h.shape + (d,))
    n[..., 0] = -grads[0]
    n[..., 1] = 1.0
    if d == 3:
        n[..., 2] = -grads[1]
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def basin(heights, dx: float, x_range, depth: float, bound: int = 3) -> np.ndarray:
    """Heights with a basin ``depth`` [m] deep dug over ``x_range`` (lo, hi) [m] along x, with cosine walls a
    quarter of its width each (never below the wall band). Recompute normals with ``normals_of``."""
    h = np.array(heights, dtype=float)
    x = np.arange(h.shape[0]) * dx
    lo, hi = x_range
    ramp = max(0.25 * (hi - lo), dx)
    t = np.clip(np.minimum(x - lo, hi - x) / ramp, 0.0, 1.0)
    dig = depth * 0.5 * (1 - np.cos(np.pi * t))
    h -= dig.reshape((-1,) + (1,) * (h.ndim - 1))
    return np.maximum(h, bound * dx)


def add_bed(builder, heights, thickness: float | None, material: str = "sand", x_range=None, top=None,
            **body) -> int | None:
    """Lay a particle bed of ``thickness`` [m] over the terrain ``heights`` (lattice particles between the floor and
    floor + thickness). ``x_range``: optional (lo, hi) [m] along x to limit it (e.g. a pool). ``top``: instead of a
    thickness, fill up to these heights [m] (same shape as ``heights``; e.g. a pool's level). Returns the body
    index, or None when the bed would be empty."""
    if top is None and (thickness is None or thickness <= 0):
        return None
    d, dx = builder.dim, builder.dx
    h_arr = np.asarray(heights, dtype=float)
    ceil = h_arr + thickness if top is None else np.asarray(top, dtype=float)
    lo = [builder.bound * dx] * d
    hi = [(r - builder.bound) * dx for r in builder.res]
    hi[1] = min(hi[1], float(np.max(ceil)))
    pts = builder.lattice(lo, hi)
    ix = np.clip(np.round(pts[:, 0] / dx).astype(int), 0, builder.res[0] - 1)
    if d == 2:
        floor, cap = h_arr[ix], ceil[ix]
    else:
        iz = np.clip(np.round(pts[:, 2] / dx).astype(int), 0, builder.res[2] - 1)
        floor, cap = h_arr[ix, iz], ceil[ix, iz]
    keep = (pts[:, 1] >= floor + 0.5 * dx) & (pts[:, 1] < cap)
    if x_range is not None:
        keep &= (pts[:, 0] >= x_range[0]) & (pts[:, 0] < x_range[1])
    if not keep.any():
        return None
    return builder.add_points(pts[keep], material=material, **body)
