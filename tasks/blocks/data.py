"""Posed photos in the formats users have: Blender / nerfstudio ``transforms.json`` and DTU / IDR ``cameras.npz``.

Both readers return ``Views``: images as a float tensor and tide ``Camera`` s in the OpenCV convention (x right,
y down, z forward), in the input's own world frame. Anything wrong with the folder raises ``ConfigError`` with one
line that names the file and what to do, before anything is written.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import ConfigError
from engine.render import Camera

__all__ = ["Views", "load_views", "load_transforms", "load_dtu", "load_gt_points", "GL_TO_CV", "rigid_check",
           "decompose_projection"]

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying an OpenGL camera-to-world matrix by this gives the OpenCV one (camera y and z flipped)."""

_EXTS = ("", ".png", ".PNG", ".jpg", ".jpeg", ".JPG")


@dataclass
class Views:
    """N posed images of one scene.

    images: (N, H, W, 3) float in [0, 1] (RGBA inputs composited over white).
    masks: (N, H, W) float in [0, 1] from the alpha channel, or None when the images have none.
    cameras: batch-N ``Camera`` (OpenCV convention, world frame of the input).
    names: N image file names.
    """

    images: torch.Tensor
    masks: torch.Tensor | None
    cameras: Camera
    names: list

    @property
    def count(self) -> int:
        return self.images.shape[0]


def rigid_check(M: np.ndarray, what: str, tol: float = 1e-3) -> None:
    """Raise ``ConfigError`` unless the 4x4 (or 3x4) ``M`` is a rotation plus translation (finite, orthonormal,
    det +1 within ``tol``)."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape not in ((4, 4), (3, 4)) or not np.isfinite(M).all():
        raise ConfigError(f"{what} must be a finite 4x4 matrix, got shape {M.shape}")
    R = M[:3, :3]
    err = np.abs(R.T @ R - np.eye(3)).max()
    if err > tol or abs(np.linalg.det(R) - 1.0) > tol or (M.shape == (4, 4) and np.abs(M[3] - [0, 0, 0, 1]).max()
                                                          > tol):
        raise ConfigError(f"{what} is not a rigid transform (|R^T R - I| = {err:.2g}, det {np.linalg.det(R):.3g}); "
                          "camera-to-world matrices must be a rotation and a translation")


def _read_image(path: Path, size: tuple | None, resolution: int):
    """(H, W, 4) float32 in [0, 1] (alpha 1 when the file has none), resized so its longest side is
    ``resolution`` (0 keeps it). ``size`` (W, H) checks the native size."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            W, H = im.size
            if size is not None and (W, H) != tuple(size):
                raise ConfigError(f"image {path} is {W}x{H} but the cameras say {size[0]}x{size[1]}; all frames "
                                  "must have the size of the intrinsics")
            im = im.convert("RGBA")
            if resolution and max(W, H) != resolution:
                s = resolution / max(W, H)
                im = im.resize((max(1, round(W * s)), max(1, round(H * s))), Image.BOX)
            return np.asarray(im, dtype=np.float32) / 255.0, (W, H)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot read image {path}: {exc}") from None


def _find_image(folder: Path, rel: str) -> Path:
    base = folder / rel
    for ext in _EXTS:
        p = base.with_name(base.name + ext)
        if p.is_file():
            return p
    raise ConfigError(f"image {rel!r} listed in {folder} is missing (tried {', '.join(e or 'as given' for e in _EXTS)})")


def _finish(rgba: list, names: list, R, t, fx, fy, cx, cy, native: tuple, dtype) -> Views:
    """Stack images, scale intrinsics from the native to the loaded size and build the Camera batch."""
    if len(rgba) < 2:
        raise ConfigError(f"need at least 2 posed views, found {len(rgba)}")
    shapes = {a.shape for a in rgba}
    if len(shapes) != 1:
        raise ConfigError(f"images have different sizes {sorted(shapes)}; all frames must have one size")
    arr = np.stack(rgba)                                                   # (N, H, W, 4)
    H, W = arr.shape[1:3]
    sx, sy = W / native[0], H / native[1]
    a = arr[..., 3:]
    rgb = arr[..., :3] * a + (1.0 - a)                                      # composite over white
    has_alpha = bool((a < 1.0).any())
    cams = Camera.from_Rt(torch.as_tensor(np.stack(R), dtype=dtype), torch.as_tensor(np.stack(t), dtype=dtype),
                          width=W, height=H, fx=torch.as_tensor(np.asarray(fx) * sx, dtype=dtype),
                          fy=torch.as_tensor(np.asarray(fy) * sy, dtype=dtype),
                          cx=torch.as_tensor(np.asarray(cx) * sx, dtype=dtype),
                          cy=torch.as_tensor(np.asarray(cy) * sy, dtype=dtype))
    masks = torch.as_tensor(a[..., 0], dtype=dtype) if has_alpha else None
    return Views(torch.as_tensor(rgb, dtype=dtype), masks, cams, names)


def load_transforms(folder, resolution: int = 0, dtype=torch.float32, path: str = "transforms.json") -> Views:
    """Read a Blender / nerfstudio ``transforms.json`` (OpenGL camera-to-world matrices) and its images.

    Intrinsics: ``fl_x, fl_y, cx, cy`` (top level or per frame), else ``camera_angle_x`` (horizontal field of
    view, radians; principal point at the centre). ``w, h`` or the first image give the native size. Images are
    resized so their longest side is ``resolution`` pixels (0 keeps them), intrinsics scaled to match.
    """
    folder = Path(folder)
    f = folder / path
    try:
        meta = json.loads(f.read_text())
        frames = meta["frames"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read {f}: {type(exc).__name__}: {exc}") from None
    if not isinstance(frames, list) or not frames:
        raise ConfigError(f"{f} lists no frames")
    rgba, names, Rs, ts, fxs, fys, cxs, cys = [], [], [], [], [], [], [], []
    native = None
    for i, fr in enumerate(frames):
        try:
            rel = fr["file_path"]
            c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{f}: frame {i} has no usable file_path / transform_matrix ({exc})") from None
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0, 0, 0, 1]])
        rigid_check(c2w, f"{f}: frame {i} transform_matrix")
        img_path = _find_image(folder, rel)
        get = lambda k: fr.get(k, meta.get(k))  # noqa: E731 - per-frame intrinsics override the shared ones
        size = (int(get("w")), int(get("h"))) if get("w") is not None and get("h") is not None else native
        img, nat = _read_image(img_path, size, resolution)
        native = native or nat
        if nat != native:
            raise ConfigError(f"image {img_path} is {nat[0]}x{nat[1]} but the others are {native[0]}x{native[1]}")
        W, H = nat
        if get("fl_x") is not None:
            fx = float(get("fl_x"))
            fy = float(get("fl_y") if get("fl_y") is not None else fx)
        elif get("camera_angle_x") is not None:
            fx = fy = 0.5 * W / math.tan(0.5 * float(get("camera_angle_x")))
        else:
            raise ConfigError(f"{f}: no intrinsics (need camera_angle_x or fl_x)")
        cx = float(get("cx")) if get("cx") is not None else W / 2
        cy = float(get("cy")) if get("cy") is not None else H / 2
        w2c = np.linalg.inv(c2w @ GL_TO_CV)
        rgba.append(img)
        names.append(img_path.name)
        Rs.append(w2c[:3, :3])
        ts.append(w2c[:3, 3])
        fxs.append(fx), fys.append(fy), cxs.append(cx), cys.append(cy)
    return _finish(rgba, names, Rs, ts, fxs, fys, cxs, cys, native, dtype)


def decompose_projection(P: np.ndarray):
    """Split a 3x4 projection ``P ~ K [R | t]`` into K (3x3, positive diagonal, K[2,2] = 1), R (a rotation) and
    t, by an RQ decomposition of its left 3x3 block (the scale of P is arbitrary)."""
    import scipy.linalg

    P = np.asarray(P, dtype=np.float64)[:3, :4]
    M = P[:, :3]
    if not np.isfinite(P).all() or abs(np.linalg.det(M)) < 1e-12 * max(np.abs(M).max(), 1e-300) ** 3:
        raise ConfigError("projection matrix is singular or not finite; it is not K [R | t]")
    K, R = scipy.linalg.rq(M)
    D = np.diag(np.sign(np.diag(K)))                                      # K with a positive diagonal
    K, R = K @ D, D @ R
    scale = K[2, 2]
    t = np.linalg.solve(K, P[:, 3])
    if np.linalg.det(R) < 0:                                              # P given up to a negative scale
        R, t = -R, -t
    return K / scale, R, t


def load_dtu(folder, resolution: int = 0, dtype=torch.float32) -> Views:
    """Read a DTU / IDR folder: ``cameras.npz`` with ``world_mat_i`` (= K [R | t], 3x4 or 4x4, projecting the
    original world frame) and optional ``scale_mat_i``, and images ``image/*.png`` in sorted order.

    The cameras are returned in the frame ``world_mat`` projects, the scan's own frame (``scale_mat`` only
    normalises it into a unit sphere, which tide estimates itself).
    """
    folder = Path(folder)
    f = folder / "cameras.npz"
    try:
        npz = dict(np.load(f))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {f}: {exc}") from None
    imgs = sorted(p for p in (folder / "image").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not imgs:
        raise ConfigError(f"{folder / 'image'} has no images (.png/.jpg)")
    rgba, names, Rs, ts, fxs, fys, cxs, cys = [], [], [], [], [], [], [], []
    native = None
    for i, p in enumerate(imgs):
        key = f"world_mat_{i}"
        if key not in npz:
            raise ConfigError(f"{f} has no {key} for image {p.name} ({len(imgs)} images)")
        try:
            K, R, t = decompose_projection(npz[key])
        except ConfigError as exc:
            raise ConfigError(f"{f}: {key}: {exc}") from None
        img, nat = _read_image(p, native, resolution)
        native = native or nat
        rgba.append(img)
        names.append(p.name)
        Rs.append(R), ts.append(t)
        fxs.append(K[0, 0]), fys.append(K[1, 1]), cxs.append(K[0, 2]), cys.append(K[1, 2])
    return _finish(rgba, names, Rs, ts, fxs, fys, cxs, cys, native, dtype)


def load_views(folder, resolution: int = 0, dtype=torch.float32) -> Views:
    """Read whichever format the folder holds (``transforms.json`` first, then ``cameras.npz``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"data folder {folder} does not exist")
    if (folder / "transforms.json").is_file():
        return load_transforms(folder, resolution, dtype)
    if (folder / "cameras.npz").is_file():
        return load_dtu(folder, resolution, dtype)
    raise ConfigError(f"{folder} has neither transforms.json (Blender/nerfstudio) nor cameras.npz (DTU/IDR)")


def load_gt_points(folder, n: int = 20000, seed: int = 0):
    """Ground-truth surface points (M, 3) in the world frame from ``gt_points.npy`` or ``gt.obj`` (sampled), or
    None when the folder has neither."""
    folder = Path(folder)
    if (folder / "gt_points.npy").is_file():
        pts = np.load(folder / "gt_points.npy")
        if pts.ndim != 2 or pts.shape[1] != 3 or not np.isfinite(pts).all():
            raise ConfigError(f"{folder / 'gt_points.npy'} must be finite (M, 3) points, got {pts.shape}")
        return pts.astype(np.float64)
    if (folder / "gt.obj").is_file():
        from engine.io import load_mesh

        mesh = load_mesh(folder / "gt.obj")
        pts, _ = mesh.sample(n, return_index=True, seed=seed)
        return np.asarray(pts, dtype=np.float64)
    return None
