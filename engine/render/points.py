"""Particle renderer: shaded sphere impostors with a z-buffer, for MPM videos without Vulkan.

Works on the CPU and GPU through Taichi. Not differentiable (it is for looking, not for losses).
"""

import numpy as np
import taichi as ti

from .. import backend
from ..launch import lean

__all__ = ["render_points", "default_view"]


@ti.func
def _footprint(cx, cy, r, W, H):
    """Pixel box [x0, x1] x [y0, y1] covered by a disc of radius r (pixels) at (cx, cy)."""
    x0 = ti.max(0, ti.cast(ti.floor(cx - r), ti.i32))
    x1 = ti.min(W - 1, ti.cast(ti.ceil(cx + r), ti.i32))
    y0 = ti.max(0, ti.cast(ti.floor(cy - r), ti.i32))
    y1 = ti.min(H - 1, ti.cast(ti.ceil(cy + r), ti.i32))
    return x0, x1, y0, y1


@lean
@ti.kernel
def _splat(px: ti.types.ndarray(), pz: ti.types.ndarray(), rad: ti.types.ndarray(), col: ti.types.ndarray(),
           depth: ti.types.ndarray(), img: ti.types.ndarray(), light: ti.types.ndarray(), shade_pass: ti.i32):
    """Pass 0 fills the z-buffer with each impostor's front surface; pass 1 shades the pixels that won.

    px: (N, 2) pixel centres, pz: (N,) depth (smaller = nearer), rad: (N,) pixel radii, col: (N, 3).
    """
    H, W = depth.shape[0], depth.shape[1]
    for n in range(px.shape[0]):
        r = rad[n]
        cx, cy = px[n, 0], px[n, 1]
        x0, x1, y0, y1 = _footprint(cx, cy, r, W, H)
        for y, x in ti.ndrange((y0, y1 + 1), (x0, x1 + 1)):
            dx = (x + 0.5 - cx) / r
            dy = (y + 0.5 - cy) / r
            d2 = dx * dx + dy * dy
            if d2 <= 1.0:
                nz = ti.sqrt(1.0 - d2)
                # the z-buffer is f32: round z the same way in both passes, whatever the default precision
                z = ti.cast(pz[n] - nz * r * 1e-4, ti.f32)
                if shade_pass == 0:
                    ti.atomic_min(depth[y, x], z)
                elif z <= depth[y, x]:
                    # Lambert on the impostor's normal (dx, -dy, nz) plus ambient
                    lam = ti.max(0.0, dx * light[0] - dy * light[1] + nz * light[2])
                    shade = 0.35 + 0.65 * lam
                    for c in ti.static(range(3)):
                        img[y, x, c] = col[n, c] * shade


def default_view(dim: int):
    """A camera dict for ``render_points``: 2D maps [0,1]² to the image; 3D looks at the unit cube's centre."""
    if dim == 2:
        return {"lo": (0.0, 0.0), "hi": (1.0, 1.0)}
    return {"eye": (0.5, 0.45, 2.2), "target": (0.5, 0.3, 0.5), "fov": 40.0}


def _project(points: np.ndarray, width: int, height: int, camera: dict):
    if points.shape[1] == 2:
        lo = np.asarray(camera.get("lo", (0.0, 0.0)))
        hi = np.asarray(camera.get("hi", (1.0, 1.0)))
        scale = min(width / (hi[0] - lo[0]), height / (hi[1] - lo[1]))
        px = np.empty_like(points)
        px[:, 0] = (points[:, 0] - lo[0]) * scale
        px[:, 1] = height - (points[:, 1] - lo[1]) * scale
        return px, np.zeros(len(points)), np.full(len(points), scale)
    eye = np.asarray(camera["eye"], float)
    target = np.asarray(camera["target"], float)
    up = np.asarray(camera.get("up", (0.0, 1.0, 0.0)), float)
    f = target - eye
    f /= np.linalg.norm(f)
    s = np.cross(f, up)
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    rel = points - eye
    xc, yc, zc = rel @ s, rel @ u, rel @ f
    focal = 0.5 * height / np.tan(np.radians(camera.get("fov", 40.0)) / 2)
    zc = np.maximum(zc, 1e-6)
    px = np.stack([width / 2 + focal * xc / zc, height / 2 - focal * yc / zc], axis=1)
    return px, zc, focal / zc


def render_points(points, colors=None, width: int = 512, height: int = 512, radius: float = 0.004,
                  camera: dict | None = None, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Render particles as shaded spheres.

    Args:
        points: (N, 2) or (N, 3) positions in world units (numpy or torch).
        colors: (N, 3) RGB in [0, 1], or one (3,) colour; default a blue.
        width, height: image size in pixels.
        radius: sphere radius in world units.
        camera: 2D ``{"lo": (x, y), "hi": (x, y)}`` world window; 3D ``{"eye", "target", "up", "fov"}`` (degrees).
            Defaults to ``default_view(dim)``.
        background: RGB in [0, 1].

    Returns:
        (height, width, 3) uint8 image.
    """
    backend.ensure()
    pts = _to_numpy(points).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be (N, 2) or (N, 3), got {pts.shape}")
    n = len(pts)
    cols = np.broadcast_to(np.asarray(_to_numpy(colors) if colors is not None else (0.25, 0.45, 0.85), float),
                           (n, 3)).astype(np.float32)
    camera = camera or default_view(pts.shape[1])
    px, z, pix_per_unit = _project(pts, width, height, camera)
    keep = np.isfinite(px).all(axis=1) & (z >= 0)
    img = np.empty((height, width, 3), np.float32)
    img[:] = np.asarray(background, np.float32)
    if keep.any():
        depth = np.full((height, width), np.inf, np.float32)
        rad = np.maximum(radius * pix_per_unit[keep], 0.75).astype(np.float32)
        light = np.array([-0.4, 0.6, 0.7], np.float32)
        light /= np.linalg.norm(light)
        args = (np.ascontiguousarray(px[keep], np.float32), np.ascontiguousarray(z[keep], np.float32), rad,
                np.ascontiguousarray(cols[keep]), depth, img, light)
        _splat(*args, 0)
        _splat(*args, 1)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
