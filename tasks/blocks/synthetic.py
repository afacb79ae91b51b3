"""Synthetic block scenes with known geometry, rendered by trimesh/Embree ray casting (not tide's rasterizer, so
fits against them test the whole pipeline independently).

A scene is 2-5 superquadrics (boxes, cylinders, ellipsoids, rounded and pinched shapes; side by side and stacked)
standing on a checkered ground plane under a grey-blue sky, in a z-up world (as Blender's). ``write_scene``
writes what a user would have: ``transforms.json`` (Blender/nerfstudio, OpenGL camera-to-world matrices), one PNG
per view, plus the truth: ``gt_points.npy`` (surface samples of the blocks, world units) and ``gt_blocks.json``.
The layout fits in about 1.5 x 1.5 units.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from engine.fields import superquadric_mesh
from engine.io import save_png, write_json, write_text

__all__ = ["SHAPES", "random_blocks", "block_mesh", "ring_cameras", "render_views", "write_scene"]

SHAPES = {"box": (0.1, 0.1), "cylinder": (0.1, 1.0), "ellipsoid": (1.0, 1.0), "rounded": (0.4, 0.4),
          "pinched": (1.5, 1.0), "diamond": (1.0, 1.6)}
"""Shape exponents (eps1, eps2) of the primitive kinds."""

SKY = np.array([0.72, 0.80, 0.90])
LIGHT = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def random_blocks(rng: np.random.Generator, n: int | None = None) -> list[dict]:
    """2-5 blocks on the ground z = 0: dicts with ``scale`` (3,), ``e`` (2,), ``R`` (3, 3), ``t`` (3,), ``kind``,
    ``color`` (3,). Side-by-side blocks do not intersect (bounding circles apart); one may be stacked on another."""
    n = int(rng.integers(2, 6)) if n is None else n
    for attempt in range(20):
        # crowded layouts that do not fit are retried with smaller blocks
        blocks = _place(rng, n, 0.92 ** attempt)
        if blocks is not None:
            return blocks
    raise RuntimeError(f"could not place {n} blocks")


def _place(rng, n, shrink):
    blocks: list[dict] = []
    kinds = list(SHAPES)
    for _ in range(100):
        if len(blocks) == n:
            break
        kind = kinds[int(rng.integers(len(kinds)))]
        s = rng.uniform([0.12, 0.12, 0.10], [0.32, 0.32, 0.28]) * shrink
        yaw = rng.uniform(0, math.pi)
        color = rng.uniform(0.15, 0.95, 3)
        stack = blocks and rng.random() < 0.3 and not any(b.get("stacked") for b in blocks)
        if stack:
            base = blocks[int(rng.integers(len(blocks)))]
            if SHAPES[base["kind"]][0] > 0.5:            # only on flat tops (boxes, cylinders)
                continue
            s[:2] = np.minimum(s[:2], 0.8 * base["scale"][:2].min())
            t = np.array([base["t"][0], base["t"][1], base["t"][2] + base["scale"][2] + s[2]])
        else:
            r = math.hypot(s[0], s[1])
            xy = rng.uniform(-0.75 + r, 0.75 - r, 2)
            if any(np.linalg.norm(xy - b["t"][:2]) < r + math.hypot(*b["scale"][:2]) + 0.04 for b in blocks
                   if not b.get("stacked")):
                continue
            t = np.array([xy[0], xy[1], s[2]])
        blocks.append({"kind": kind, "scale": s, "e": np.array(SHAPES[kind]), "R": _rot_z(yaw), "t": t,
                       "color": color, "stacked": bool(stack)})
    return blocks if len(blocks) == n else None


def block_mesh(block: dict, level: int = 4):
    """(V, 3) world vertices and (F, 3) faces of one block (the superquadric convention of ``superquadric_mesh``)."""
    v, f = superquadric_mesh(torch.tensor(float(block["e"][0]), dtype=torch.float64), float(block["e"][1]),
                             torch.as_tensor(block["scale"], dtype=torch.float64), level=level)
    return v.numpy() @ np.asarray(block["R"]).T + np.asarray(block["t"]), f.numpy()


def ring_cameras(n: int = 24, distance: float = 2.6, target=(0.0, 0.0, 0.25), elevations=(20.0, 45.0),
                 fov_deg: float = 40.0) -> tuple[np.ndarray, float]:
    """``n`` OpenGL camera-to-world matrices (n, 4, 4) on rings at the given elevations (degrees) around a z-up
    ``target``, azimuths interleaved between rings; and the horizontal field of view (radians)."""
    target = np.asarray(target, dtype=np.float64)
    mats = []
    for i in range(n):
        el = math.radians(elevations[i % len(elevations)])
        az = 2 * math.pi * i / n
        eye = target + distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        back = (eye - target) / np.linalg.norm(eye - target)             # OpenGL camera looks down -z
        right = np.cross([0.0, 0.0, 1.0], back)
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        M = np.eye(4)
        M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = right, up, back, eye
        mats.append(M)
    return np.stack(mats), math.radians(fov_deg)


def _checker(p: np.ndarray) -> np.ndarray:
    # ground colour: a 0.25-unit checker of two warm greys
    k = (np.floor(p[:, 0] / 0.25) + np.floor(p[:, 1] / 0.25)) % 2
    return np.where(k[:, None] > 0, [0.62, 0.58, 0.52], [0.42, 0.40, 0.37])


def render_views(blocks: list[dict], c2w_gl: np.ndarray, fov_x: float, size: int, ground: float = 8.0) -> np.ndarray:
    """(N, size, size, 3) float images by Embree ray casting (one ray per pixel centre): Lambert-lit blocks with a
    stripe pattern, a checkered ground square of half-width ``ground``, sky elsewhere."""
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector   # Embree, not trimesh's pure-Python fallback

    verts, faces, owner = [], [], []
    off = 0
    for i, b in enumerate(blocks):
        v, f = block_mesh(b)
        verts.append(v), faces.append(f + off), owner.append(np.full(len(f), i))
        off += len(v)
    g = ground
    verts.append(np.array([[-g, -g, 0.0], [g, -g, 0.0], [g, g, 0.0], [-g, g, 0.0]]))
    faces.append(np.array([[0, 1, 2], [0, 2, 3]]) + off)
    owner.append(np.full(2, -1))
    mesh = trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)
    owner = np.concatenate(owner)
    normals = mesh.face_normals
    caster = RayMeshIntersector(mesh)
    fx = 0.5 * size / math.tan(0.5 * fov_x)
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    d_cam = np.stack([(j - size / 2) / fx, -(i - size / 2) / fx, -np.ones_like(j)], -1).reshape(-1, 3)
    colors = np.array([b["color"] for b in blocks])
    out = []
    for M in c2w_gl:
        dirs = d_cam @ M[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        origins = np.broadcast_to(M[:3, 3], dirs.shape).copy()
        loc, ray, tri = caster.intersects_location(origins, dirs, multiple_hits=False)
        img = np.broadcast_to(SKY, dirs.shape).copy()
        who = owner[tri]
        n = normals[tri]
        lit = 0.4 + 0.6 * np.clip(n @ LIGHT, 0, None)
        blk = who >= 0
        # stripes along each block's own z axis give the texture something to fit
        loc_b = loc[blk]
        local_z = np.einsum("nij,ni->nj", np.stack([blocks[k]["R"] for k in who[blk]]),
                            loc_b - np.stack([blocks[k]["t"] for k in who[blk]]))[:, 2]
        stripe = 0.8 + 0.2 * (np.floor(local_z / 0.08) % 2)
        col = np.empty((len(tri), 3))
        col[blk] = colors[who[blk]] * stripe[:, None] * lit[blk, None]
        col[~blk] = _checker(loc[~blk]) * lit[~blk, None]
        img[ray] = col
        out.append(img.reshape(size, size, 3))
    return np.clip(np.stack(out), 0, 1)


def sample_blocks(blocks: list[dict], n: int = 20000, seed: int = 0) -> np.ndarray:
    """(n, 3) points uniform over the union of the blocks' surfaces (by area)."""
    import trimesh

    meshes = [trimesh.Trimesh(*block_mesh(b), process=False) for b in blocks]
    pts, _ = trimesh.util.concatenate(meshes).sample(n, return_index=True, seed=seed)
    return np.asarray(pts)


def write_scene(folder, seed: int = 0, views: int = 24, size: int = 96, n_blocks: int | None = None) -> dict:
    """Make a scene and write it to ``folder`` (created): transforms.json, images/r_XXX.png, gt_points.npy,
    gt_blocks.json. Returns a summary dict (block count, kinds)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    blocks = random_blocks(rng, n_blocks)
    c2w, fov_x = ring_cameras(views)
    imgs = render_views(blocks, c2w, fov_x, size)
    frames = []
    for k, img in enumerate(imgs):
        save_png(folder / "images" / f"r_{k:03d}.png", img)
        frames.append({"file_path": f"images/r_{k:03d}", "transform_matrix": c2w[k].tolist()})
    write_text(folder / "transforms.json", json.dumps({"camera_angle_x": fov_x, "frames": frames}, indent=1))
    with open(folder / "gt_points.npy.tmp", "wb") as fh:
        np.save(fh, sample_blocks(blocks, seed=seed))
    (folder / "gt_points.npy.tmp").replace(folder / "gt_points.npy")
    gt = [{"kind": b["kind"], "scale": b["scale"].tolist(), "e": b["e"].tolist(), "R": b["R"].tolist(),
           "t": b["t"].tolist(), "color": b["color"].tolist()} for b in blocks]
    write_json(folder / "gt_blocks.json", {"seed": seed, "blocks": gt})
    return {"blocks": len(blocks), "kinds": [b["kind"] for b in blocks]}
