"""Batched pinhole cameras.

Convention (OpenCV): camera frame x right, y down, z forward (into the scene). A world point ``X`` maps to the
camera frame by ``X_cam = R @ X + t`` and to pixels by ``u = fx * x/z + cx``, ``v = fy * y/z + cy``. Pixel
``(i, j)`` (row i, column j) covers ``u in [j, j+1)``, ``v in [i, i+1)``; its centre is ``(j + 0.5, i + 0.5)``.
Depth everywhere in ``engine.render`` is camera-frame ``z`` (metres, or scene units), not distance along the ray.

OpenGL convention (camera looks down -z, y up) differs by a flip of the y and z axes of the camera frame:
``R_gl = diag(1, -1, -1) @ R_cv`` and ``t_gl = diag(1, -1, -1) @ t_cv``. ``Camera.view_matrix_gl`` and
``Camera.from_view_matrix_gl`` do this; ``Camera.projection_matrix_gl`` gives the matching clip-space matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .. import backend

__all__ = ["Camera", "look_at_rotation", "orbit_cameras", "CV_TO_GL"]

CV_TO_GL = (1.0, -1.0, -1.0)
"""Diagonal of the axis flip between OpenCV and OpenGL camera frames (its own inverse)."""


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=backend.torch_dtype(), device=backend.torch_device())


@dataclass
class Camera:
    """A batch of B pinhole cameras sharing one image size.

    Fields:
        R: (B, 3, 3) world-to-camera rotation (OpenCV frame).
        t: (B, 3) world-to-camera translation, ``X_cam = R X + t``.
        fx, fy: (B,) focal lengths in pixels.
        cx, cy: (B,) principal point in pixels (image centre is ``(W/2, H/2)``).
        width, height: image size in pixels.
    """

    R: torch.Tensor
    t: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: int
    height: int

    # ---- constructors -------------------------------------------------------------------------------------------
    @staticmethod
    def from_look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), fov_y: float = 45.0, width: int = 128,
                     height: int = 128, fx=None, fy=None, cx=None, cy=None) -> "Camera":
        """Cameras at ``eye`` (B, 3) or (3,) looking at ``target``; ``up`` is the world up direction.

        Intrinsics: either ``fov_y`` (vertical field of view, degrees) or explicit ``fx, fy, cx, cy`` (pixels).
        """
        eye = _t(eye).reshape(-1, 3)
        B = eye.shape[0]
        target = _t(target).reshape(-1, 3).expand(B, 3)
        up = _t(up).reshape(-1, 3).expand(B, 3)
        R = look_at_rotation(eye, target, up)
        t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
        return Camera.from_Rt(R, t, fov_y=fov_y, width=width, height=height, fx=fx, fy=fy, cx=cx, cy=cy)

    @staticmethod
    def from_Rt(R, t, fov_y: float = 45.0, width: int = 128, height: int = 128, fx=None, fy=None, cx=None,
                cy=None) -> "Camera":
        """Cameras from world-to-camera ``R`` (B, 3, 3) and ``t`` (B, 3) in the OpenCV convention."""
        R = _t(R).reshape(-1, 3, 3)
        t = _t(t).reshape(-1, 3)
        B = R.shape[0]
        if fx is None:
            fx = 0.5 * height / math.tan(math.radians(fov_y) / 2)
        fy = fx if fy is None else fy
        cx = width / 2 if cx is None else cx
        cy = height / 2 if cy is None else cy
        vec = lambda v: _t(v).reshape(-1).expand(B).clone()  # noqa: E731
        return Camera(R, t, vec(fx), vec(fy), vec(cx), vec(cy), int(width), int(height))

    @staticmethod
    def from_view_matrix_gl(view, **intrinsics) -> "Camera":
        """Cameras from OpenGL view matrices (B, 4, 4) (world to eye, eye looks down -z, y up)."""
        view = _t(view).reshape(-1, 4, 4)
        flip = _t(CV_TO_GL)
        return Camera.from_Rt(flip[:, None] * view[:, :3, :3], flip * view[:, :3, 3], **intrinsics)

    # ---- properties ---------------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.R.shape[0]

    @property
    def center(self) -> torch.Tensor:
        """(B, 3) camera centres in world coordinates."""
        return -(self.R.transpose(1, 2) @ self.t.unsqueeze(-1)).squeeze(-1)

    def __getitem__(self, idx) -> "Camera":
        """Select cameras: ``cam[2]`` or ``cam[1:3]`` (keeps the batch dimension)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return replace(self, R=self.R[idx], t=self.t[idx], fx=self.fx[idx], fy=self.fy[idx], cx=self.cx[idx],
                       cy=self.cy[idx])

    # ---- transforms ---------------------------------------------------------------------------------------------
    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) or (B, N, 3) world -> (B, N, 3) camera frame."""
        if points.dim() == 2:
            points = points.unsqueeze(0)
        return points @ self.R.transpose(1, 2) + self.t[:, None, :]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) or (B, N, 3) world -> (B, N, 3) screen ``(u, v, z)``: pixels and camera depth.

        Differentiable. Points behind the camera get a meaningless (u, v); callers check ``z``.
        """
        pc = self.world_to_camera(points)
        z = pc[..., 2]
        zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
        u = self.fx[:, None] * pc[..., 0] / zs + self.cx[:, None]
        v = self.fy[:, None] * pc[..., 1] / zs + self.cy[:, None]
        return torch.stack([u, v, z], dim=-1)

    def rays(self):
        """Per-pixel rays through pixel centres.

        Returns:
            origins: (B, H, W, 3) world. directions: (B, H, W, 3) world, scaled so that a step of ``t`` along
            the direction advances camera depth ``z`` by ``t`` (so ray parameter == depth; not unit length).
        """
        H, W = self.height, self.width
        dt, dev = self.R.dtype, self.R.device
        v, u = torch.meshgrid(torch.arange(H, dtype=dt, device=dev) + 0.5,
                              torch.arange(W, dtype=dt, device=dev) + 0.5, indexing="ij")
        x = (u[None] - self.cx[:, None, None]) / self.fx[:, None, None]
        y = (v[None] - self.cy[:, None, None]) / self.fy[:, None, None]
        d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)                    # (B, H, W, 3)
        dirs = torch.einsum("bji,bhwj->bhwi", self.R, d_cam)                        # R^T d
        origins = self.center[:, None, None, :].expand_as(dirs)
        return origins, dirs

    # ---- OpenGL interop -----------------------------------------------------------------------------------------
    def view_matrix_gl(self) -> torch.Tensor:
        """(B, 4, 4) OpenGL view matrices (world to eye; eye looks down -z with y up)."""
        flip = _t(CV_TO_GL).to(self.R)
        M = torch.zeros(self.batch, 4, 4, dtype=self.R.dtype, device=self.R.device)
        M[:, :3, :3] = flip[:, None] * self.R
        M[:, :3, 3] = flip * self.t
        M[:, 3, 3] = 1
        return M

    def projection_matrix_gl(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """(B, 4, 4) OpenGL clip matrices matching these intrinsics (NDC y up, z in [-1, 1])."""
        W, H = self.width, self.height
        P = torch.zeros(self.batch, 4, 4, dtype=self.R.dtype, device=self.R.device)
        P[:, 0, 0] = 2 * self.fx / W
        P[:, 1, 1] = 2 * self.fy / H
        P[:, 0, 2] = 1 - 2 * self.cx / W
        P[:, 1, 2] = 2 * self.cy / H - 1
        P[:, 2, 2] = -(far + near) / (far - near)
        P[:, 2, 3] = -2 * far * near / (far - near)
        P[:, 3, 2] = -1
        return P


def look_at_rotation(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) world-to-camera rotations (OpenCV: rows are camera x right, y down, z forward)."""
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.cross(z, up, dim=-1)
    # up parallel to the view direction: pick any perpendicular axis rather than returning NaNs
    bad = x.norm(dim=-1) < 1e-9
    if bad.any():
        alt = torch.zeros_like(up)
        alt[..., 0] = 1.0
        x = torch.where(bad[:, None], torch.cross(z, alt, dim=-1), x)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=1)


def orbit_cameras(n: int, radius: float = 3.0, elevation: float = 20.0, target=(0.0, 0.0, 0.0),
                  fov_y: float = 45.0, width: int = 128, height: int = 128, start: float = 0.0,
                  up=(0.0, 1.0, 0.0)) -> Camera:
    """A ring of ``n`` cameras around ``target`` (world y up), at ``elevation`` degrees, azimuths evenly spaced
    from ``start`` degrees. Returns one Camera with batch ``n``."""
    az = torch.deg2rad(_t(start) + torch.arange(n, dtype=backend.torch_dtype(), device=backend.torch_device()) * (360.0 / n))
    el = math.radians(elevation)
    tgt = _t(target)
    eye = torch.stack([radius * math.cos(el) * torch.sin(az), radius * math.sin(el) * torch.ones_like(az),
                       radius * math.cos(el) * torch.cos(az)], dim=-1) + tgt
    return Camera.from_look_at(eye, tgt, up, fov_y=fov_y, width=width, height=height)
