"""Record a run's geometry frame by frame (``geometry.npz``) and replay a finished run in the viewer.

``tide run`` records each video frame's ``scene.geometry()`` (see ``engine.viewer.ggui``) while the sequence stays
small, or always with ``--save-geometry``; ``tide view RUN_DIR`` plays it back. A run folder without a geometry
sequence is shown from its exports instead (``particles.ply``, meshes), as one still frame.

File layout: ``geometry.npz`` holds ``frames`` (the count) and, for frame ``i``, ``f{i}.keys`` (the geometry's
flattened key names) and ``f{i}.<key>`` for each value that changed since the previous frame (static meshes,
colours, terrain and bounds are stored once).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["GeometryRecorder", "Replay", "flatten", "unflatten", "load_run"]

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".stl", ".off", ".ply")


def _np(x):
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def flatten(geo: dict) -> dict[str, np.ndarray]:
    """A geometry dict as flat ``{name: array}`` (float32 positions and colours)."""
    out: dict[str, np.ndarray] = {}
    p = geo.get("particles")
    if p is not None:
        out["particles.x"] = _np(p["x"]).astype(np.float32)
        if p.get("color") is not None:
            out["particles.color"] = _np(p["color"]).astype(np.float32)
        out["particles.radius"] = np.asarray(float(p.get("radius", 0.005)))
    for j, m in enumerate(geo.get("meshes", [])):
        out[f"meshes.{j}.vertices"] = _np(m["vertices"]).astype(np.float32)
        out[f"meshes.{j}.faces"] = _np(m["faces"]).astype(np.int32)
        for k in ("color", "colors"):
            if m.get(k) is not None:
                out[f"meshes.{j}.{k}"] = _np(m[k]).astype(np.float32)
    if geo.get("heightfield") is not None:
        for k, a in enumerate(geo["heightfield"]):
            out[f"heightfield.{k}"] = _np(a).astype(np.float32)
    if geo.get("walls"):
        out["walls"] = np.asarray([[np.asarray(lo, float), np.asarray(hi, float)] for lo, hi in geo["walls"]],
                                  np.float32)
    if geo.get("ground") is not None:
        out["ground"] = np.asarray(float(geo["ground"]))
    if geo.get("bounds") is not None:
        out["bounds"] = np.asarray([_np(geo["bounds"][0]), _np(geo["bounds"][1])], np.float64)
    return out


def unflatten(flat: dict) -> dict:
    """Inverse of ``flatten``."""
    geo: dict = {}
    if "particles.x" in flat:
        geo["particles"] = {"x": flat["particles.x"], "color": flat.get("particles.color"),
                            "radius": float(flat.get("particles.radius", 0.005))}
    meshes = sorted({int(k.split(".")[1]) for k in flat if k.startswith("meshes.")})
    if meshes:
        geo["meshes"] = [{k.split(".")[2]: flat[k] for k in flat if k.startswith(f"meshes.{j}.")} for j in meshes]
    hf = sorted(int(k.split(".")[1]) for k in flat if k.startswith("heightfield."))
    if hf:
        geo["heightfield"] = tuple(flat[f"heightfield.{k}"] for k in hf)
    if "walls" in flat:
        geo["walls"] = [(w[0], w[1]) for w in flat["walls"]]
    if "ground" in flat:
        geo["ground"] = float(flat["ground"])
    if "bounds" in flat:
        geo["bounds"] = (flat["bounds"][0], flat["bounds"][1])
    return geo


class GeometryRecorder:
    """Collect ``geometry()`` frames; stop (``full``) once more than ``limit_bytes`` would be stored."""

    def __init__(self, limit_bytes: float | None = 32e6):
        self.limit = limit_bytes
        self.arrays: dict[str, np.ndarray] = {}
        self.frames = 0
        self.nbytes = 0
        self.full = False
        self._last: dict[str, np.ndarray] = {}

    def append(self, geo: dict | None) -> bool:
        """Record one frame; False once the limit is passed (nothing more is kept)."""
        if self.full or geo is None:
            return False
        flat = flatten(geo)
        new = {k: v for k, v in flat.items() if k not in self._last or self._last[k].shape != v.shape
               or not np.array_equal(self._last[k], v)}
        size = sum(v.nbytes for v in new.values())
        if self.limit is not None and self.nbytes + size > self.limit:
            self.full = True
            return False
        i = self.frames
        self.arrays[f"f{i}.keys"] = np.asarray(sorted(flat), dtype=str)
        for k, v in new.items():
            self.arrays[f"f{i}.{k}"] = v
            self._last[k] = v
        self.nbytes += size
        self.frames += 1
        return True

    def save(self, path) -> Path:
        """Write ``geometry.npz`` atomically."""
        from ..io.atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, frames=np.asarray(self.frames), **self.arrays)
        return Path(path)


def read_sequence(path) -> list[dict]:
    """The geometry frames of a ``geometry.npz``."""
    with np.load(path, allow_pickle=False) as z:
        n = int(z["frames"])
        state: dict[str, np.ndarray] = {}
        frames = []
        for i in range(n):
            keys = [str(k) for k in z[f"f{i}.keys"]]
            for k in keys:
                if f"f{i}.{k}" in z.files:
                    state[k] = z[f"f{i}.{k}"]
            frames.append(unflatten({k: state[k] for k in keys}))
    return frames


def _from_exports(folder: Path) -> dict | None:
    """One still frame from a run's exported point cloud and meshes (one file per name, glb before obj)."""
    import trimesh

    geo: dict = {"meshes": []}
    seen = set()
    for path in sorted(folder.iterdir(), key=lambda p: (p.stem, MESH_SUFFIXES.index(p.suffix)
                                                         if p.suffix in MESH_SUFFIXES else 99)):
        if path.suffix not in MESH_SUFFIXES or path.stem in seen or not path.is_file():
            continue
        try:
            obj = trimesh.load(path, process=False)
        except Exception:  # noqa: BLE001 - a file the viewer cannot read is skipped, not fatal
            continue
        if isinstance(obj, trimesh.Scene):
            obj = obj.dump(concatenate=True) if obj.geometry else None
        if isinstance(obj, trimesh.PointCloud) and len(obj.vertices):
            cols = getattr(obj, "colors", None)
            cols = None if cols is None or len(cols) != len(obj.vertices) else np.asarray(cols)[:, :3] / 255.0
            x = np.asarray(obj.vertices, float)
            spacing = float(np.max(np.ptp(x, 0))) / max(len(x), 1) ** (1 / 3)
            geo["particles"] = {"x": x, "color": cols, "radius": 0.6 * spacing}
        elif isinstance(obj, trimesh.Trimesh) and len(obj.faces):
            m = {"vertices": np.asarray(obj.vertices), "faces": np.asarray(obj.faces)}
            vc = getattr(obj.visual, "vertex_colors", None)
            if obj.visual.kind == "vertex" and vc is not None and len(vc) == len(obj.vertices):
                m["colors"] = np.asarray(vc)[:, :3] / 255.0
            geo["meshes"].append(m)
        else:
            continue
        seen.add(path.stem)
    if not seen:
        return None
    pts = [geo["particles"]["x"]] if "particles" in geo else []
    pts += [m["vertices"] for m in geo["meshes"]]
    allp = np.concatenate(pts)
    geo["bounds"] = (allp.min(0), allp.max(0))
    geo["ground"] = float(allp[:, 1].min())
    return geo


class Replay:
    """A finished run as a scene for the viewer: ``step`` moves through the recorded frames (looping)."""

    def __init__(self, frames: list[dict], source: str):
        self.frames, self.source = frames, source
        self.index = 0

    def build(self):
        self.index = 0

    def step(self, frame: int):
        self.index = frame % len(self.frames)

    def geometry(self):
        return self.frames[self.index]


def load_run(folder) -> Replay:
    """The replay of a run folder: its ``geometry.npz``, else its exports. ``ConfigError`` if it has neither."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a tide run folder (no config.json)")
    import json

    try:
        fps = json.loads((folder / "config.json").read_text()).get("fps") or 30
    except (OSError, ValueError):
        fps = 30
    replay = None
    if (folder / "geometry.npz").is_file():
        try:
            frames = read_sequence(folder / "geometry.npz")
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot read {folder / 'geometry.npz'}: {exc}") from None
        if frames:
            replay = Replay(frames, "geometry.npz")
    if replay is None:
        still = _from_exports(folder)
        if still is None:
            raise ConfigError(f"{folder} has nothing to replay: no geometry.npz (run with --save-geometry) and no "
                              "exported point cloud or mesh")
        replay = Replay([still], "exports")
    replay.video_fps = int(fps)
    return replay
