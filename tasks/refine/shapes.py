"""Procedural 3D shape classes (seeded families of primitives) and the "coarse asset" maker.

Every shape is a union of analytic primitives, each with an RGB colour, written as a numpy signed distance
function (world units, negative inside, y up, the object standing on y = -0.6 and facing +z). The fine mesh is
the zero level set meshed by tide's marching cubes; each vertex takes the colour of the nearest primitive.

Canonical orientation matters: a chair's back is at -z and a mug's handle at +x, so a class has a front and a back
(which the multi-view denoiser learns, and which the Janus score measures).

Splits: ``shape(cls, seed)`` with ``seed < HELD_OUT`` is training data for the denoiser; held-out shapes
(``held_out_shape(cls, i)``) use seeds ``HELD_OUT + i`` and are never rendered for training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASSES = ("chair", "table", "mug", "vase", "lamp", "mushroom")
"""The shape classes; the class label of the denoiser is the index into this tuple."""
HELD_OUT = 1_000_000
"""Seeds at or above this are the held-out split."""
FLOOR = -0.6
"""Every object stands on y = FLOOR (world units)."""

__all__ = ["CLASSES", "HELD_OUT", "Shape", "Asset", "shape", "held_out_shape", "make_coarse", "class_index", "mesh_sdf"]


# ---- numpy SDF primitives: p (N, 3) -> (N,) ------------------------------------------------------------------
def _box(p, c, h):
    q = np.abs(p - c) - h
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)


def _cyl(p, c, r, hh):
    """Cylinder along y, centre c, radius r, half-height hh."""
    q = p - c
    d = np.stack([np.hypot(q[:, 0], q[:, 2]) - r, np.abs(q[:, 1]) - hh], 1)
    return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(1), 0)


def _lathe(p, c, radius_fn, y0, y1):
    """Solid of revolution about the y axis through c: radius_fn(y - c_y) between heights y0 < y1 (relative).

    Not an exact distance away from the surface (the profile's slope is ignored), but exact on it, which is all
    marching cubes needs; the Lipschitz error only blurs the coarse maker's smoothing slightly."""
    q = p - c
    y = q[:, 1]
    r = np.hypot(q[:, 0], q[:, 2])
    d = np.stack([r - radius_fn(np.clip(y, y0, y1)), np.maximum(y0 - y, y - y1)], 1)
    return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(1), 0)


def _ellipsoid(p, c, s):
    q = (p - c) / s
    return (np.linalg.norm(q, axis=1) - 1) * s.min()


def _torus_xy(p, c, R, r):
    """Torus in the x-y plane (axis z), for mug handles."""
    q = p - c
    return np.hypot(np.hypot(q[:, 0], q[:, 1]) - R, q[:, 2]) - r


def _hsv(h, s, v):
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


@dataclass
class Shape:
    """A seeded procedural shape: ``parts`` is a list of (sdf (N, 3) -> (N,), rgb (3,)) unioned together."""

    cls: str
    seed: int
    parts: list

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N,) signed distance (world units, negative inside)."""
        return np.min(np.stack([f(p) for f, _ in self.parts], 0), 0)

    def color(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) points -> (N, 3) RGB in [0, 1] of the nearest part."""
        d = np.stack([f(p) for f, _ in self.parts], 0)
        cols = np.stack([c for _, c in self.parts], 0)
        return cols[d.argmin(0)]

    def mesh(self, resolution: int = 64) -> "Asset":
        """The fine mesh: marching cubes of the SDF on a ``resolution``^3 grid over [-1, 1]^3."""
        vol = self.sdf(_grid(resolution).reshape(-1, 3)).reshape((resolution,) * 3)
        verts, faces = _march(vol, resolution)
        return Asset(verts, faces, torch.as_tensor(self.color(verts.numpy()), dtype=verts.dtype))


@dataclass
class Asset:
    """A coloured triangle mesh. verts: (V, 3) float; faces: (F, 3) int64; colors: (V, 3) RGB in [0, 1]."""

    verts: torch.Tensor
    faces: torch.Tensor
    colors: torch.Tensor

    def to_trimesh(self):
        import trimesh

        c = (self.colors.detach().clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        return trimesh.Trimesh(self.verts.detach().cpu().numpy(), self.faces.cpu().numpy(),
                               vertex_colors=np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], 1), process=False)


def _grid(n: int) -> np.ndarray:
    a = np.linspace(-1, 1, n)
    return np.stack(np.meshgrid(a, a, a, indexing="ij"), -1)


def _march(vol: np.ndarray, n: int):
    from engine import backend
    from engine.fields import marching_cubes

    surf = marching_cubes(vol, 0.0, (2.0 / (n - 1),) * 3)
    dt = backend.torch_dtype()
    return torch.as_tensor(surf.verts - 1.0, dtype=dt), torch.as_tensor(surf.faces)


# ---- the classes ---------------------------------------------------------------------------------------------
def _chair(g):
    w, d = g.uniform(0.45, 0.7), g.uniform(0.45, 0.65)
    seat_y, t = FLOOR + g.uniform(0.45, 0.6), g.uniform(0.05, 0.1)
    back_h = g.uniform(0.4, 0.65)
    leg = g.uniform(0.03, 0.06)
    wood = _hsv(g.uniform(0.02, 0.12), g.uniform(0.4, 0.8), g.uniform(0.35, 0.7))
    fabric = _hsv(g.uniform(0, 1), g.uniform(0.4, 0.9), g.uniform(0.5, 0.9))
    parts = [(lambda p, c=np.array([0, seat_y, 0]), h=np.array([w / 2, t / 2, d / 2]): _box(p, c, h), fabric)]
    top = seat_y + t / 2 + back_h
    parts.append((lambda p, c=np.array([0, (seat_y + top) / 2, -d / 2 + 0.03]),
                  h=np.array([w / 2, (top - seat_y) / 2, 0.03]): _box(p, c, h), fabric))
    hl = (seat_y - FLOOR) / 2
    for sx in (-1, 1):
        for sz in (-1, 1):
            c = np.array([sx * (w / 2 - leg), FLOOR + hl, sz * (d / 2 - leg)])
            parts.append((lambda p, c=c, h=np.array([leg, hl, leg]): _box(p, c, h), wood))
    return parts


def _table(g):
    w, d = g.uniform(0.9, 1.5), g.uniform(0.6, 1.0)
    top_y, t = FLOOR + g.uniform(0.55, 0.8), g.uniform(0.05, 0.1)
    wood = _hsv(g.uniform(0.02, 0.12), g.uniform(0.3, 0.8), g.uniform(0.4, 0.8))
    leg_col = wood * g.uniform(0.5, 0.9)
    round_top = g.random() < 0.35
    if round_top:
        parts = [(lambda p, c=np.array([0, top_y, 0]), r=d / 2 + 0.1: _cyl(p, c, r, t / 2), wood)]
        hl = (top_y - FLOOR) / 2
        parts.append((lambda p, c=np.array([0, FLOOR + hl, 0]): _cyl(p, c, 0.06, hl), leg_col))
        parts.append((lambda p, c=np.array([0, FLOOR + 0.02, 0]): _cyl(p, c, 0.3, 0.02), leg_col))
        return parts
    parts = [(lambda p, c=np.array([0, top_y, 0]), h=np.array([w / 2, t / 2, d / 2]): _box(p, c, h), wood)]
    leg, hl = g.uniform(0.03, 0.06), (top_y - FLOOR) / 2
    for sx in (-1, 1):
        for sz in (-1, 1):
            c = np.array([sx * (w / 2 - 2 * leg), FLOOR + hl, sz * (d / 2 - 2 * leg)])
            parts.append((lambda p, c=c, h=np.array([leg, hl, leg]): _box(p, c, h), leg_col))
    return parts


def _mug(g):
    r, hh = g.uniform(0.3, 0.42), g.uniform(0.3, 0.45)
    wall = g.uniform(0.04, 0.07)
    col = _hsv(g.uniform(0, 1), g.uniform(0.3, 0.9), g.uniform(0.6, 0.95))
    c = np.array([0, FLOOR + hh, 0])

    def body(p, c=c):
        return np.maximum(_cyl(p, c, r, hh), -_cyl(p, c + np.array([0, wall + 0.05, 0]), r - wall, hh))

    hr = g.uniform(0.16, 0.24)
    handle = lambda p, c=c + np.array([r, 0, 0]): np.maximum(_torus_xy(p, c, hr, 0.045), -_cyl(p, c - np.array([r, 0, 0]), r - 0.01, 2 * hh))  # noqa: E731
    return [(body, col), (handle, col * 0.8)]


def _vase(g):
    h = g.uniform(0.5, 0.75)
    r0, bulge, neck = g.uniform(0.12, 0.2), g.uniform(0.12, 0.3), g.uniform(0.08, 0.15)
    k = g.uniform(0.8, 1.6)
    c = np.array([0, FLOOR + h, 0])

    def radius(y):
        s = (y + h) / (2 * h)                          # 0 at the bottom, 1 at the rim
        return r0 + bulge * np.sin(np.pi * np.clip(s, 0, 1) ** k) + neck * np.clip(s - 0.85, 0, 1) * 4

    col = _hsv(g.uniform(0, 1), g.uniform(0.3, 0.9), g.uniform(0.5, 0.9))
    band = col * g.uniform(0.4, 0.7)

    def body(p):
        return np.maximum(_lathe(p, c, radius, -h, h), -_cyl(p, c + np.array([0, h, 0]), neck * 0.8, 0.25))

    lip = lambda p: _cyl(p, c + np.array([0, h - 0.02, 0]), radius(np.array(h)) + 0.015, 0.03)  # noqa: E731
    return [(body, col), (lip, band)]


POLE_R, SHADE_WALL = 0.07, 0.06
"""Lamp pole radius and shade wall (world units): the pole spans a voxel of ``make_coarse`` (0.08) and the wall one
of ``Shape.mesh(48)`` (0.043); at 0.03 both fell between grid samples and the lamp meshed as a floating disc."""


def _lamp(g):
    base_r, base_h = g.uniform(0.2, 0.32), g.uniform(0.03, 0.07)
    pole_h = g.uniform(0.6, 0.9)
    shade_h, shade_r0, shade_r1 = g.uniform(0.25, 0.4), g.uniform(0.1, 0.2), g.uniform(0.25, 0.4)
    metal = _hsv(g.uniform(0, 1), g.uniform(0, 0.3), g.uniform(0.2, 0.6))
    shade = _hsv(g.uniform(0.05, 0.2), g.uniform(0.1, 0.6), g.uniform(0.8, 1.0))
    top = FLOOR + 2 * base_h + pole_h
    parts = [(lambda p: _cyl(p, np.array([0, FLOOR + base_h, 0]), base_r, base_h), metal),
             (lambda p: _cyl(p, np.array([0, FLOOR + base_h + pole_h / 2, 0]), POLE_R, pole_h / 2 + base_h), metal)]
    sc = np.array([0, top, 0])
    rad = lambda y: shade_r1 + (shade_r0 - shade_r1) * (y + shade_h / 2) / shade_h  # noqa: E731
    parts.append((lambda p: np.maximum(_lathe(p, sc, rad, -shade_h / 2, shade_h / 2),
                                       -_lathe(p, sc, lambda y: rad(y) - SHADE_WALL, -shade_h / 2 - 0.1,
                                               shade_h / 2 + 0.1)), shade))
    return parts


def _mushroom(g):
    stem_h, stem_r = g.uniform(0.3, 0.55), g.uniform(0.08, 0.16)
    cap_r, cap_h = g.uniform(0.35, 0.6), g.uniform(0.2, 0.4)
    stem_col = _hsv(g.uniform(0.08, 0.14), g.uniform(0.05, 0.3), g.uniform(0.8, 0.95))
    cap_col = _hsv(g.choice([0.0, 0.03, 0.07, 0.1]), g.uniform(0.5, 0.9), g.uniform(0.45, 0.9))
    cy = FLOOR + 2 * stem_h
    cap = lambda p, c=np.array([0, cy, 0]): np.maximum(  # noqa: E731
        _ellipsoid(p, c, np.array([cap_r, cap_h, cap_r])), c[1] - 0.02 - p[:, 1])
    stem = lambda p: _lathe(p, np.array([0, FLOOR + stem_h, 0]),  # noqa: E731
                            lambda y: stem_r * (1.15 - 0.3 * (y + stem_h) / (2 * stem_h)), -stem_h, stem_h + 0.02)
    return [(stem, stem_col), (cap, cap_col)]


_MAKERS = {"chair": _chair, "table": _table, "mug": _mug, "vase": _vase, "lamp": _lamp, "mushroom": _mushroom}


def class_index(cls: str) -> int:
    """Index of a class name in ``CLASSES``; ValueError naming the known classes otherwise."""
    if cls not in CLASSES:
        raise ValueError(f"unknown shape class {cls!r}: use one of {', '.join(CLASSES)}")
    return CLASSES.index(cls)


def shape(cls: str, seed: int) -> Shape:
    """The procedural shape ``seed`` of class ``cls`` (deterministic)."""
    g = np.random.default_rng([class_index(cls), int(seed)])
    return Shape(cls, int(seed), _MAKERS[cls](g))


def held_out_shape(cls: str, i: int) -> Shape:
    """The i-th held-out shape of a class (never used to train the denoiser)."""
    return shape(cls, HELD_OUT + int(i))


def mesh_sdf(asset: Asset, pts: np.ndarray, samples: int = 200_000) -> np.ndarray:
    """Signed distance (negative inside) of a closed mesh at (N, 3) points.

    Distance: to the nearest of ``samples`` area-uniform surface samples (a KD-tree query; off by at most the
    sample spacing, about 0.005 for these assets); sign: trimesh's ray-parity ``contains`` (the test trimesh's
    exact ``signed_distance`` uses too). The exact ``signed_distance`` took 34 s for a 32^3 grid on the shared
    CPU; this takes a few seconds."""
    import trimesh
    from scipy.spatial import cKDTree

    from engine.fields import sample_surface

    v = asset.verts.detach().double().cpu()
    s, _ = sample_surface(v, asset.faces.cpu(), samples, generator=torch.Generator().manual_seed(0))
    d = cKDTree(s.numpy()).query(pts)[0]
    tm = trimesh.Trimesh(v.numpy(), asset.faces.cpu().numpy(), process=False)
    return np.where(tm.contains(pts), -d, d)


# ---- coarse assets -------------------------------------------------------------------------------------------
def make_coarse(fine: Shape | Asset, seed: int = 0, resolution: int = 28, blur: float = 1.0, dilate: float = 0.03,
                noise: float = 0.01, color_blur: int = 3) -> Asset:
    """A coarse version of a shape, as a feed-forward generator's output looks: the SDF sampled on a coarse grid
    (decimation: ``resolution``^3 over [-1, 1]^3), Gaussian-blurred by ``blur`` voxels where that adds material
    (``min(blurred, sampled)``: concave corners and gaps fill in, but a thin part such as a chair leg is never
    blurred away), meshed at the level ``dilate`` (world units: the asset is puffier and its convex corners round
    off), vertices jittered by ``noise`` (world units, normal distribution) and colours averaged over
    ``color_blur`` rounds of neighbouring vertices (blurred texture).

    Thin parts survive: a leg of half-width r >= 0.03 has a grid sample within ``voxel / sqrt(2)`` of its axis, so
    the sampled SDF there is at most ``voxel / sqrt(2) - r`` and the dilated level set contains it whenever
    ``dilate > voxel / sqrt(2) - r`` (default grid: voxel 0.074, 0.052 - 0.03 = 0.022 < 0.03).

    ``fine`` is a ``Shape`` (its SDF is sampled) or an ``Asset`` (a closed mesh: its SDF by ``mesh_sdf``).
    """
    from scipy import ndimage

    pts = _grid(resolution).reshape(-1, 3)
    if isinstance(fine, Shape):
        vol = fine.sdf(pts)
        color_of = fine.color
    else:
        from scipy.spatial import cKDTree

        vol = mesh_sdf(fine, pts)
        tree, cols = cKDTree(fine.verts.detach().cpu().numpy()), fine.colors.detach().cpu().numpy()
        color_of = lambda q: cols[tree.query(q)[1]]  # noqa: E731
    h = 2.0 / (resolution - 1)
    # truncated at +-2 voxels so far-away positive distances do not drown a thin part in the blur
    vol = np.clip(vol.reshape((resolution,) * 3), -2 * h, 2 * h)
    if blur > 0:
        vol = np.minimum(ndimage.gaussian_filter(vol, blur), vol)
    vol = vol - dilate
    if not (vol < 0).any():
        raise ValueError("make_coarse: the coarse asset is empty; raise resolution or dilate")
    verts, faces = _march(vol, resolution)
    g = torch.Generator().manual_seed(int(seed))
    verts = verts + noise * torch.randn(verts.shape, generator=g, dtype=verts.dtype)
    colors = torch.as_tensor(color_of(verts.numpy()), dtype=verts.dtype)
    from engine.fields.mesh import _neighbour_mean

    for _ in range(color_blur):
        colors = 0.5 * colors + 0.5 * _neighbour_mean(colors, faces)
    return Asset(verts, faces, colors)
