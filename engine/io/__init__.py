"""File input and output. Every write is atomic (temp file in the same folder, then rename)."""
from .atomic import atomic_path, write_bytes, write_json, write_text
from .mesh import MESH_SUFFIXES, PointCloud, check_mesh, load_mesh, load_points, save_mesh, save_points
from .video import VideoWriter, save_png, save_video, to_uint8

__all__ = ["atomic_path", "write_bytes", "write_json", "write_text", "PointCloud", "load_mesh", "save_mesh",
           "save_points", "load_points", "check_mesh", "MESH_SUFFIXES", "VideoWriter", "save_png", "save_video",
           "to_uint8", "save_export"]


def save_export(path, obj):
    """Write one scene export, choosing the writer from the object and the suffix.

    trimesh objects -> mesh formats; ``PointCloud`` -> .ply; (H, W, 3) arrays -> .png; dict/list -> .json;
    str -> text; bytes -> raw.
    """
    from pathlib import Path

    import numpy as np

    path = Path(path)
    if isinstance(obj, PointCloud):
        return save_points(path, obj)
    if hasattr(obj, "export") and hasattr(obj, "vertices"):
        return save_mesh(path, obj)
    if isinstance(obj, np.ndarray) or hasattr(obj, "detach"):
        return save_png(path, obj)
    if isinstance(obj, (dict, list)):
        return write_json(path, obj)
    if isinstance(obj, str):
        return write_text(path, obj)
    if isinstance(obj, (bytes, bytearray)):
        return write_bytes(path, bytes(obj))
    raise TypeError(f"don't know how to export {type(obj).__name__} to {path.name}")
