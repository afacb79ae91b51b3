"""Tasks: differentiable losses over a rollout's trajectory, and the same numbers as rewards for search.

Every objective has ``loss(traj) -> scalar tensor`` (lower is better, differentiable through the physics) and
``reward(traj) -> float`` (= −loss, for gradient-free optimisers). Distances are in metres, times in seconds.
"Horizontal" means x in 2D and (x, z) in 3D; y is up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import ConfigError

from .controllers import orientation

__all__ = ["Trajectory", "Objective", "Locomotion", "Turning", "Waypoints", "VelocityTracking", "TASKS",
           "make_objective", "cost_of_transport"]


@dataclass
class Trajectory:
    """A rollout sampled at every control step.

    xs, vs: lists of T+1 tensors (N, d) (positions [m], velocities [m/s]); mass: (N,) [kg]; x0: (N, d) rest
    positions; dt: seconds between samples; gravity: |g| [m/s²].
    """

    xs: list
    vs: list
    mass: torch.Tensor
    x0: torch.Tensor
    dt: float
    gravity: float = 9.81

    @property
    def dim(self) -> int:
        return int(self.x0.shape[1])

    def com(self, k: int) -> torch.Tensor:
        """(d,) mass-weighted centre of mass at sample k."""
        w = self.mass / self.mass.sum()
        return (w[:, None] * self.xs[k]).sum(0)

    def com_velocity(self, k: int) -> torch.Tensor:
        w = self.mass / self.mass.sum()
        return (w[:, None] * self.vs[k]).sum(0)

    def horizontal(self, v: torch.Tensor) -> torch.Tensor:
        return v[..., :1] if self.dim == 2 else v[..., [0, 2]]

    def displacement(self) -> torch.Tensor:
        """(d,) CoM displacement from the first to the last sample [m]."""
        return self.com(len(self.xs) - 1) - self.com(0)


def _heading(h, dim, dtype):
    h = torch.as_tensor(h, dtype=dtype).flatten()
    need = 1 if dim == 2 else 2
    if h.numel() != need:
        raise ConfigError(f"heading must have {need} horizontal component(s) in {dim}D, got {h.numel()}")
    n = h.norm()
    if n == 0:
        raise ConfigError("heading must be non-zero")
    return h / n


class Objective:
    """Base class: subclasses implement ``loss``."""

    name = "objective"

    def loss(self, traj: Trajectory) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def reward(self, traj: Trajectory) -> float:
        return -float(self.loss(traj).detach())


class Locomotion(Objective):
    """Move along ``heading``: loss = −(final CoM displacement · heading), or with ``mode="velocity"`` the
    negated mean CoM velocity along the heading over all samples."""

    name = "locomotion"

    def __init__(self, heading=(1.0,), mode: str = "displacement"):
        if mode not in ("displacement", "velocity"):
            raise ConfigError(f"locomotion mode must be displacement or velocity, got {mode!r}")
        self.heading, self.mode = heading, mode

    def loss(self, traj):
        h = _heading(self.heading, traj.dim, traj.mass.dtype)
        if self.mode == "displacement":
            return -(traj.horizontal(traj.displacement()) * h).sum()
        vel = torch.stack([traj.horizontal(traj.com_velocity(k)) for k in range(1, len(traj.xs))])
        return -(vel @ h).mean()


class Turning(Objective):
    """Rotate the body: loss = −direction · (rotation angle at the end) [rad]. In 3D the angle is about the
    vertical (y) axis; in 2D, where there is no vertical axis in the plane, it is the in-plane rotation."""

    name = "turning"

    def __init__(self, direction: float = 1.0):
        if direction == 0:
            raise ConfigError("turning direction must be +1 or -1")
        self.direction = 1.0 if direction > 0 else -1.0

    def loss(self, traj):
        axes = (0, 1) if traj.dim == 2 else (2, 0)
        return -self.direction * orientation(traj.xs[-1], traj.x0, traj.mass, axes)


class Waypoints(Objective):
    """Follow a path: mean squared horizontal distance [m²] between the CoM and each waypoint at its time.

    Args:
        points: (K, h) waypoints relative to the starting CoM (h = 1 in 2D, 2 in 3D).
        times: (K,) fractions of the episode in (0, 1] at which each is due (default evenly spaced).
    """

    name = "waypoints"

    def __init__(self, points, times=None):
        self.points = torch.as_tensor(points, dtype=torch.float64)
        if self.points.ndim != 2 or len(self.points) == 0:
            raise ConfigError("waypoints must be a non-empty (K, h) array")
        k = len(self.points)
        self.times = torch.as_tensor(times if times is not None else [(i + 1) / k for i in range(k)],
                                     dtype=torch.float64)
        if len(self.times) != k or (self.times <= 0).any() or (self.times > 1).any():
            raise ConfigError("waypoint times must be K fractions in (0, 1]")

    def loss(self, traj):
        T = len(traj.xs) - 1
        c0 = traj.horizontal(traj.com(0))
        err = []
        for p, f in zip(self.points, self.times):
            k = max(1, round(float(f) * T))
            err.append(((traj.horizontal(traj.com(k)) - c0 - p.to(c0.dtype)) ** 2).sum())
        return torch.stack(err).mean()


class VelocityTracking(Objective):
    """Track a horizontal CoM velocity: mean over samples of |v_com − target|² [(m/s)²]."""

    name = "velocity"

    def __init__(self, target=(0.2,)):
        self.target = torch.as_tensor(target, dtype=torch.float64).flatten()

    def loss(self, traj):
        tgt = self.target.to(traj.mass.dtype)
        if tgt.numel() != traj.horizontal(traj.x0[0]).numel():
            raise ConfigError(f"velocity target needs {traj.horizontal(traj.x0[0]).numel()} component(s)")
        err = [((traj.horizontal(traj.com_velocity(k)) - tgt) ** 2).sum() for k in range(1, len(traj.xs))]
        return torch.stack(err).mean()


TASKS = ("locomotion", "turning", "waypoints", "velocity")


def make_objective(name: str, dim: int = 2, **kw) -> Objective:
    """Build a task by name with sensible defaults (forward along +x, a 2-point path, 0.2 m/s)."""
    h = 1 if dim == 2 else 2
    if name == "locomotion":
        return Locomotion(**({"heading": (1.0,) + (0.0,) * (h - 1)} | kw))
    if name == "turning":
        return Turning(**kw)
    if name == "waypoints":
        return Waypoints(**({"points": [[0.05] + [0.0] * (h - 1), [0.1] + [0.0] * (h - 1)]} | kw))
    if name == "velocity":
        return VelocityTracking(**({"target": (0.2,) + (0.0,) * (h - 1)} | kw))
    raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")


def cost_of_transport(traj: Trajectory, heading=None) -> float:
    """Dimensionless cost of transport W⁺ / (m·g·distance).

    W⁺ is the positive mechanical work on the body, summed over samples as the increases of kinetic plus
    gravitational energy (a proxy: internal elastic energy and dissipation are not tracked). ``distance`` is the
    horizontal CoM displacement (along ``heading`` when given). Returns inf for a body that did not move forward.
    """
    with torch.no_grad():
        m = traj.mass
        g = traj.gravity
        energy = [float(0.5 * (m * (v * v).sum(1)).sum() + g * (m * x[:, 1]).sum()) for x, v in zip(traj.xs, traj.vs)]
        work = sum(max(0.0, b - a) for a, b in zip(energy, energy[1:]))
        disp = traj.horizontal(traj.displacement())
        if heading is not None:
            dist = float((disp * _heading(heading, traj.dim, disp.dtype)).sum())
        else:
            dist = float(disp.norm())
        if dist <= 1e-9:
            return float("inf")
        return work / (float(m.sum()) * g * dist)
