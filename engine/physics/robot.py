"""Soft robots for MPM: bodies built from primitives, voxel/occupancy arrays or meshes, with muscle groups.

A muscle group is an actuation channel g with a fibre direction d: its particles are ``muscle`` material and get
the active stress a_g·E·(F d)(F d)ᵀ (``materials.MUSCLE``). Passive parts use any other material.
All sizes are metres; ``builder`` is a ``ModelBuilder``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["add_voxels", "add_mesh", "add_walker"]


def add_voxels(builder, occupancy, origin, voxel: float, groups=None, fibres=None, material: str = "elastic",
               **body) -> list[int]:
    """Fill the occupied voxels of a boolean array (2D or 3D, same dimension as the builder) with particles.

    Args:
        occupancy: (nx, ny[, nz]) bool.
        origin: (d,) world position of voxel (0, 0[, 0])'s corner.
        voxel: voxel edge length [m].
        groups: optional same-shape int array: muscle group of each voxel, -1 for passive.
        fibres: {group: (d,) direction}; default along x.
        material: material of the passive voxels.
    Returns the body indices added (one per group present).
    """
    occ = np.asarray(occupancy, dtype=bool)
    if occ.ndim != builder.dim:
        raise ValueError(f"occupancy must be {builder.dim}D, got shape {occ.shape}")
    groups = np.full(occ.shape, -1) if groups is None else np.asarray(groups)
    h = builder.dx / builder.ppc
    per_axis = max(1, int(round(voxel / h)))
    local = (np.stack(np.meshgrid(*[np.arange(per_axis)] * builder.dim, indexing="ij"), -1).reshape(-1, builder.dim)
             + 0.5) * (voxel / per_axis)
    ids = []
    for g in np.unique(groups[occ]):
        cells = np.argwhere(occ & (groups == g))
        pts = (np.asarray(origin, float) + cells[:, None, :] * voxel + local[None]).reshape(-1, builder.dim)
        if g < 0:
            ids.append(builder.add_points(pts, material=material, vol=(voxel / per_axis) ** builder.dim, **body))
        else:
            fib = (fibres or {}).get(int(g))
            ids.append(builder.add_points(pts, material="muscle", group=int(g), fibre=fib,
                                          vol=(voxel / per_axis) ** builder.dim, **body))
    return ids


def add_mesh(builder, mesh, origin, size: float, pitch: float | None = None, **kw) -> list[int]:
    """Voxelise a closed ``trimesh.Trimesh`` (3D builders) scaled so its longest side is ``size`` metres, with its
    bounding-box corner at ``origin``; remaining keyword arguments as ``add_voxels``."""
    if builder.dim != 3:
        raise ValueError("meshes need a 3D builder")
    m = mesh.copy()
    m.apply_translation(-m.bounds[0])
    m.apply_scale(size / float(np.max(m.extents)))
    pitch = pitch or builder.dx / builder.ppc * 2
    grid = m.voxelized(pitch).fill()
    occ = np.asarray(grid.matrix, dtype=bool)
    # trimesh places voxel (0, 0, 0)'s centre at grid.translation; add_voxels wants its corner
    corner = np.asarray(origin, float) + np.asarray(grid.translation, float) - pitch / 2
    return add_voxels(builder, occ, corner, pitch, **kw)


def add_walker(builder, origin, length: float = 0.2, height: float = 0.1, **body) -> list[int]:
    """A simple legged robot: a torso with horizontal-fibre muscles (groups 0, 1) on two legs with vertical
    fibres (groups 2, 3). 2D or 3D. Returns the body indices."""
    d = builder.dim
    o = np.asarray(origin, float)
    depth = [height] if d == 3 else []
    leg_w, leg_h = length * 0.25, height * 0.5
    ids = []
    for g, x0 in ((2, 0.0), (3, length - leg_w)):
        lo = o + np.array([x0, 0.0] + [0.0] * (d - 2))
        ids.append(builder.add_box(lo, lo + np.array([leg_w, leg_h] + depth), material="muscle", group=g,
                                   fibre=[0.0, 1.0] + [0.0] * (d - 2), color=(0.9, 0.4, 0.3), **body))
    for g, x0 in ((0, 0.0), (1, length / 2)):
        lo = o + np.array([x0, leg_h] + [0.0] * (d - 2))
        ids.append(builder.add_box(lo, lo + np.array([length / 2, height - leg_h] + depth), material="muscle",
                                   group=g, fibre=[1.0, 0.0] + [0.0] * (d - 2), color=(0.95, 0.55, 0.35), **body))
    return ids
