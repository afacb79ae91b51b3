"""What every avatar shares: the loaded multi-view sequence as tensors, the train / novel-view / novel-pose splits,
image metrics inside each frame's bounding box (as 3D²-Actor reports them) and the SSIM loss."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine import backend

from .body import AnnyBody, BodyModel
from .data import Dataset, DatasetError, generate, part_labels, read_dataset

ANNY_BONES = 104
"""Bones of anny's default rig (the avatars' body model)."""

__all__ = ["ANNY_BONES", "Sequence", "load_sequence", "ssim", "psnr", "bbox", "evaluate", "gaussian_window"]


@dataclass
class Sequence:
    """A dataset on tide's device and dtype, with the body posed for every frame.

    images: (C, N, H, W, 3); masks: (C, N, H, W); transforms: (N, J, 4, 4) bone transforms per frame;
    verts: (N, V, 3) posed body vertices; train_cams / test_cams: camera indices (novel views = test_cams);
    train_frames / test_frames: frame indices (novel poses = test_frames); parts: (V,) part index per vertex;
    cloth: (C, N, H, W) clothing segmentation or None.
    """

    ds: Dataset
    body: BodyModel
    images: torch.Tensor
    masks: torch.Tensor
    transforms: torch.Tensor
    verts: torch.Tensor
    train_cams: list
    test_cams: list
    train_frames: list
    test_frames: list
    parts: torch.Tensor
    cloth: torch.Tensor | None = None
    """(C, N, H, W) clothing segmentation (garment and hair pixels) where the dataset has one, else None."""

    def cameras(self, idx):
        return self.ds.cameras(idx)

    @property
    def pose_vectors(self) -> torch.Tensor:
        """(N, J * 3) per-frame pose parameters (the conditioning of the pose-dependent networks)."""
        return torch.as_tensor(self.ds.poses.reshape(len(self.ds.poses), -1), dtype=self.verts.dtype)


def load_sequence(data: str = "", size: int = 128, cams: int = 10, frames_per_motion: int = 6,
                  holdout_cams: int = 3) -> Sequence:
    """Read ``data`` (a dataset folder) or, when empty, generate/reuse the cached clothed-character sequence.

    The last ``holdout_cams`` cameras of every ``cams // holdout_cams``-th slot are kept for novel views.
    """
    root = Path(data) if data else generate(size=size, n_cams=cams, frames_per_motion=frames_per_motion)
    if data and not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    dt, dev = backend.torch_dtype(), backend.torch_device()
    # anny's default rig has 104 bones: checked before anny loads (and Warp prints its banner)
    probe = read_dataset(root, n_bones=ANNY_BONES)
    body = AnnyBody(probe.phenotype if set(probe.phenotype) != {"default"} else None, dtype=dt)
    if probe.poses.shape[1] != body.n_bones:
        raise DatasetError(f"{root / 'models'}: poses have {probe.poses.shape[1]} joints, the anny body has "
                           f"{body.n_bones}")
    ds = probe
    C = len(ds.cam_names)
    if C < 2:
        raise DatasetError(f"{root}: needs at least 2 cameras (train and novel view), found {C}")
    holdout = min(max(holdout_cams, 1), C - 1)
    step = C / holdout
    test_cams = sorted({int(round(step * (k + 0.5))) % C for k in range(holdout)})
    train_cams = [c for c in range(C) if c not in test_cams]
    T = body.bone_transforms(torch.as_tensor(ds.poses, dtype=dt), torch.as_tensor(ds.Rh, dtype=dt),
                             torch.as_tensor(ds.Th, dtype=dt))
    from .body import lbs

    verts = torch.cat([lbs(body.rest_verts, body.skin_idx, body.skin_w, T[i:i + 8]) for i in range(0, len(T), 8)])
    train = [int(i) for i in ds.split.get("train", [])] or list(range(len(ds.poses)))
    test = [int(i) for i in ds.split.get("test", [])]
    return Sequence(ds, body, torch.as_tensor(ds.images, dtype=dt, device=dev),
                    torch.as_tensor(ds.masks, dtype=dt, device=dev), T.to(dev), verts.to(dev), train_cams, test_cams,
                    train, test, torch.as_tensor(part_labels(body)),
                    None if ds.cloth is None else torch.as_tensor(ds.cloth, dtype=dt, device=dev))


# ---- metrics ------------------------------------------------------------------------------------------------------
def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1) of images
    (..., H, W, C), valid region only (as skimage's ``gaussian_weights=True``). Differentiable."""
    x = a.reshape(-1, *a.shape[-3:]).permute(0, 3, 1, 2)
    y = b.reshape(-1, *b.shape[-3:]).permute(0, 3, 1, 2)
    Cn = x.shape[1]
    g = gaussian_window(window, dtype=x.dtype).to(x.device)
    kv, kh = g.view(1, 1, -1, 1).expand(Cn, 1, window, 1), g.view(1, 1, 1, -1).expand(Cn, 1, 1, window)

    def f(t):  # the 2D Gaussian window as two 1D passes (separable: 2 x 11 taps instead of 121)
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(t, kv, groups=Cn), kh, groups=Cn)

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def bbox(mask: torch.Tensor, pad: int = 2, min_size: int = 11):
    """(y0, y1, x0, x1) of a (H, W) mask's foreground, padded and at least ``min_size`` (the SSIM window)."""
    H, W = mask.shape
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if len(ys) == 0:
        return 0, H, 0, W
    y0, y1 = int(ys.min()) - pad, int(ys.max()) + 1 + pad
    x0, x1 = int(xs.min()) - pad, int(xs.max()) + 1 + pad
    y0, y1 = _grow(y0, y1, H, min_size)
    x0, x1 = _grow(x0, x1, W, min_size)
    return y0, y1, x0, x1


def _grow(lo, hi, n, m):
    lo, hi = max(lo, 0), min(hi, n)
    while hi - lo < m:
        lo, hi = max(lo - 1, 0), min(hi + 1, n)
    return lo, hi


@torch.no_grad()
def evaluate(seq: Sequence, render, cams: list, frames: list) -> dict:
    """PSNR / SSIM inside each image's bounding box (from the ground-truth mask), averaged over images.

    render: ``(frame, cam indices) -> (len(cams), H, W, 3)`` predicted images.
    """
    ps, ss = [], []
    for f in frames:
        pred = render(f, cams).clamp(0, 1)
        for k, c in enumerate(cams):
            y0, y1, x0, x1 = bbox(seq.masks[c, f])
            p, t = pred[k, y0:y1, x0:x1], seq.images[c, f, y0:y1, x0:x1]
            ps.append(psnr(p, t))
            ss.append(float(ssim(p, t)))
    return {"psnr": float(np.mean(ps)) if ps else None, "ssim": float(np.mean(ss)) if ss else None,
            "images": len(ps)}
