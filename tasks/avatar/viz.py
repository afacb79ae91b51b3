"""Labelled comparison panels for the avatar videos and PNGs."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["panel"]


def panel(images: list, labels: list, caption: str = "", scale: int = 2) -> np.ndarray:
    """Side-by-side (H, W, 3) images in [0, 1] (tensors or arrays), upscaled, each with a label, plus a caption
    line (e.g. the frame's motion and time stamp). Returns (H', W', 3) uint8."""
    from PIL import Image, ImageDraw

    tiles = []
    for img in images:
        a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        tiles.append(np.kron(a, np.ones((scale, scale, 1), dtype=np.uint8)))
    strip = np.concatenate(tiles, 1)
    H = strip.shape[0]
    canvas = np.zeros((H + 28, strip.shape[1], 3), dtype=np.uint8)
    canvas[14:14 + H] = strip
    im = Image.fromarray(canvas)
    d = ImageDraw.Draw(im)
    w = tiles[0].shape[1]
    for k, lab in enumerate(labels):
        d.text((k * w + 4, 1), lab, fill=(255, 255, 255))
    d.text((4, H + 15), caption, fill=(200, 200, 200))
    return np.asarray(im)
