"""Multi-view human datasets in the ZJU-MoCap layout that 3D²-Actor and ARAH read, and a generator for one.

Layout (one subject folder)::

    cam_params.json          {"all_cam_names": ["1", ..., "10"],
                              "1": {"K": 3x3, "D": 5x1, "R": 3x3, "T": 3x1}, ...}   OpenCV, world -> camera,
                                                                                    X_cam = R X + T (metres)
    1/000000.jpg 1/000000.png ...   per camera: RGB images, foreground masks beside them (same stem, .png)
    1/000000_cloth.png ...   optional (tide's addition, all or none): clothing segmentation (garment and hair
                             pixels), as DELTA gets from a cloth-segmentation network; the generator writes them
    models/000000.npz        body parameters of each frame: poses (J, 3) per-bone axis-angle, Rh (3,), Th (3,),
                             phenotype (P,) with phenotype_labels (anny); SMPL files carry poses, Rh, Th, shapes
    tide_split.json          (tide's addition) {"train": [frame, ...], "test": [...], "motions": {frame: name}}

The generator (``generate``) poses a clothed character: the anny body with a shirt-and-skin texture, a flared skirt
and a hair cap as separate coloured meshes, all posed by the same skinning (garment vertices take an inverse-distance
blend of the nearest body vertices' weights). Views are rendered by trimesh ray casting with Embree (``embreex``),
not by tide's rasterizer, so the targets do not depend on the renderer the avatars are trained with.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import TideError

from .body import AnnyBody, BodyModel, axis_angle_to_matrix, motion

__all__ = ["DatasetError", "Dataset", "read_dataset", "write_dataset", "generate", "Character", "make_character",
           "default_cache", "PARTS", "part_labels"]


class DatasetError(TideError, ValueError):
    """A dataset folder that is incomplete or inconsistent (reported as one line, exit status 2)."""


def default_cache() -> Path:
    """Where generated datasets are cached: $TIDE_AVATAR_DATA, else ~/.cache/tide-avatar (kept across runs/CI)."""
    return Path(os.environ.get("TIDE_AVATAR_DATA", Path.home() / ".cache" / "tide-avatar"))


# ---- body parts (segmentation for the denoiser, colours for the character) ----------------------------------------
PARTS = ["head", "torso", "upper_arm", "lower_arm", "hand", "upper_leg", "lower_leg", "foot"]


def part_labels(body: BodyModel) -> np.ndarray:
    """(V,) int part index into ``PARTS`` of each vertex, from its dominant bone's name."""
    dom = body.skin_idx.gather(1, body.skin_w.argmax(1, keepdim=True))[:, 0].numpy()
    names = [body.bone_labels[j].lower() for j in range(body.n_bones)]

    def part(n):
        for key, p in (("head", 0), ("neck", 0), ("jaw", 0), ("eye", 0), ("tongue", 0), ("teeth", 0),
                       ("upperarm", 2), ("lowerarm", 3), ("hand", 4), ("wrist", 4), ("finger", 4), ("thumb", 4),
                       ("metacarpal", 4), ("upperleg", 5), ("thigh", 5), ("lowerleg", 6), ("calf", 6),
                       ("foot", 7), ("toe", 7)):
            if key in n:
                return p
        return 1

    table = np.array([part(n) for n in names])
    return table[dom]


# ---- the clothed character --------------------------------------------------------------------------------------
@dataclass
class Character:
    """Body plus garments, each a mesh skinned by the body's bones.

    meshes: list of (name, rest verts (V, 3), faces (F, 3), vertex colours (V, 3) in [0, 1], skin idx, skin w).
    """

    body: BodyModel
    meshes: list = field(default_factory=list)

    def posed(self, poses, Rh=None, Th=None):
        """(list of posed (V, 3) numpy arrays per mesh, bone transforms (J, 4, 4))."""
        from .body import lbs

        T = self.body.bone_transforms(torch.as_tensor(poses, dtype=torch.float64)[None], Rh, Th).double()
        return [lbs(v.double(), i, w.double(), T)[0].numpy() for _, v, _, _, i, w in self.meshes], T[0]


def _vertex_normals(v, f):
    import trimesh

    return np.asarray(trimesh.Trimesh(v, f, process=False).vertex_normals)


def make_character(body: BodyModel, garment: str = "skirt", hair: bool = True) -> Character:
    """The generator's clothed character: textured body, a flared skirt (or a cape) and a hair cap."""
    v = body.rest_verts.double().numpy()
    f = body.faces.numpy()
    parts = part_labels(body)
    y0, y1 = v[:, 1].min(), v[:, 1].max()
    H = y1 - y0
    # body colours: skin, a striped shirt on the torso and upper arms, dark shoes
    skin = np.array([0.87, 0.68, 0.55])
    shirt_a, shirt_b = np.array([0.15, 0.35, 0.75]), np.array([0.9, 0.9, 0.85])
    stripes = (np.floor((v[:, 1] - y0) / (0.035 * H)) % 2)[:, None]
    col = np.tile(skin, (len(v), 1))
    shirt = np.isin(parts, [1, 2])
    col[shirt] = (stripes * shirt_a + (1 - stripes) * shirt_b)[shirt]
    col[parts == 7] = [0.15, 0.12, 0.1]
    col[parts == 6] = [0.25, 0.25, 0.3]                                     # leggings
    bw = body.skin_w
    meshes = [("body", body.rest_verts.double(), body.faces, torch.as_tensor(col), body.skin_idx, bw.double())]
    if garment == "skirt":
        yw, yh = y0 + 0.60 * H, y0 + 0.33 * H                              # waist and hem heights
        core = np.abs(v[:, 0]) < 0.22 * H / 1.7
        rings, segs = 10, 48
        gv = []
        for r in range(rings + 1):
            y = yw + (yh - yw) * r / rings
            band = core & (np.abs(v[:, 1] - y) < 0.03) & np.isin(parts, [1, 5])
            c = v[band].mean(0) if band.any() else np.array([0, y, 0])
            rad = np.percentile(np.linalg.norm((v[band] - c)[:, [0, 2]], axis=1), 95) if band.any() else 0.15
            rad = rad + 0.02 + 0.10 * r / rings                              # flare towards the hem
            for s in range(segs):
                a = 2 * math.pi * s / segs
                gv.append([c[0] + rad * math.sin(a), y, c[2] + 0.9 * rad * math.cos(a)])
        gv = np.array(gv)
        gf = []
        for r in range(rings):
            for s in range(segs):
                a, b = r * segs + s, r * segs + (s + 1) % segs
                gf += [[a, a + segs, b], [b, a + segs, b + segs]]
        gf = np.array(gf)
        ang = np.arctan2(gv[:, 0], gv[:, 2])
        check = ((np.floor(ang / (2 * math.pi) * 16) + np.floor((gv[:, 1] - y0) / (0.04 * H))) % 2)[:, None]
        gcol = check * np.array([0.75, 0.12, 0.15]) + (1 - check) * np.array([0.95, 0.8, 0.3])
        gt = torch.as_tensor(gv)
        idx, w = body.skin_weights_for(gt.to(body.rest_verts.dtype), k=24)
        meshes.append(("skirt", gt, torch.as_tensor(gf), torch.as_tensor(gcol), idx, w.double()))
    elif garment != "none":
        raise ValueError(f"unknown garment {garment!r}: 'skirt' or 'none'")
    if hair:
        n = _vertex_normals(v, f)
        head = parts == 0
        hc = v[head].mean(0)
        top = v[head, 1].max()
        scalp = head & ((v[:, 1] > hc[1] + 0.01) & (v[:, 2] < hc[2] + 0.06) | (v[:, 2] < hc[2] - 0.03)
                        & (v[:, 1] > top - 0.30 * H / 1.7))
        keep = scalp[f].all(1)
        used = np.unique(f[keep])
        remap = -np.ones(len(v), dtype=np.int64)
        remap[used] = np.arange(len(used))
        hv = v[used] + 0.015 * n[used]
        hf = remap[f[keep]]
        shade = 0.8 + 0.2 * np.sin(hv[:, 0] * 120)[:, None]
        hcol = shade * np.array([0.35, 0.2, 0.08])
        meshes.append(("hair", torch.as_tensor(hv), torch.as_tensor(hf), torch.as_tensor(hcol),
                       body.skin_idx[used], bw[used].double()))
    return Character(body, meshes)


# ---- cameras and ray casting ------------------------------------------------------------------------------------
def ring_cameras(n: int, size: int, radius: float = 2.7, height: float = 0.3, target_y: float = 0.0,
                 fov_y: float = 38.0):
    """n cameras on a ring around the y axis, looking at (0, target_y, 0). Returns {name: (K, R, T)}."""
    cams = {}
    f = 0.5 * size / math.tan(math.radians(fov_y) / 2)
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = np.array([radius * math.sin(a), height + 0.4 * (i % 2), radius * math.cos(a)])
        z = np.array([0, target_y, 0]) - eye
        z /= np.linalg.norm(z)
        x = np.cross(z, [0, 1.0, 0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R = np.stack([x, y, z])
        cams[str(i + 1)] = (K, R, -(R @ eye)[:, None])
    return cams


def ray_cast(meshes_posed, faces, colours, K, R, T, size, light=(0.3, 0.8, 0.5), which: bool = False):
    """Render one view by Embree ray casting: (rgb (H, W, 3) float, mask (H, W) bool), and with ``which`` also the
    index of the mesh each pixel sees ((H, W) int, -1 where none).

    Lambert shading with ambient 0.35 (normals face the camera, so open garments are two-sided).
    """
    import trimesh
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    off = np.cumsum([0] + [len(v) for v in meshes_posed])
    V = np.concatenate(meshes_posed)
    F = np.concatenate([f + o for f, o in zip(faces, off)])
    C = np.concatenate(colours)
    mesh = trimesh.Trimesh(V, F, process=False)
    u, w = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (w - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    dirs = d_cam @ R                                                          # R^T d
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    eye = (-R.T @ T).ravel()
    origins = np.tile(eye, (len(dirs), 1))
    loc, ray, tri = RayMeshIntersector(mesh).intersects_location(origins, dirs, multiple_hits=False)
    rgb = np.zeros((size * size, 3))
    mask = np.zeros(size * size, dtype=bool)
    hit = -np.ones(size * size, dtype=np.int64)
    if len(ray):
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)
        albedo = (C[F[tri]] * bary[:, :, None]).sum(1)
        n = mesh.face_normals[tri]
        n = np.where(((n * dirs[ray]).sum(1) > 0)[:, None], -n, n)
        lam = np.clip(n @ (np.asarray(light) / np.linalg.norm(light)), 0, None)
        rgb[ray] = np.clip(albedo * (0.35 + 0.65 * lam[:, None]), 0, 1)
        mask[ray] = True
        hit[ray] = np.searchsorted(off, F[tri, 0], side="right") - 1
    if which:
        return rgb.reshape(size, size, 3), mask.reshape(size, size), hit.reshape(size, size)
    return rgb.reshape(size, size, 3), mask.reshape(size, size)


# ---- writing and reading ----------------------------------------------------------------------------------------
def write_dataset(root, cams: dict, images: dict, masks: dict, models: list, split: dict | None = None,
                  cloth: dict | None = None):
    """Write a dataset folder (atomic files).

    cams: {name: (K, R, T)}; images/masks: {name: list over frames of (H, W, 3) float / (H, W) bool};
    models: list over frames of dicts of arrays (saved as models/<frame>.npz);
    cloth: optional {name: list over frames of (H, W) bool} clothing segmentations (garment and hair pixels),
        written beside the masks as ``<frame>_cloth.png`` (DELTA's clothing segmentation; ZJU-MoCap has none).
    """
    from PIL import Image

    from engine.io import atomic_path, write_json

    root = Path(root)
    names = list(cams)
    params = {"all_cam_names": names}
    for n, (K, R, T) in cams.items():
        params[n] = {"K": np.asarray(K).tolist(), "D": np.zeros((5, 1)).tolist(), "R": np.asarray(R).tolist(),
                     "T": np.asarray(T).reshape(3, 1).tolist()}
    for n in names:
        for i, (img, m) in enumerate(zip(images[n], masks[n])):
            for ext, arr, kw in ((".jpg", (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), {"quality": 95, "subsampling": 0}),
                                 (".png", m.astype(np.uint8) * 255, {})):
                path = root / n / f"{i:06d}{ext}"
                with atomic_path(path) as tmp:
                    Image.fromarray(arr).save(tmp, format="JPEG" if ext == ".jpg" else "PNG", **kw)
        for i, c in enumerate((cloth or {}).get(n, [])):
            with atomic_path(root / n / f"{i:06d}_cloth.png") as tmp:
                Image.fromarray(np.asarray(c, bool).astype(np.uint8) * 255).save(tmp, format="PNG")
    for i, model in enumerate(models):
        path = root / "models" / f"{i:06d}.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **model)
    if split is not None:
        write_json(root / "tide_split.json", split)
    write_json(root / "cam_params.json", params)      # last: its presence marks a complete folder


@dataclass
class Dataset:
    """A loaded dataset.

    cam_names: list of C names; K, R, T: (C, 3, 3), (C, 3, 3), (C, 3) float64 (OpenCV world -> camera);
    images: (C, N, H, W, 3) float32 in [0, 1]; masks: (C, N, H, W) float32 {0, 1};
    poses: (N, J, 3); Rh, Th: (N, 3); phenotype: dict; split: {"train": [...], "test": [...]} frame indices;
    cloth: (C, N, H, W) float32 {0, 1} clothing segmentation (garment and hair), or None where the folder has none.
    """

    root: Path
    cam_names: list
    K: np.ndarray
    R: np.ndarray
    T: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    poses: np.ndarray
    Rh: np.ndarray
    Th: np.ndarray
    phenotype: dict
    split: dict
    cloth: np.ndarray | None = None

    @property
    def size(self):
        return self.images.shape[2], self.images.shape[3]

    def cameras(self, idx=None):
        """tide ``Camera`` batch for camera indices ``idx`` (default all)."""
        from engine.render import Camera

        idx = list(range(len(self.cam_names))) if idx is None else list(idx)
        H, W = self.size
        K = self.K[idx]
        return Camera.from_Rt(torch.as_tensor(self.R[idx]), torch.as_tensor(self.T[idx]), width=W, height=H,
                              fx=torch.as_tensor(K[:, 0, 0]), fy=torch.as_tensor(K[:, 1, 1]),
                              cx=torch.as_tensor(K[:, 0, 2]), cy=torch.as_tensor(K[:, 1, 2]))


def read_dataset(root, n_bones: int | None = None) -> Dataset:
    """Read a dataset folder; raises ``DatasetError`` (one line) for missing files or inconsistent contents.

    n_bones: the body model's bone count; poses with another joint count are refused.
    """
    from PIL import Image

    root = Path(root)
    cp = root / "cam_params.json"
    if not cp.is_file():
        raise DatasetError(f"{cp}: missing (not a dataset folder in the ZJU-MoCap layout)")
    try:
        params = json.loads(cp.read_text())
        names = [str(n) for n in params["all_cam_names"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{cp}: unreadable or without all_cam_names ({e})") from None
    missing = [n for n in names if n not in params]
    if missing:
        raise DatasetError(f"{cp}: all_cam_names lists {len(names)} cameras but parameters of {missing} are missing")
    cam_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("models",))
    if sorted(names) != cam_dirs:
        raise DatasetError(f"{root}: cam_params.json lists {len(names)} cameras but there are {len(cam_dirs)} "
                           f"camera folders ({cam_dirs})")
    model_files = sorted((root / "models").glob("*.npz"))
    if not model_files:
        raise DatasetError(f"{root / 'models'}: no <frame>.npz body parameter files")
    stems = [p.stem for p in model_files]
    K, R, T, imgs, msks, cloth = [], [], [], [], [], []
    for n in names:
        c = params[n]
        try:
            K.append(np.asarray(c["K"], float).reshape(3, 3))
            R.append(np.asarray(c["R"], float).reshape(3, 3))
            T.append(np.asarray(c["T"], float).reshape(3))
        except (KeyError, ValueError) as e:
            raise DatasetError(f"{cp}: camera {n} needs K (3x3), R (3x3) and T (3x1): {e}") from None
        ci, cm = [], []
        for s in stems:
            ip, mp = root / n / f"{s}.jpg", root / n / f"{s}.png"
            if not ip.is_file():
                raise DatasetError(f"{ip}: missing image for frame {s} of camera {n}")
            if not mp.is_file():
                raise DatasetError(f"{mp}: missing mask beside image {ip.name} of camera {n}")
            ci.append(np.asarray(Image.open(ip).convert("RGB"), np.float32) / 255.0)
            cm.append((np.asarray(Image.open(mp).convert("L")) > 127).astype(np.float32))
            cp_ = root / n / f"{s}_cloth.png"
            if cp_.is_file():
                cloth.append((np.asarray(Image.open(cp_).convert("L")) > 127).astype(np.float32))
        imgs.append(ci)
        msks.append(cm)
    if cloth and len(cloth) != len(names) * len(stems):
        raise DatasetError(f"{root}: clothing segmentations (<frame>_cloth.png) exist for {len(cloth)} of "
                           f"{len(names) * len(stems)} images; give all or none")
    shapes = ({a.shape for ci in imgs for a in ci} | {a.shape + (3,) for cm in msks for a in cm}
              | {a.shape + (3,) for a in cloth})
    if len(shapes) != 1:
        raise DatasetError(f"{root}: images and masks differ in size ({sorted(shapes)})")
    poses, Rh, Th, pheno = [], [], [], {}
    for p in model_files:
        with np.load(p, allow_pickle=False) as z:
            if "poses" not in z:
                raise DatasetError(f"{p}: no 'poses' array")
            pose = np.asarray(z["poses"], float)
            pose = pose.reshape(-1, 3) if pose.size % 3 == 0 else pose
            if pose.ndim != 2 or (n_bones is not None and pose.shape[0] != n_bones):
                raise DatasetError(f"{p}: poses has {pose.shape[0] if pose.ndim == 2 else pose.shape} joints, "
                                   f"the body model has {n_bones}")
            poses.append(pose)
            Rh.append(np.asarray(z["Rh"], float).reshape(3) if "Rh" in z else np.zeros(3))
            Th.append(np.asarray(z["Th"], float).reshape(3) if "Th" in z else np.zeros(3))
            if not pheno and "phenotype" in z:
                pheno = dict(zip([str(s) for s in z["phenotype_labels"]], map(float, z["phenotype"])))
    if len({p.shape for p in poses}) != 1:
        raise DatasetError(f"{root / 'models'}: frames have different joint counts")
    split_path = root / "tide_split.json"
    n = len(stems)
    split = json.loads(split_path.read_text()) if split_path.is_file() else {"train": list(range(n)), "test": []}
    bad = [i for i in split.get("train", []) + split.get("test", []) if not 0 <= int(i) < n]
    if bad:
        raise DatasetError(f"{split_path}: frame indices {bad[:5]} outside 0..{n - 1}")
    return Dataset(root, names, np.stack(K), np.stack(R), np.stack(T), np.asarray(imgs, np.float32),
                   np.asarray(msks, np.float32), np.stack(poses), np.stack(Rh), np.stack(Th), pheno, split,
                   np.asarray(cloth, np.float32).reshape(len(names), len(stems), *cloth[0].shape) if cloth else None)


# ---- the generator ----------------------------------------------------------------------------------------------
def generate(root=None, size: int = 128, n_cams: int = 10, frames_per_motion: int = 6,
             train_motions=("walk", "wave", "squat"), test_motions=("run", "turn"), garment: str = "skirt",
             phenotype: dict | None = None) -> Path:
    """Generate (or reuse from the cache) the clothed-character dataset; returns its folder.

    The folder name hashes the arguments, so a cached dataset is reused only for the same settings.
    """
    key = json.dumps([size, n_cams, frames_per_motion, list(train_motions), list(test_motions), garment,
                      sorted((phenotype or {}).items()), 2], sort_keys=True)
    if root is None:
        root = default_cache() / ("zju_" + hashlib.sha1(key.encode()).hexdigest()[:10])
    root = Path(root)
    if (root / "cam_params.json").is_file():
        return root
    body = AnnyBody(phenotype, dtype=torch.float64)
    char = make_character(body, garment)
    cams = ring_cameras(n_cams, size)
    frames, motions = [], {}
    for name in list(train_motions) + list(test_motions):
        for p in motion(body, name, frames_per_motion):
            motions[len(frames)] = name
            frames.append(p)
    images = {n: [] for n in cams}
    masks = {n: [] for n in cams}
    cloth = {n: [] for n in cams}
    models = []
    labels = np.array(list(body.phenotype.keys()) or ["default"])
    values = np.array(list(body.phenotype.values()) or [0.5])
    for i, pose in enumerate(frames):
        verts, T = char.posed(pose)
        for n, (K, R, Tc) in cams.items():
            rgb, m, hit = ray_cast(verts, [x[2].numpy() for x in char.meshes], [x[3].numpy() for x in char.meshes],
                                   K, R, Tc, size, which=True)
            images[n].append(rgb)
            masks[n].append(m)
            cloth[n].append(hit >= 1)                  # every mesh after the body: the garment and the hair
        models.append({"poses": pose, "Rh": np.zeros(3), "Th": np.zeros(3), "phenotype": values,
                       "phenotype_labels": labels, "bone_transforms": T.numpy()})
    n_train = len(train_motions) * frames_per_motion
    split = {"train": list(range(n_train)), "test": list(range(n_train, len(frames))),
             "motions": {str(k): v for k, v in motions.items()}}
    write_dataset(root, cams, images, masks, models, split, cloth)
    return root
