"""Controllers: torch modules mapping time (and, closed-loop, observations) to muscle activations.

A controller returns ``act`` (G,): one activation per muscle group, bounded by ``strength`` (SoftZoo bounds
actions by 0.3). The physics multiplies it by each particle's Young's modulus, so ``act`` is a dimensionless
fraction of E. Time ``t`` is in seconds.

* ``SineController``: open loop, tanh(W·sin(ω t + φ_k) + b) with K fixed phases φ_k = 2πk/K (DiffTaichi, SoftZoo).
* ``PureSineController``: A_g·sin(ω_g t + φ_g) with learned amplitude, frequency and phase.
* ``MLPController``: closed loop, an MLP over ``observe(...)``: CoM velocity, orientation, muscle-group centroids
  relative to the CoM and a time phase.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from engine.errors import ConfigError

__all__ = ["Controller", "SineController", "PureSineController", "MLPController", "CONTROLLERS",
           "make_controller", "observe", "observation_size", "orientation"]


class Controller(nn.Module):
    """Base: ``forward(t, obs=None) -> act (G,)``; ``closed_loop`` says whether it reads ``obs``."""

    closed_loop = False

    def __init__(self, n_groups: int, strength: float = 0.3):
        super().__init__()
        if n_groups < 1:
            raise ConfigError(f"n_groups must be >= 1, got {n_groups}")
        if strength <= 0:
            raise ConfigError(f"actuation strength must be > 0, got {strength}")
        self.n_groups, self.strength = n_groups, float(strength)


class SineController(Controller):
    """tanh(W·sin(ω t + 2πk/K) + b) · strength, W (G, K) and b (G,) learned, ω [rad/s] fixed."""

    def __init__(self, n_groups: int, omega: float = 20.0, n_phases: int = 4, strength: float = 0.3,
                 init_scale: float = 0.5, seed: int = 0):
        super().__init__(n_groups, strength)
        gen = torch.Generator().manual_seed(seed)
        self.omega = float(omega)
        self.register_buffer("phases", 2 * math.pi * torch.arange(n_phases, dtype=torch.get_default_dtype()) / n_phases)
        self.W = nn.Parameter(init_scale * torch.randn(n_groups, n_phases, generator=gen))
        self.b = nn.Parameter(torch.zeros(n_groups))

    def forward(self, t, obs=None):
        s = torch.sin(self.omega * t + self.phases)
        return self.strength * torch.tanh(self.W @ s + self.b)


class PureSineController(Controller):
    """A_g·sin(ω_g t + φ_g): amplitude = strength·tanh(a), ω = softplus(w) [rad/s], φ free."""

    def __init__(self, n_groups: int, omega: float = 20.0, strength: float = 0.3, seed: int = 0):
        super().__init__(n_groups, strength)
        gen = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.full((n_groups,), 0.5))
        # inverse softplus so the initial frequency is exactly omega
        self.w = nn.Parameter(torch.full((n_groups,), math.log(math.expm1(omega))))
        self.phi = nn.Parameter(2 * math.pi * torch.rand(n_groups, generator=gen))

    def forward(self, t, obs=None):
        omega = nn.functional.softplus(self.w)
        return self.strength * torch.tanh(self.a) * torch.sin(omega * t + self.phi)


def orientation(x: torch.Tensor, x0: torch.Tensor, mass: torch.Tensor, axes=(0, 1)) -> torch.Tensor:
    """Rotation angle [rad] of the body in the plane of ``axes`` (counter-clockwise from axes[0] to axes[1]),
    from the mass-weighted best-fit rotation of rest positions x0 (N, d) onto x (N, d)."""
    i, j = axes
    w = mass / mass.sum()
    r = x - (w[:, None] * x).sum(0)
    r0 = x0 - (w[:, None] * x0).sum(0)
    cross = (w * (r0[:, i] * r[:, j] - r0[:, j] * r[:, i])).sum()
    dot = (w * (r0[:, i] * r[:, i] + r0[:, j] * r[:, j])).sum()
    return torch.atan2(cross, dot)


def observation_size(dim: int, n_groups: int) -> int:
    """Length of ``observe``'s vector: d (CoM velocity) + orientation (2 in 2D, 4 in 3D) + G·d + 2."""
    return dim + (2 if dim == 2 else 4) + n_groups * dim + 2


def observe(x, v, x0, mass, muscle, t, omega: float = 20.0) -> torch.Tensor:
    """Observation vector for closed-loop control (differentiable).

    Args:
        x, v: (N, d) positions [m] and velocities [m/s]; x0: (N, d) rest positions; mass: (N,) [kg];
        muscle: (N, G) group weights; t: time [s]; omega: frequency of the time phase [rad/s].
    Returns:
        (observation_size(d, G),): CoM velocity, cos/sin of orientation angles (2D: in-plane; 3D: yaw about y and
        pitch about z), muscle-group centroids relative to the CoM (G·d), sin/cos(ω t).
    """
    d = x.shape[1]
    w = mass / mass.sum()
    com = (w[:, None] * x).sum(0)
    com_v = (w[:, None] * v).sum(0)
    angles = [orientation(x, x0, mass, (0, 1))] if d == 2 else [orientation(x, x0, mass, (2, 0)),
                                                                orientation(x, x0, mass, (0, 1))]
    ori = torch.cat([torch.stack([torch.cos(a), torch.sin(a)]) for a in angles])
    gm = muscle * mass[:, None]
    cent = (gm.T @ x) / gm.sum(0)[:, None].clamp(min=1e-12) - com
    tt = torch.as_tensor(t, dtype=x.dtype)
    phase = torch.stack([torch.sin(omega * tt), torch.cos(omega * tt)])
    return torch.cat([com_v, ori, cent.reshape(-1), phase])


class MLPController(Controller):
    """Closed loop: MLP [hidden]·layers with tanh over ``observe(...)``, output tanh · strength."""

    closed_loop = True

    def __init__(self, n_groups: int, dim: int, hidden: int = 32, layers: int = 2, strength: float = 0.3,
                 omega: float = 20.0, obs_scale: float = 10.0, seed: int = 0):
        super().__init__(n_groups, strength)
        gen = torch.Generator().manual_seed(seed)
        self.omega = float(omega)
        self.obs_scale = float(obs_scale)  # observations are O(0.1 m, 0.1 m/s); bring them to O(1)
        sizes = [observation_size(dim, n_groups)] + [hidden] * layers + [n_groups]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.normal_(0.0, 1.0 / math.sqrt(lin.in_features), generator=gen)
                lin.bias.zero_()

    def forward(self, t, obs=None):
        if obs is None:
            raise ConfigError("MLPController is closed-loop: pass obs=observe(...)")
        h = obs.clone()
        h[:-2] = h[:-2] * self.obs_scale
        for lin in self.layers[:-1]:
            h = torch.tanh(lin(h))
        return self.strength * torch.tanh(self.layers[-1](h))


CONTROLLERS = ("sine", "pure_sine", "mlp")


def make_controller(name: str, n_groups: int, dim: int, seed: int = 0, **kw) -> Controller:
    """Build a controller by name: sine | pure_sine | mlp."""
    if name == "sine":
        return SineController(n_groups, seed=seed, **kw)
    if name == "pure_sine":
        return PureSineController(n_groups, seed=seed, **kw)
    if name == "mlp":
        return MLPController(n_groups, dim, seed=seed, **kw)
    raise ConfigError(f"unknown controller {name!r}; choose one of {', '.join(CONTROLLERS)}")
