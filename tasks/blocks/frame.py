"""Where the scene is, estimated from the cameras alone (no per-scene hand-tuning, unlike DBW's configs).

* up axis: the mean of the cameras' up vectors (photographers hold cameras level, so their rolls cancel);
* centre: the least-squares point closest to every optical axis (where the cameras look);
* radius: how much of the scene the cameras see: mean distance to the centre times tan(half the narrower field
  of view), i.e. the half-width of the view at the centre.

The fit runs in a normalised frame: centre at the origin, up = +y, radius 1. ``SceneFrame`` converts both ways.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import ConfigError
from engine.render import Camera

__all__ = ["SceneFrame", "estimate_frame", "rotation_to_y"]


def rotation_to_y(up: np.ndarray) -> np.ndarray:
    """(3, 3) rotation taking the unit vector ``up`` to +y (the smallest rotation; a half turn about x for -y)."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    y = np.array([0.0, 1.0, 0.0])
    v = np.cross(up, y)
    c = float(up @ y)
    if c < -1 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


@dataclass
class SceneFrame:
    """A similarity between the input's world frame and the normalised fitting frame.

    ``p_norm = rot @ (p_world - centre) / radius``.

    rot: (3, 3) world-to-normalised rotation (maps the estimated up to +y).
    centre: (3,) scene centre, world units. radius: scene radius, world units. up: (3,) world up (unit).
    """

    rot: np.ndarray
    centre: np.ndarray
    radius: float
    up: np.ndarray

    def to_norm(self, p):
        """(N, 3) world points -> normalised."""
        return (np.asarray(p, dtype=np.float64) - self.centre) @ self.rot.T / self.radius

    def to_world(self, p):
        """(N, 3) normalised points -> world."""
        return np.asarray(p, dtype=np.float64) @ self.rot * self.radius + self.centre

    def cameras_to_norm(self, cams: Camera) -> Camera:
        """The same cameras in the normalised frame (the camera frame is scaled by 1/radius: same pixels)."""
        dt = cams.R.dtype
        rot = torch.as_tensor(self.rot, dtype=dt)
        c = torch.as_tensor(self.centre, dtype=dt)
        R = cams.R @ rot.T
        t = ((cams.R @ c) + cams.t) / self.radius
        return Camera(R, t, cams.fx.clone(), cams.fy.clone(), cams.cx.clone(), cams.cy.clone(), cams.width,
                      cams.height)

    def describe(self) -> str:
        u, c = self.up, self.centre
        return (f"scene frame: up ({u[0]:+.3f}, {u[1]:+.3f}, {u[2]:+.3f}), centre ({c[0]:.3f}, {c[1]:.3f}, "
                f"{c[2]:.3f}), radius {self.radius:.3f}")

    def as_dict(self) -> dict:
        return {"up": self.up.tolist(), "centre": self.centre.tolist(), "radius": float(self.radius),
                "world_to_normalised_rotation": self.rot.tolist()}


def estimate_frame(cams: Camera) -> SceneFrame:
    """Estimate up, centre and radius from a batch of OpenCV cameras (see the module docstring).

    Raises ``ConfigError`` when the optical axes are (nearly) parallel, so no centre can be found.
    """
    R = cams.R.detach().double().cpu().numpy()                 # (N, 3, 3) world-to-camera
    C = cams.center.detach().double().cpu().numpy()            # (N, 3)
    up = -R[:, 1, :].mean(0)                                    # camera -y (OpenCV) in world coordinates
    if np.linalg.norm(up) < 1e-6:
        raise ConfigError("the cameras' up vectors cancel out; cannot estimate the up axis")
    up /= np.linalg.norm(up)
    d = R[:, 2, :]                                              # optical axes (world)
    # min_c sum_i |(I - d_i d_i^T)(c - C_i)|^2  ->  sum_i P_i c = sum_i P_i C_i
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    A, b = P.sum(0), np.einsum("nij,nj->i", P, C)
    if np.linalg.cond(A) > 1e8:
        raise ConfigError("the cameras' optical axes are parallel; cannot locate the scene centre (need views "
                          "from different directions)")
    centre = np.linalg.solve(A, b)
    dist = np.linalg.norm(C - centre, axis=1).mean()
    fx = cams.fx.detach().double().cpu().numpy()
    fy = cams.fy.detach().double().cpu().numpy()
    half = np.minimum(cams.width / (2 * fx), cams.height / (2 * fy)).mean()   # tan(half the narrower FOV)
    radius = float(dist * half)
    return SceneFrame(rotation_to_y(up), centre, radius, up)
