"""Meshes (obj/ply/glb through trimesh) and point clouds (ply through open3d), read and written atomically."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MeshError
from .atomic import atomic_path

__all__ = ["PointCloud", "load_mesh", "save_mesh", "save_points", "load_points", "MESH_SUFFIXES"]

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")


@dataclass
class PointCloud:
    """A point cloud to export.

    points: (N, 3) float positions in world units. colors: (N, 3) RGB in [0, 1], or None.
    """

    points: np.ndarray
    colors: np.ndarray | None = None


def load_mesh(path: str | Path):
    """Load a triangle mesh as ``trimesh.Trimesh`` (scenes are merged into one mesh).

    Raises ``MeshError`` for a missing file, an unreadable file, or a file with no triangles.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise MeshError(f"mesh not found: {path}")
    if path.stat().st_size == 0:
        raise MeshError(f"mesh file is empty: {path}")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for garbage input
        raise MeshError(f"not a readable mesh: {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0 or len(loaded.vertices) == 0:
        raise MeshError(f"no triangles in mesh file: {path}")
    check_mesh(loaded.vertices, loaded.faces, str(path))
    return loaded


def check_mesh(vertices, faces, what: str = "mesh") -> None:
    """Raise ``MeshError`` for an empty mesh, non-finite vertices or out-of-range face indices."""
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise MeshError(f"{what}: vertices must be a non-empty (V, 3) array, got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise MeshError(f"{what}: faces must be a non-empty (F, 3) array, got shape {f.shape}")
    if not np.isfinite(v).all():
        raise MeshError(f"{what}: {int((~np.isfinite(v)).any(axis=1).sum())} vertices are NaN or infinite")
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError(f"{what}: face indices must lie in [0, {len(v) - 1}], got [{f.min()}, {f.max()}]")


def save_mesh(path: str | Path, mesh) -> Path:
    """Write a ``trimesh.Trimesh`` (or anything with ``export``) to obj/ply/glb/stl atomically."""
    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(f"unsupported mesh format {path.suffix!r}: use one of {', '.join(MESH_SUFFIXES)}")
    with atomic_path(path) as tmp:
        mesh.export(tmp, file_type=path.suffix.lower().lstrip("."))
    return path


def save_points(path: str | Path, cloud: PointCloud) -> Path:
    """Write a point cloud with per-point colours to .ply (open3d) atomically."""
    import open3d as o3d

    pts = np.asarray(cloud.points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (N, 3), got {pts.shape}")
    if pts.shape[1] == 2:
        pts = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    if cloud.colors is not None:
        cols = np.broadcast_to(np.asarray(cloud.colors, np.float64), pts.shape)
        pc.colors = o3d.utility.Vector3dVector(np.clip(cols, 0, 1))
    with atomic_path(path) as tmp:
        if not o3d.io.write_point_cloud(str(tmp), pc):
            raise OSError(f"open3d could not write {path}")
    return Path(path)


def load_points(path: str | Path) -> PointCloud:
    """Read a .ply point cloud back (points (N,3), colors (N,3) or None)."""
    import open3d as o3d

    pc = o3d.io.read_point_cloud(str(path))
    cols = np.asarray(pc.colors) if pc.has_colors() else None
    return PointCloud(np.asarray(pc.points), cols)
