"""Body models behind one small interface: rest mesh, skinning weights, bones, ``pose(...)``.

``AnnyBody`` wraps Naver's open ``anny`` model (PyPI ``anny``; assets inside the wheel, so it works offline). Anny
builds its model data once (about 90 s) and caches it under ``~/.cache/anny`` (``ANNY_CACHE_DIR``), where later
runs and CI reuse it. We call anny once per body shape to get the rest mesh, the rest bone poses and its sparse
skinning weights, and then pose in plain torch: forward kinematics with rotations about rest bone heads (so zero
poses give the rest mesh, as SMPL's do) and linear blend skinning (``lbs``); the tests check the skinned vertices
against anny's own forward given the same bone poses.
Anny's SMPL-conversion helpers are never called (they download non-commercial data).

``SMPLXBody`` fits SMPL / SMPL-X through the ``smplx`` package for users who have the licensed model files; it is
import-guarded and not exercised here (no model files can be downloaded).

Pose parameters, as stored in ``models/<frame>.npz``: ``poses`` (J, 3) per-bone axis-angle rotations in
world-aligned axes at each bone's head (anny's 'local-ref' parameterisation; radians), ``Rh`` (3,) a global
axis-angle rotation about the origin and ``Th`` (3,) a global translation (metres), as in ZJU-MoCap's SMPL files.
World frame: y up, the body faces +z, metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BodyModel", "Posed", "AnnyBody", "SMPLXBody", "lbs", "skinning_matrices", "inverse_lbs",
           "axis_angle_to_matrix", "rigid", "POSES", "motion", "load_body"]


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (radians) -> (..., 3, 3) rotation matrices (Rodrigues; smooth at 0)."""
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2.clamp_min(1e-24))
    K = torch.zeros(*aa.shape[:-1], 3, 3, dtype=aa.dtype, device=aa.device)
    x, y, z = aa.unbind(-1)
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 0] = -z, y, z
    K[..., 1, 2], K[..., 2, 0], K[..., 2, 1] = -x, -y, x
    small = theta2 < 1e-12
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(K)
    return eye + a * K + b * (K @ K)


def rigid(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3), (..., 3) -> (..., 4, 4) homogeneous transforms."""
    T = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1
    return T


def skinning_matrices(idx: torch.Tensor, w: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Blended 4x4 transforms sum_k w_k T_{idx_k}.

    Args: idx (N, K) bone indices; w (N, K) weights (rows sum to 1); T (B, J, 4, 4) bone transforms
    (rest -> posed). Returns (B, N, 4, 4).
    """
    return (T[:, idx] * w[None, :, :, None, None]).sum(2)


def lbs(points: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning: rest points (N, 3) or (B, N, 3) -> posed (B, N, 3)."""
    M = skinning_matrices(idx, w, T)
    if points.dim() == 2:
        points = points[None]
    return (M[..., :3, :3] @ points[..., None]).squeeze(-1) + M[..., :3, 3]


def inverse_lbs(points: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Posed points (B, N, 3) with known skinning weights -> rest points (B, N, 3): x = (sum w T)^-1 y."""
    M = skinning_matrices(idx, w, T)
    A, t = M[..., :3, :3], M[..., :3, 3]
    return torch.linalg.solve(A, (points - t)[..., None]).squeeze(-1)


@dataclass
class Posed:
    """verts: (B, V, 3) posed vertices (metres); transforms: (B, J, 4, 4) rest -> posed bone transforms (the
    global Rh/Th included), the matrices ``lbs`` blends."""

    verts: torch.Tensor
    transforms: torch.Tensor


class BodyModel:
    """The interface every body model fills in.

    Attributes:
        rest_verts: (V, 3) rest-pose vertices of the chosen shape (metres, y up, facing +z).
        faces: (F, 3) int64 triangles.
        skin_idx: (V, K) int64 bone indices; skin_w: (V, K) weights, rows summing to 1.
        bone_labels: list of J names; parents: (J,) int64 parent index (-1 for the root).
        rest_bone_heads: (J, 3) bone heads (joints) at rest.
    """

    rest_verts: torch.Tensor
    faces: torch.Tensor
    skin_idx: torch.Tensor
    skin_w: torch.Tensor
    bone_labels: list
    parents: torch.Tensor
    rest_bone_heads: torch.Tensor

    @property
    def n_bones(self) -> int:
        return len(self.bone_labels)

    def bone_transforms(self, poses: torch.Tensor, Rh=None, Th=None) -> torch.Tensor:
        """Forward kinematics: poses (B, J, 3) axis-angle -> (B, J, 4, 4) rest -> posed transforms.

        Each bone rotates its subtree by its rotation (world-aligned axes) about its rest head h:
        T_c = T_parent [D_c | h_c - D_c h_c]; zero poses give identities (the rest mesh). Rh, Th: (B, 3) or None,
        a global rotation about the origin and translation applied last.
        """
        poses = torch.as_tensor(poses, dtype=self.rest_verts.dtype)
        B, J = poses.shape[:2]
        D = axis_angle_to_matrix(poses)
        h = self.rest_bone_heads.to(poses.dtype)
        local = rigid(D, h - (D @ h[..., None]).squeeze(-1))
        out = [None] * J
        for c in self._topo_order():
            p = int(self.parents[c])
            out[c] = local[:, c] if p < 0 else out[p] @ local[:, c]
        return self._apply_global(torch.stack(out, 1), Rh, Th)

    def _topo_order(self):
        if getattr(self, "_order", None) is None:
            order, seen = [], set()
            while len(order) < len(self.parents):
                for c, p in enumerate(self.parents.tolist()):
                    if c not in seen and (p < 0 or p in seen):
                        order.append(c)
                        seen.add(c)
            self._order = order
        return self._order

    def check_poses(self, poses) -> None:
        poses = torch.as_tensor(poses)
        if poses.dim() < 2 or poses.shape[-2:] != (self.n_bones, 3):
            raise ValueError(f"poses must be (..., {self.n_bones}, 3) for this body's {self.n_bones} bones, "
                             f"got {tuple(poses.shape)}")

    def pose(self, poses: torch.Tensor, Rh=None, Th=None) -> Posed:
        """Pose the rest mesh. poses: (B, J, 3) or (J, 3); Rh, Th: (B, 3) or (3,). Returns ``Posed``."""
        self.check_poses(poses)
        poses = torch.as_tensor(poses, dtype=self.rest_verts.dtype)
        if poses.dim() == 2:
            poses = poses[None]
        T = self.bone_transforms(poses, Rh, Th)
        return Posed(lbs(self.rest_verts, self.skin_idx, self.skin_w, T), T)

    def _apply_global(self, T: torch.Tensor, Rh, Th) -> torch.Tensor:
        B, dt = T.shape[0], T.dtype
        G = torch.eye(4, dtype=dt).repeat(B, 1, 1)
        if Rh is not None:
            G[:, :3, :3] = axis_angle_to_matrix(torch.as_tensor(Rh, dtype=dt).reshape(-1, 3)).expand(B, 3, 3)
        if Th is not None:
            G[:, :3, 3] = torch.as_tensor(Th, dtype=dt).reshape(-1, 3).expand(B, 3)
        return G[:, None] @ T

    def skin_weights_for(self, points: torch.Tensor, k: int = 8):
        """Skinning weights for points near the rest mesh (garments, hair): an inverse-distance blend of the k
        nearest rest vertices' weights. points (N, 3) -> (idx (N, K'), w (N, K')) over at most 8 bones."""
        d = torch.cdist(points, self.rest_verts)
        dist, nn = d.topk(k, largest=False)
        iw = 1.0 / (dist + 1e-3)
        iw = iw / iw.sum(1, keepdim=True)
        dense = torch.zeros(len(points), self.n_bones, dtype=points.dtype)
        for j in range(k):
            dense.scatter_add_(1, self.skin_idx[nn[:, j]], self.skin_w[nn[:, j]] * iw[:, j:j + 1])
        w, idx = dense.topk(8, dim=1)
        return idx, w / w.sum(1, keepdim=True)


class AnnyBody(BodyModel):
    """Anny (MakeHuman-based, CC0 assets) with fixed phenotype parameters.

    Args:
        phenotype: dict of anny phenotype values in [0, 1] (gender, age, muscle, weight, height, proportions);
            missing keys take anny's default 0.5.
        dtype: torch dtype of everything returned.
    """

    def __init__(self, phenotype: dict | None = None, dtype=torch.float32):
        model = _anny_model()
        self.model = model
        self.phenotype = {k: float(v) for k, v in (phenotype or {}).items()}
        unknown = set(self.phenotype) - set(model.phenotype_labels)
        if unknown:
            raise ValueError(f"unknown anny phenotype keys {sorted(unknown)}; known: {list(model.phenotype_labels)}")
        with torch.no_grad():
            pheno = {k: torch.tensor([v], dtype=torch.float64) for k, v in self.phenotype.items()}
            out = model(phenotype_kwargs=pheno or None)
        # anny is z-up and faces -y; tide's avatars are y-up facing +z: rotate -90 deg about x
        self._to_world = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=torch.float64)
        self._rest_bone_poses = out["rest_bone_poses"][0].double()           # (J, 4, 4), anny frame
        rest = out["rest_vertices"][0].double()
        self.dtype = dtype
        self.rest_verts = (rest @ self._to_world.T).to(dtype)
        self.faces = model.get_triangular_faces().long().cpu()
        self.skin_idx = model.vertex_bone_indices.long().cpu()
        w = model.vertex_bone_weights.double().cpu()
        self.skin_w = (w / w.sum(1, keepdim=True)).to(dtype)
        self.bone_labels = list(model.bone_labels)
        self.parents = torch.as_tensor([int(p) for p in model.bone_parents])
        self.rest_bone_heads = (self._rest_bone_poses[:, :3, 3] @ self._to_world.T).to(dtype)
        self.uvs = None

    def anny_vertices(self, poses: torch.Tensor) -> torch.Tensor:
        """Anny's own forward and skinning for the same bone transforms (passed in anny's 'world'
        parameterisation, posed bone poses W_c = T_c P_c), in tide's frame: (B, V, 3). For tests."""
        C = rigid(self._to_world, torch.zeros(3, dtype=torch.float64))
        T = self.bone_transforms(poses).double()
        T_anny = C.transpose(-1, -2) @ T @ C
        W = T_anny @ self._rest_bone_poses
        pheno = {k: torch.tensor([v], dtype=torch.float64) for k, v in self.phenotype.items()}
        with torch.no_grad():
            out = self.model(pose_parameters=W, phenotype_kwargs=pheno or None, pose_parameterization="world")
        return (out["vertices"].double() @ self._to_world.T).to(self.dtype)


_ANNY = {}


def _anny_model():
    """One anny.Anny() per process, in float64 (its build is cached on disk under ~/.cache/anny)."""
    if "m" not in _ANNY:
        try:
            import anny
        except ImportError as e:  # pragma: no cover - anny is a dependency
            raise ImportError("the avatar task needs the 'anny' body model: pip install anny") from e
        _ANNY["m"] = anny.Anny().to(torch.float64)
    return _ANNY["m"]


class SMPLXBody(BodyModel):  # pragma: no cover - needs licensed SMPL files, not available here
    """SMPL / SMPL-X through the ``smplx`` package (``pip install smplx``; model files from smpl.is.tue.mpg.de).

    ``SMPLXBody("/path/to/models", model_type="smpl", betas=...)``: the rest mesh is the template plus the shape
    blend shapes (no pose correctives, so posing is plain LBS like anny's); ``poses`` are SMPL's per-joint
    axis-angles (24 for SMPL), ``Rh``/``Th`` the global rotation and translation as in ZJU-MoCap's files.
    """

    def __init__(self, model_path: str, model_type: str = "smpl", gender: str = "neutral", betas=None,
                 dtype=torch.float32):
        try:
            import smplx
        except ImportError as e:
            raise ImportError("SMPLXBody needs the 'smplx' package and SMPL model files") from e
        m = smplx.create(model_path, model_type=model_type, gender=gender)
        betas = torch.zeros(1, m.num_betas) if betas is None else torch.as_tensor(betas).reshape(1, -1)
        v = m.v_template + torch.einsum("vcl,bl->bvc", m.shapedirs[..., :betas.shape[1]], betas)[0]
        self.rest_verts = v.to(dtype)
        self.faces = torch.as_tensor(np.asarray(m.faces, dtype=np.int64))
        w, idx = m.lbs_weights.topk(4, dim=1)
        self.skin_idx, self.skin_w = idx, (w / w.sum(1, keepdim=True)).to(dtype)
        self.parents = m.parents.long().clone()
        self.parents[0] = -1
        self.bone_labels = [f"joint{j}" for j in range(len(self.parents))]
        self.rest_bone_heads = (m.J_regressor @ v).to(dtype)
        self.dtype = dtype


def load_body(kind: str = "anny", phenotype: dict | None = None, **kw) -> BodyModel:
    """A body model by name: "anny" (default) or "smpl"/"smplx" (needs model_path=...)."""
    if kind == "anny":
        return AnnyBody(phenotype)
    if kind in ("smpl", "smplx"):
        return SMPLXBody(model_type=kind, **kw)
    raise ValueError(f"unknown body model {kind!r}: use 'anny', 'smpl' or 'smplx'")


# ---- pose library ------------------------------------------------------------------------------------------------
# Each motion maps a phase p in [0, 1) to {bone label: axis-angle (x, y, z) in world-aligned axes, radians}.
# Axes (tide's frame: y up, the body faces +z, its left is +x): a negative x rotation swings a hanging limb
# forward (hip and shoulder flexion), a positive one bends the knee back; spine +x leans forward; y twists.
# Anny rests in an A-pose: z = -0.7 (left) / +0.7 (right) on upperarm01 brings the arms down to the sides.
def _walk(p, amp=0.5):
    s = math.sin(2 * math.pi * p)
    c = math.cos(2 * math.pi * p)
    return {"upperleg01.L": (-amp * s, 0, 0), "upperleg01.R": (amp * s, 0, 0),
            "lowerleg01.L": (1.1 * amp * max(0.0, c), 0, 0), "lowerleg01.R": (1.1 * amp * max(0.0, -c), 0, 0),
            "upperarm01.L": (0.6 * amp * s, 0, -0.7), "upperarm01.R": (-0.6 * amp * s, 0, 0.7),
            "lowerarm01.L": (-0.3, 0, 0), "lowerarm01.R": (-0.3, 0, 0),
            "spine03": (0, 0.15 * s, 0)}


def _run(p):
    d = _walk(p, amp=0.8)
    d["lowerarm01.L"] = (-1.2, 0, 0)
    d["lowerarm01.R"] = (-1.2, 0, 0)
    d["spine03"] = (0.2, 0.2 * math.sin(2 * math.pi * p), 0)
    return d


def _wave(p):
    s = math.sin(4 * math.pi * p)
    return {"upperarm01.R": (0, 0, -1.9), "lowerarm01.R": (0, 0, -0.4 + 0.5 * s), "upperarm01.L": (0, 0, -0.7),
            "spine03": (0, 0.1 * s, 0.05)}


def _squat(p):
    d = 0.5 - 0.5 * math.cos(2 * math.pi * p)
    return {"upperleg01.L": (-1.3 * d, 0, 0), "upperleg01.R": (-1.3 * d, 0, 0),
            "lowerleg01.L": (2.0 * d, 0, 0), "lowerleg01.R": (2.0 * d, 0, 0),
            "foot.L": (-0.7 * d, 0, 0), "foot.R": (-0.7 * d, 0, 0), "spine03": (0.4 * d, 0, 0),
            "upperarm01.L": (-1.2 * d, 0, -0.7), "upperarm01.R": (-1.2 * d, 0, 0.7)}


def _turn(p):
    a = 0.7 * math.sin(2 * math.pi * p)
    return {"spine03": (0, 0.5 * a, 0), "spine01": (0, 0.3 * a, 0), "neck01": (0, 0.4 * a, 0),
            "upperarm01.L": (0, 0.3 * a, -0.7), "upperarm01.R": (0, 0.3 * a, 0.7)}


POSES = {"walk": _walk, "run": _run, "wave": _wave, "squat": _squat, "turn": _turn}
"""The pose library: motion name -> phase -> per-bone rotations."""


def motion(body: BodyModel, name: str, n_frames: int) -> np.ndarray:
    """(n_frames, J, 3) axis-angle poses of one cycle of ``name`` (see ``POSES``) on ``body``'s rig."""
    if name not in POSES:
        raise ValueError(f"unknown motion {name!r}; choose from {sorted(POSES)}")
    out = np.zeros((n_frames, body.n_bones, 3))
    index = {b: i for i, b in enumerate(body.bone_labels)}
    for f in range(n_frames):
        for bone, aa in POSES[name](f / n_frames).items():
            if bone in index:
                out[f, index[bone]] = aa
    return out
