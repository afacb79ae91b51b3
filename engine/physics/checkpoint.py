"""Long-horizon gradients by segmented checkpointing, and the torch op that exposes them through the bridge.

The forward pass keeps one ``State`` every K substeps (T/K checkpoints), running the fused forward-only kernels
except in the last segment, which it runs on the differentiable kernels straight into the backward pass's buffers.
The backward pass walks the segments from last to first: it restores the segment's checkpoint, recomputes its K
substeps keeping every state and every substep's intermediates (``Scratch``; the last segment is already there),
then replays the substeps' gradients in reverse. Memory is
O(T/K) checkpoints + O(K) states and scratches; compute is one extra forward pass. K = T is the plain
"store everything" tape, and tests check both give the same gradients.

Differentiable inputs: initial x0, v0; per-particle E, ν, ρ and muscle weights; the actuation sequence (T, G).
Outputs: final x, v and the positions at chosen substeps (``observe``), so per-step losses work too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import bridge
from .model import Control, Model, State
from .mpm import Solver

__all__ = ["Rollout", "rollout", "memory_estimate"]

PARAMS = ("E", "nu", "rho", "muscle")


def _grad_tensor(t: torch.Tensor, pool: dict | None = None, key=None) -> torch.Tensor:
    """A leaf copy of ``t`` with a zeroed ``.grad``. With ``pool``, the buffer kept under ``key`` is re-used when its
    shape and dtype match: the same tensors every run keep the kernels' launch contexts cached (kernels.py)."""
    buf = None if pool is None else pool.get(key)
    if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != t.device:
        buf = t.detach().clone().contiguous().requires_grad_(True)
        buf.grad = torch.zeros_like(buf)
        if pool is not None:
            pool[key] = buf
        return buf
    buf.data.copy_(t.detach())
    buf.grad.zero_()
    return buf


@dataclass
class Rollout:
    """A differentiable run of ``n_substeps`` substeps of ``dt`` seconds on ``solver``'s model.

    Args:
        solver: the solver (its model gives the static data; E, ν, ρ, muscle weights can be overridden per run).
        n_substeps: T.
        dt: substep [s].
        segment: K, substeps per checkpoint segment (default ≈ √T, which minimises T/K + K).
        observe: substep indices k in [0, T] whose positions are returned (state after k substeps).
    """

    solver: Solver
    n_substeps: int
    dt: float
    segment: int | None = None
    observe: tuple = ()

    def __post_init__(self):
        T = int(self.n_substeps)
        self.K = int(self.segment or max(1, round(math.sqrt(T))))
        self.observe = tuple(int(k) for k in self.observe)
        if any(not 0 <= k <= T for k in self.observe):
            raise ValueError(f"observe indices must lie in [0, {T}]")
        self._pool_states: list[State] = []
        self._pool_scratch = []
        self._pool_params: dict = {}
        self._pool_controls: dict = {}
        self._tail_ready = False

    # --------------------------------------------------------------------------------------------- forward
    def run(self, x0, v0, params: dict | None = None, actions: torch.Tensor | None = None):
        """Forward pass. Returns (x_T (N, d), v_T (N, d), x_obs (len(observe), N, d)) and keeps checkpoints."""
        solver, T, K = self.solver, int(self.n_substeps), self.K
        m = solver.model
        pool = self._pool_params
        self.model = m.with_params(**{k: _grad_tensor(v, pool, k) for k, v in self._params(params).items()},
                                   vol=_grad_tensor(m.vol, pool, "vol"), fibre=_grad_tensor(m.fibre, pool, "fibre"))
        self.actions = self._actions(actions)
        a = State.initial(x0, v0).requires_grad_()
        b = a.empty_like().requires_grad_()
        self.checkpoints = []
        obs = []
        # The last segment runs on the differentiable kernels straight into the backward pass's buffers, so
        # grad() need not recompute it; the others take the fused forward-only path.
        t_tail = (math.ceil(T / K) - 1) * K
        states, scratches = self._states(T - t_tail + 1), self._scratches(T - t_tail)
        for t in range(T):
            if t % K == 0:
                self.checkpoints.append(a.clone())
            if t in self.observe:
                obs.append(a.x.detach().clone())
            if t >= t_tail:
                i = t - t_tail
                if i == 0:
                    states[0].copy_(a)
                solver.step(states[i], states[i + 1], self._control(t) if solver.use_muscle else None, self.dt,
                            scratch=scratches[i], model=self.model)
                a = states[i + 1]
            else:
                solver.step(a, b, self._control(t) if solver.use_muscle else None, self.dt, model=self.model)
                a, b = b, a
        self._tail_ready = T > 0
        solver.check(a, self.dt, self.model)
        if T in self.observe:
            obs.append(a.x.detach().clone())
        self.final = a.clone()
        x_obs = torch.stack(obs) if obs else a.x.new_zeros((0,) + tuple(a.x.shape))
        return self.final.x.clone(), self.final.v.clone(), x_obs

    def _params(self, params):
        m = self.solver.model
        out = {k: getattr(m, k) for k in PARAMS}
        for k, v in (params or {}).items():
            if k not in out:
                raise ValueError(f"unknown parameter {k!r}; differentiable parameters: {', '.join(PARAMS)}")
            out[k] = v
        return out

    def _actions(self, actions):
        m = self.solver.model
        if actions is None:
            actions = m.x0.new_zeros((int(self.n_substeps), m.n_groups))
        if tuple(actions.shape) != (int(self.n_substeps), m.n_groups):
            raise ValueError(f"actions must be (n_substeps, n_groups) = ({self.n_substeps}, {m.n_groups}), "
                             f"got {tuple(actions.shape)}")
        return actions.detach().contiguous()

    def _control(self, t, grad=False, slot=0):
        """Substep t's control, in a pooled buffer (``slot``: its index within a segment; the forward uses slot 0,
        which it consumes before the next substep) so launch contexts stay cached."""
        key = (grad, slot)
        a = self._pool_controls.get(key)
        if a is None or a.shape != self.actions[t].shape:
            a = self._pool_controls[key] = self.actions[t].clone()
            if grad:
                a.requires_grad_(True)
                a.grad = torch.zeros_like(a)
        else:
            a.data.copy_(self.actions[t])
            if grad:
                a.grad.zero_()
        return Control(a)

    # --------------------------------------------------------------------------------------------- backward
    def grad(self, g_x=None, g_v=None, g_obs=None):
        """Gradients of a loss given dL/dx_T, dL/dv_T (N, d) and dL/dx_obs (len(observe), N, d).

        Returns a dict: x0, v0 (N, d); E, nu, rho (N,); muscle (N, G); actions (T, G).
        """
        solver, T, K, m = self.solver, int(self.n_substeps), self.K, self.model
        for k in PARAMS + ("vol", "fibre"):
            getattr(m, k).grad.zero_()
        n_seg = len(self.checkpoints)
        states = self._states(min(K, T) + 1)
        scratches = self._scratches(min(K, T))
        g_actions = torch.zeros_like(self.actions)
        obs_index = {k: i for i, k in enumerate(self.observe)}
        carry_x = torch.zeros_like(self.final.x) if g_x is None else g_x.detach().clone()
        carry_v = torch.zeros_like(self.final.v) if g_v is None else g_v.detach().clone()
        carry = State(carry_x, carry_v, torch.zeros_like(self.final.C), torch.zeros_like(self.final.F),
                      torch.zeros_like(self.final.Jp))
        for j in reversed(range(n_seg)):
            t0, t1 = j * K, min((j + 1) * K, T)
            L = t1 - t0
            # without muscle particles the activations reach nothing (their grads stay zero): no control buffers
            controls = [self._control(t, grad=True, slot=t - t0) if solver.use_muscle else None
                        for t in range(t0, t1)]
            if not (j == n_seg - 1 and self._tail_ready):  # run() left the last segment in the buffers
                states[0].copy_(self.checkpoints[j])
                for i in range(L):
                    solver.forward(states[i], states[i + 1], controls[i], self.dt, scratches[i], m)
            self._tail_ready = False
            for gt, ct in zip(states[L].tensors(), carry.tensors()):
                gt.grad.copy_(ct)
            for i in reversed(range(L)):
                k_out = t0 + i + 1
                if g_obs is not None and k_out in obs_index:
                    states[i + 1].x.grad += g_obs[obs_index[k_out]]
                states[i].zero_grad_()  # here, not up front: the backward then finds these grads in cache
                solver.zero_scratch_grad(scratches[i], m)
                solver.backward(states[i], states[i + 1], controls[i], self.dt, scratches[i], m)
                if controls[i] is not None:
                    g_actions[t0 + i] = controls[i].act.grad  # copied out: the slot's buffer is re-used
            for gt, ct in zip(states[0].tensors(), carry.tensors()):
                ct.copy_(gt.grad)
        if g_obs is not None and 0 in obs_index:
            carry.x += g_obs[obs_index[0]]
        out = {"x0": carry.x, "v0": carry.v, "actions": g_actions}
        out.update({k: getattr(m, k).grad.clone() for k in PARAMS})
        return out

    def _states(self, n):
        while len(self._pool_states) < n:
            self._pool_states.append(self.solver.model.state().requires_grad_())
        return self._pool_states

    def _scratches(self, n):
        while len(self._pool_scratch) < n:
            self._pool_scratch.append(self.solver.new_scratch(grad=True))
        return self._pool_scratch


class _RolloutOp(bridge.Op):
    name = "mpm_rollout"

    def __init__(self, ro: Rollout):
        self.ro = ro

    def forward(self, x0, v0, E, nu, rho, muscle, actions):
        x, v, obs = self.ro.run(x0, v0, dict(E=E, nu=nu, rho=rho, muscle=muscle), actions)
        return (x, v, obs), None

    def backward(self, saved, grad_outputs):
        g = self.ro.grad(*grad_outputs)
        return g["x0"], g["v0"], g["E"], g["nu"], g["rho"], g["muscle"], g["actions"]


def rollout(solver: Solver, n_substeps: int, dt: float, x0=None, v0=None, E=None, nu=None, rho=None, muscle=None,
            actions=None, segment: int | None = None, observe=()):
    """Differentiable MPM rollout for torch: returns (x_T, v_T, x_obs); any float input may require grad.

    Inputs default to the model's. ``actions`` (T, G) are per-substep muscle activations.
    """
    m: Model = solver.model
    ro = Rollout(solver, n_substeps, dt, segment, observe)
    pick = lambda v, d: d if v is None else v  # noqa: E731
    acts = pick(actions, m.x0.new_zeros((int(n_substeps), m.n_groups)))
    return _RolloutOp(ro)(pick(x0, m.x0), pick(v0, m.v0), pick(E, m.E), pick(nu, m.nu), pick(rho, m.rho),
                          pick(muscle, m.muscle), acts)


def memory_estimate(n_particles: int, dim: int, res, n_substeps: int, segment: int, bytes_per_float: int = 8) -> dict:
    """Bytes held by a checkpointed backward pass: T/K checkpoints + (K + 1) states with grads + K scratches
    with grads. ``res`` is the grid resolution per axis. Returns a dict of byte counts."""
    d = dim
    state = n_particles * (d + d + d * d + d * d + 1) * bytes_per_float
    cells = 1
    for r in res:
        cells *= int(r)
    scratch = (n_particles * (4 * d * d + d + 1) + cells * (2 * d + 1)) * bytes_per_float
    n_ckpt = math.ceil(n_substeps / segment)
    out = {"checkpoints": n_ckpt * state, "segment_states": 2 * (segment + 1) * state,
           "segment_scratch": 2 * segment * scratch}
    out["total"] = sum(out.values())
    return out
