"""Looking at MPM particles: render a state, export it as a coloured point cloud (used by the MPM scenes)."""
from __future__ import annotations

import numpy as np

__all__ = ["render_state", "point_cloud", "camera_for"]


def camera_for(model) -> dict:
    """A camera framing the whole domain: a 2D window, or a 3D view from the front and slightly above."""
    ext = model.domain
    if model.dim == 2:
        return {"lo": (0.0, 0.0), "hi": (float(ext[0]), float(ext[1]))}
    c = ext / 2
    return {"eye": (float(c[0]), float(ext[1] * 0.7), float(c[2] + 2.1 * ext.max())),
            "target": (float(c[0]), float(ext[1] * 0.25), float(c[2])), "fov": 40.0}


def render_state(model, state, width: int = 512, height: int = 512, camera: dict | None = None) -> np.ndarray:
    """(height, width, 3) uint8 image of the particles in ``state`` with the model's body colours."""
    from ..render.points import render_points

    x = state.x.detach().cpu().numpy()
    radius = 0.5 * model.dx * (1.2 if model.dim == 2 else 1.0) * (float(model.vol[0]) ** (1 / model.dim) / model.dx)
    return render_points(x, model.colors, width=width, height=height, radius=max(radius, 0.3 * model.dx),
                         camera=camera or camera_for(model))


def point_cloud(model, state):
    """An ``engine.io.PointCloud`` of the particles (2D states get z = 0)."""
    from ..io import PointCloud

    x = state.x.detach().cpu().numpy()
    if x.shape[1] == 2:
        x = np.concatenate([x, np.zeros((len(x), 1))], axis=1)
    return PointCloud(points=x, colors=None if model.colors is None else np.clip(model.colors, 0, 1))
