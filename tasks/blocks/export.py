"""Blocks in the input's world frame: blocks.json, blocks.obj (kept blocks, one mesh) and blocks.glb (textured
blocks and ground, one node per block).

A block's world pose follows from the similarity ``SceneFrame``: with ``p_norm = rot (p - centre) / radius``,
a block (R, t, scale) in the normalised frame is ``R_w = rot^T R``, ``t_w = rot^T t radius + centre``,
``scale_w = scale radius`` in the world.
"""
from __future__ import annotations

import numpy as np
import torch

from .frame import SceneFrame
from .model import BlocksModel, superquadric_points

__all__ = ["world_blocks", "blocks_json", "blocks_obj", "blocks_glb", "ground_mesh"]


@torch.no_grad()
def world_blocks(model: BlocksModel, keep: torch.Tensor, frame: SceneFrame) -> list[dict]:
    """Kept blocks as dicts: scale (3), e (2), R (3x3), t (3), opacity, index (into the model), world units."""
    out = []
    rot = frame.rot
    for i in torch.nonzero(keep).flatten().tolist():
        R = model.rotation()[i].double().numpy()
        t = model.trans[i].double().numpy()
        out.append({"index": i, "scale": (model.scale()[i].double().numpy() * frame.radius).tolist(),
                    "e": model.eps()[i].double().numpy().tolist(), "R": (rot.T @ R).tolist(),
                    "t": (rot.T @ t * frame.radius + frame.centre).tolist(),
                    "opacity": float(torch.sigmoid(model.alpha_logit[i]))})
    return out


def _block_mesh(b: dict, dirs, faces):
    local = superquadric_points(dirs, torch.tensor([b["e"]], dtype=torch.float64),
                                torch.tensor([b["scale"]], dtype=torch.float64))[0].numpy()
    return local @ np.asarray(b["R"]).T + np.asarray(b["t"]), faces.numpy()


def blocks_json(blocks: list[dict], frame: SceneFrame, ground: float) -> dict:
    """The document written as blocks.json (the ground plane is a point and normal in the world frame)."""
    point = frame.to_world(np.array([[0.0, ground, 0.0]]))[0]
    return {"convention": "x = s1 cos^e1(eta) cos^e2(omega), y = s2 cos^e1(eta) sin^e2(omega), z = s3 sin^e1(eta); "
                          "world = R @ local + t",
            "frame": frame.as_dict(),
            "ground": {"point": point.tolist(), "normal": frame.up.tolist(), "texture": "ground.png"},
            "blocks": [{**{k: b[k] for k in ("scale", "e", "R", "t", "opacity")}, "texture": f"block_{k}.png"}
                       for k, b in enumerate(blocks)]}


def blocks_obj(blocks: list[dict], level: int = 3):
    """The kept blocks as one trimesh in world coordinates (no ground)."""
    import trimesh

    from engine.fields import icosphere

    dirs, faces = icosphere(level, dtype=torch.float64)
    parts = [trimesh.Trimesh(*_block_mesh(b, dirs, faces), process=False) for b in blocks]
    return trimesh.util.concatenate(parts) if parts else trimesh.Trimesh()


def ground_mesh(frame: SceneFrame, ground: float, half: float = 1.5):
    """(4, 3) world corners and (2, 3) faces of a ground square of half-width ``half`` (normalised units)."""
    c = np.array([[-half, ground, -half], [half, ground, -half], [half, ground, half], [-half, ground, half]])
    return frame.to_world(c), np.array([[0, 2, 1], [0, 3, 2]]), c


def blocks_glb(model: BlocksModel, blocks: list[dict], frame: SceneFrame, textures: list[np.ndarray],
               ground_tex: np.ndarray, extent: float) -> bytes:
    """A glTF binary scene: one textured node per block (spherical uvs, as fitted) and the ground square with its
    texture resampled onto a plain uv grid."""
    import trimesh
    from PIL import Image

    from engine.fields import icosphere

    from .model import _sphere_uvs, ground_coords

    scene = trimesh.Scene()
    dirs, faces = icosphere(2, dtype=torch.float64)
    uvc = _sphere_uvs(dirs.float(), faces).double().numpy()                 # (F, 3, 2): unshare corners
    for k, b in enumerate(blocks):
        v, f = _block_mesh(b, dirs, faces)
        vv = v[f].reshape(-1, 3)
        ff = np.arange(len(vv)).reshape(-1, 3)
        mat = trimesh.visual.texture.SimpleMaterial(image=Image.fromarray(textures[k]))
        vis = trimesh.visual.TextureVisuals(uv=uvc.reshape(-1, 2), material=mat)
        scene.add_geometry(trimesh.Trimesh(vv, ff, visual=vis, process=False), node_name=f"block_{k}",
                           geom_name=f"block_{k}")
    gv, gf, gn = ground_mesh(frame, float(model.ground.detach()))
    # the ground texture lives in warped coordinates: resample it onto the square's plain uv grid
    n = 256
    xs = np.linspace(gn[0, 0], gn[1, 0], n)
    X, Z = np.meshgrid(xs, xs[::-1])
    g = ground_coords(torch.as_tensor(X), torch.as_tensor(Z), extent)
    t = torch.as_tensor(ground_tex, dtype=torch.float64).permute(2, 0, 1)[None] / 255.0
    img = torch.nn.functional.grid_sample(t, g[None], align_corners=False)[0].permute(1, 2, 0).numpy()
    mat = trimesh.visual.texture.SimpleMaterial(image=Image.fromarray((img * 255).astype(np.uint8)))
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    vis = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    scene.add_geometry(trimesh.Trimesh(gv, gf, visual=vis, process=False), node_name="ground", geom_name="ground")
    return scene.export(file_type="glb")
