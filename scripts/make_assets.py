"""Regenerate the small procedural meshes shipped in assets/meshes (no downloads).

    python scripts/make_assets.py
"""
from pathlib import Path

import numpy as np
import trimesh

OUT = Path(__file__).resolve().parent.parent / "assets" / "meshes"


def torus_knot(p=2, q=3, radius=0.32, tube=0.09, n_u=240, n_v=16) -> trimesh.Trimesh:
    """A (p, q) torus knot swept by a circular tube, centred at the origin, about 1 unit across."""
    t = np.linspace(0, 2 * np.pi, n_u, endpoint=False)
    r = radius * (2 + np.cos(q * t)) / 3
    c = np.stack([r * np.cos(p * t), r * np.sin(p * t), -radius * np.sin(q * t) / 3], 1)
    tan = np.roll(c, -1, 0) - np.roll(c, 1, 0)
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    nrm = np.cross(tan, [0.0, 0.0, 1.0])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    bin_ = np.cross(tan, nrm)
    v = np.linspace(0, 2 * np.pi, n_v, endpoint=False)
    verts = (c[:, None] + tube * (np.cos(v)[None, :, None] * nrm[:, None] + np.sin(v)[None, :, None] * bin_[:, None]))
    verts = verts.reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n_u), np.arange(n_v), indexing="ij")
    a = i * n_v + j
    b = ((i + 1) % n_u) * n_v + j
    c2 = ((i + 1) % n_u) * n_v + (j + 1) % n_v
    d = i * n_v + (j + 1) % n_v
    faces = np.concatenate([np.stack([a, b, c2], -1).reshape(-1, 3), np.stack([a, c2, d], -1).reshape(-1, 3)])
    mesh = trimesh.Trimesh(verts, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    knot = torus_knot()
    knot.export(OUT / "knot.obj")
    print(f"knot.obj: {len(knot.vertices)} vertices, {len(knot.faces)} faces, watertight={knot.is_watertight}")
