"""A differentiable co-design rollout: design fields + controller -> trajectory, one torch op per control step.

Why not ``engine.physics.checkpoint.rollout``: it starts from (x0, v0) with F = I and takes a precomputed
(T, G) action sequence, so a closed-loop controller (whose action depends on the state reached so far) and fibre
gradients cannot go through it. Here each control step is one op ``Segment`` mapping the full state
(x, v, C, F, Jp) plus the design tensors and the step's activation to the next state. torch chains the ops, and
keeps only their inputs (one state per control step); the forward runs the solver's fused forward-only kernels, and
each op's backward recomputes its K substeps on the differentiable kernels and replays their gradients. That is segmented checkpointing with the segment = the control step: memory O(T/K + K).
"""
from __future__ import annotations

import torch

from engine import bridge
from engine.errors import SimulationError
from engine.physics import Control, State

from .controllers import Controller, observe
from .designs import DesignFields
from .objectives import Trajectory
from .world import World

__all__ = ["Segment", "Stepper", "simulate"]


def _grad_buffers(t: torch.Tensor) -> torch.Tensor:
    t.requires_grad_(True)
    t.grad = torch.zeros_like(t)
    return t


class Segment(bridge.Op):
    """K substeps of dt with a constant activation (zero-order hold).

    forward(x, v, C, F, Jp, E, rho, muscle, fibre, act) -> (x, v, C, F, Jp); shapes as ``engine.physics.State``
    and ``Model``: x, v (N, d); C, F (N, d, d); Jp, E, rho (N,); muscle (N, G); fibre (N, d); act (G,).
    """

    name = "codesign_segment"

    def __init__(self, world: World, substeps: int, dt: float):
        self.world, self.K, self.dt = world, int(substeps), float(dt)
        self._states: list[State] = []
        self._scratch = []
        self._params: list[torch.Tensor] = []

    def _inputs(self, E, rho, muscle, fibre, act):
        """(model, control) over pooled copies of the design tensors and activation, with zeroed grads. The same
        buffers every call keep the kernels' launch contexts cached (``engine.physics.kernels``)."""
        ins = (E, rho, muscle, fibre, act)
        if [p.shape for p in self._params] != [t.shape for t in ins]:
            self._params = [_grad_buffers(t.detach().clone().contiguous()) for t in ins]
        for buf, t in zip(self._params, ins):
            buf.data.copy_(t)
            buf.grad.zero_()
        E, rho, muscle, fibre, act = self._params
        return self.world.model.with_params(E=E, rho=rho, muscle=muscle, fibre=fibre), Control(act)

    def _pool(self, n_states: int, n_scratch: int):
        solver = self.world.solver
        while len(self._states) < n_states:
            self._states.append(self.world.model.state().requires_grad_())
        while len(self._scratch) < n_scratch:
            self._scratch.append(solver.new_scratch(grad=True))
        return self._states, self._scratch

    def forward(self, x, v, C, F, Jp, E, rho, muscle, fibre, act):
        model, ctrl = self._inputs(E, rho, muscle, fibre, act)
        states, _ = self._pool(2, 0)
        a, b = states[0], states[1]
        for dst, src in zip(a.tensors(), (x, v, C, F, Jp)):
            dst.data.copy_(src)
        for _ in range(self.K):  # forward-only kernels; backward recomputes the segment with intermediates
            self.world.solver.forward_fast(a, b, ctrl, self.dt, model)
            a, b = b, a
        out = tuple(t.detach().clone() for t in a.tensors())
        if not (torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()):
            raise SimulationError("co-design rollout blew up (NaN/Inf in particle state): lower dt or the "
                                  "actuation strength")
        return out, (x, v, C, F, Jp, E, rho, muscle, fibre, act)

    def backward(self, saved, grad_outputs):
        x, v, C, F, Jp, E, rho, muscle, fibre, act = saved
        solver, K = self.world.solver, self.K
        model, ctrl = self._inputs(E, rho, muscle, fibre, act)
        states, scratch = self._pool(K + 1, K)
        for dst, src in zip(states[0].tensors(), (x, v, C, F, Jp)):
            dst.data.copy_(src)
        for i in range(K):  # recompute the segment, keeping every state and intermediate
            solver.forward(states[i], states[i + 1], ctrl, self.dt, scratch[i], model)
        for t, g in zip(states[K].tensors(), grad_outputs):  # every grad of states[K]; earlier ones zeroed below
            t.grad.copy_(g)
        for i in reversed(range(K)):
            solver.zero_scratch_grad(scratch[i], model)  # only the grads backward accumulates into
            states[i].zero_grad_()
            solver.backward(states[i], states[i + 1], ctrl, self.dt, scratch[i], model)
        s0 = states[0]
        return (s0.x.grad, s0.v.grad, s0.C.grad, s0.F.grad, s0.Jp.grad, model.E.grad, model.rho.grad,
                model.muscle.grad, model.fibre.grad, ctrl.act.grad)


class Stepper:
    """Advances the robot one control step at a time (what ``simulate`` loops over; scenes use it for video).

    Attributes: x, v (N_total, d) current particle positions/velocities; t [s] elapsed; k control steps taken.
    """

    def __init__(self, world: World, fields: DesignFields, controller: Controller, substeps: int, dt: float,
                 segment: Segment | None = None):
        self.world, self.fields, self.controller = world, fields, controller
        self.seg = segment or Segment(world, substeps, dt)
        self.ctrl_dt = substeps * dt
        self.E, self.rho, self.muscle, self.fibre = world.material(fields)
        st = world.model.state()
        self.x, self.v, self.C, self.F, self.Jp = st.x, st.v, st.C, st.F, st.Jp
        self.mass = world.robot_mass(fields)
        self.k = 0

    @property
    def t(self) -> float:
        return self.k * self.ctrl_dt

    def step(self) -> torch.Tensor:
        """One control step; returns the activation used (G,)."""
        n = self.world.n_robot
        obs = None
        if self.controller.closed_loop:
            obs = observe(self.x[:n], self.v[:n], self.world.x0_robot, self.mass, self.fields.muscle, self.t,
                          getattr(self.controller, "omega", 20.0))
        act = self.controller(torch.as_tensor(self.t, dtype=self.x.dtype), obs)
        self.x, self.v, self.C, self.F, self.Jp = bridge.apply(self.seg, self.x, self.v, self.C, self.F, self.Jp,
                                                               self.E, self.rho, self.muscle, self.fibre, act)
        self.k += 1
        return act


def simulate(world: World, fields: DesignFields, controller: Controller, steps: int, substeps: int, dt: float,
             segment: Segment | None = None, record_all: bool = False) -> Trajectory:
    """Roll the robot out for ``steps`` control steps of ``substeps`` substeps each (dt [s] per substep).

    Differentiable w.r.t. everything ``fields`` and ``controller`` depend on (run under ``torch.no_grad()`` for
    gradient-free evaluation). Returns the robot's ``Trajectory`` sampled at every control step; with
    ``record_all`` it also carries ``all_x`` (list of (N_total, d) numpy arrays) for rendering the terrain.
    """
    sim = Stepper(world, fields, controller, substeps, dt, segment)
    n = world.n_robot
    xs, vs, acts = [sim.x[:n]], [sim.v[:n]], []
    full = [sim.x.detach().cpu().numpy()] if record_all else None
    for _ in range(steps):
        acts.append(sim.step())
        xs.append(sim.x[:n])
        vs.append(sim.v[:n])
        if record_all:
            full.append(sim.x.detach().cpu().numpy())
    traj = Trajectory(xs=xs, vs=vs, mass=sim.mass, x0=world.x0_robot, dt=sim.ctrl_dt, gravity=world.spec.gravity)
    traj.actions = torch.stack(acts) if acts else None
    traj.all_x = full
    return traj
