"""The MLS-MPM solver: advances a ``State`` by one substep, forward and backward.

``Solver(model).step(state_in, state_out, control, dt)`` advances one substep and checks for blow-ups. Two paths
compute the same substep (``kernels.py``):

* forward-only (``step`` without a scratch; ``Rollout.run``): one fused launch, no intermediates kept;
* differentiable (``forward(..., scratch)``, ``step(..., scratch=...)``): the same launch keeping its
  intermediates in a ``Scratch`` (the staged kernels with ``stress_adjoint="generated"``), so ``backward(...)``
  can replay their gradients in reverse order, also in one launch (``checkpoint.py`` drives it over long
  horizons).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .. import backend
from . import guards, kernels, materials
from .model import Control, Model, State, TensorBundle

__all__ = ["Solver", "Scratch", "STRESS_ADJOINTS"]

_NO_ERROR = 2**31 - 1


@dataclass
class Scratch(TensorBundle):
    """Intermediates of one substep. Particle: F_tr, U, V, tau (N, d, d); sig (N, d); act (N,).
    Grid: grid_mv, grid_v (*res, d); grid_m (*res).

    Only what the backward pass reads is written: U, sig, V only with SVD materials (and there only for those
    materials' particles), act only with muscles on the generated-adjoint path, and F_tr only there
    (``Solver(stress_adjoint="generated")``; the hand-written adjoints recompute it). ``Solver.backward`` leaves
    grid_v's grad zeroed (see ``Solver.zero_scratch_grad``)."""

    F_tr: torch.Tensor
    U: torch.Tensor
    sig: torch.Tensor
    V: torch.Tensor
    act: torch.Tensor
    tau: torch.Tensor
    grid_mv: torch.Tensor
    grid_m: torch.Tensor
    grid_v: torch.Tensor



STRESS_ADJOINTS = ("hand", "generated")


class Solver:
    """MLS-MPM/APIC solver for one ``Model`` (2D or 3D).

    Args:
        model: the static scene description.
        check_every: read the blow-up flag every this many substeps (each read synchronises with the device).
        stress_adjoint: "hand" (default; the ``TIDE_STRESS_ADJOINT`` environment variable when None): every
            material's stress gradient is hand-written and fused into the P2G adjoint. "generated": the SVD-based
            materials (corotated, sand, snow, clay, mud, ice) use Taichi's generated adjoint of the staged stress
            kernel instead, as before those adjoints were written; kept for benchmarks (``bench_mpm.py
            --materials``) and as a cross-check. Gradients agree to round-off.
    """

    def __init__(self, model: Model, check_every: int = 10, stress_adjoint: str | None = None):
        backend.ensure()
        mode = stress_adjoint or os.environ.get("TIDE_STRESS_ADJOINT", "hand")
        if mode not in STRESS_ADJOINTS:
            raise ValueError(f"stress_adjoint (or TIDE_STRESS_ADJOINT) must be one of {', '.join(STRESS_ADJOINTS)}, "
                             f"got {mode!r}")
        self.stress_adjoint = mode
        self.model = model
        cells = 1
        for r in model.res:
            cells *= int(r)
        self.k = kernels.build(model.dim, backend.real(), kernels.serial_scatter(),
                               kernels.serial_all(model.n, cells))
        mats = model.material.cpu().numpy()
        self.use_svd = materials.needs_svd(mats)
        self.use_muscle = bool((mats == materials.MUSCLE).any())
        # every particle's stress has a hand-written adjoint (materials.build_stress_adjoint); "generated" keeps
        # Taichi's generated one for the SVD materials (the state before theirs were written, for comparison)
        hand = set(materials.HAND_ADJOINT) - (set(materials.GENERATED_ADJOINT) if mode == "generated" else set())
        self.hand_stress = bool(set(mats.tolist()) <= hand)
        self._sinks: dict = {}
        self.check_every = max(1, int(check_every))
        self.substep = 0
        self._checked_dt: set[float] = set()
        self._flag = torch.tensor([_NO_ERROR, 0, 0], dtype=torch.int32, device=backend.torch_device())
        self._no_flag = self._flag.clone()  # where unchecked substeps write theirs
        opts = dict(dtype=backend.torch_dtype(), device=backend.torch_device())
        self._serial = kernels.serial_scatter()
        # forward-only buffers; each P2G zeroes the nodes the previous one wrote (its ``box``, kernels.py)
        nc = self.k.chunks  # >0: substep_chunked, with that many grid copies (kernels.py)
        copies = (nc,) if nc else ()
        box = torch.zeros(2 * model.dim * (nc + 1), dtype=torch.int32, device=backend.torch_device()) if nc \
            else self._new_box()
        self._fast = SimpleNamespace(tau=torch.zeros(model.n, model.dim, model.dim, **opts),
                                     grid_mv=torch.zeros(*copies, *model.res, model.dim, **opts),
                                     grid_m=torch.zeros(*copies, *model.res, **opts),
                                     grid_v=torch.zeros(*model.res, model.dim, **opts), box=box,
                                     sig=torch.zeros(model.n, model.dim, **opts))  # (and tau) stand-ins for the SVD
        self._no_act = torch.zeros(model.n_groups, **opts)
        self._floor_kind, self._wall_kind = model.boundary.kinds()
        self._clamp = model.boundary.clamp_box(model.dim)
        lo = model.bound * model.dx * 0.5
        self._lo = lo
        self._hi = tuple(float(r * model.dx - lo) for r in model.res)

    # ----------------------------------------------------------------------------------------------- buffers
    def _new_box(self) -> torch.Tensor:
        """The grid-node box of a fresh (zeroed) grid: empty where P2G grows it (serialised scatters), else the whole
        grid (kernels.py)."""
        d = self.model.dim
        hi = [0] * d if self._serial else [int(r) for r in self.model.res]
        return torch.tensor([0] * d + hi, dtype=torch.int32, device=backend.torch_device())

    def new_scratch(self, grad: bool = False) -> Scratch:
        m = self.model
        n, d = m.n, m.dim
        opts = dict(dtype=backend.torch_dtype(), device=backend.torch_device())
        eye = torch.eye(d, **opts).expand(n, d, d).contiguous()
        sc = Scratch(F_tr=eye.clone(), U=eye.clone(), sig=torch.ones(n, d, **opts), V=eye.clone(),
                     act=torch.zeros(n, **opts), tau=torch.zeros(n, d, d, **opts),
                     grid_mv=torch.zeros(*m.res, d, **opts), grid_m=torch.zeros(*m.res, **opts),
                     grid_v=torch.zeros(*m.res, d, **opts))
        sc.box = self._new_box()  # the nodes its P2G wrote (kernels.py); not a differentiable tensor
        return sc.requires_grad_() if grad else sc

    def zero_control(self) -> Control:
        return Control(torch.zeros(self.model.n_groups, dtype=backend.torch_dtype(), device=backend.torch_device()))

    # ----------------------------------------------------------------------------------------------- forward
    def step(self, state_in: State, state_out: State, control: Control | None = None, dt: float = 1e-4,
             scratch: Scratch | None = None, model: Model | None = None) -> State:
        """Advance ``state_in`` by ``dt`` seconds into ``state_out`` (distinct buffers). Returns ``state_out``.

        Without ``scratch`` this runs the fused forward-only path; with one it runs the differentiable kernels
        and leaves their intermediates in ``scratch`` for ``backward``. Both compute the same substep.
        Raises ``SimulationError`` (naming the substep and likely cause) when particles become non-finite or
        leave the domain, and ``ConfigError`` for a dt far above the CFL limit (a warning when moderately above).
        """
        model = model or self.model
        dt = float(dt)
        if dt not in self._checked_dt:
            guards.check_dt(model, dt)
            self._checked_dt.add(dt)
        if scratch is None:
            self.forward_fast(state_in, state_out, control, dt, model)
        else:
            self._forward(state_in, state_out, control, dt, scratch, model, check=True)
        self.substep += 1
        if self.substep % self.check_every == 0:
            self.check(state_out, dt, model)
        return state_out

    def check(self, state: State, dt: float, model: Model | None = None) -> None:
        """Read the blow-up flag written since the last check; raise ``SimulationError`` if it is set."""
        flag = self._flag.cpu().numpy().copy()
        if flag[0] != _NO_ERROR:
            self._flag.copy_(torch.tensor([_NO_ERROR, 0, 0], dtype=torch.int32))
            start = (self.substep - 1) // self.check_every * self.check_every
            guards.raise_blowup(model or self.model, flag, dt, state, (start, self.substep - 1))

    def forward_fast(self, s_in: State, s_out: State, control: Control | None, dt: float,
                     model: Model | None = None) -> None:
        """One substep on the fused forward-only path: one kernel launch, nothing kept for a backward pass.
        Writes the blow-up flag that ``check`` reads (as substep ``self.substep``)."""
        m = model or self.model
        k, f = self.k, self._fast
        act = self._no_act if control is None else control.act
        if k.chunks:
            k.substep_chunked(s_in.x, s_in.v, s_in.C, s_in.F, s_in.Jp, m.material, m.E, m.nu, m.rho, m.vol, m.muscle,
                              act, m.fibre, m.table, m.dx, dt, f.tau, f.grid_mv, f.grid_m, f.box, m.gravity, m.bound,
                              m.heights, m.normals, self._floor_kind, m.boundary.floor_friction, self._wall_kind,
                              m.boundary.wall_friction, *self._clamp, f.grid_v, s_out.x, s_out.v, s_out.C, s_out.F,
                              s_out.Jp, self._lo, self._hi, self.substep, self._flag)
            return
        k.substep(s_in.x, s_in.v, s_in.C, s_in.F, s_in.Jp, m.material, m.E, m.nu, m.rho, m.vol, m.muscle, act,
                  m.fibre, m.table, m.dx, dt, f.tau, f.grid_mv, f.grid_m, f.box, f.tau, f.sig, f.tau, m.gravity,
                  m.bound, m.heights, m.normals, self._floor_kind, m.boundary.floor_friction, self._wall_kind,
                  m.boundary.wall_friction, *self._clamp, f.grid_v, s_out.x, s_out.v, s_out.C, s_out.F, s_out.Jp,
                  self._lo, self._hi, self.substep, self._flag)

    def forward(self, s_in: State, s_out: State, control: Control | None, dt: float, sc: Scratch,
                model: Model | None = None) -> None:
        """One differentiable substep without guards, keeping its intermediates in ``sc`` (the checkpointed
        rollout calls this directly to recompute segments)."""
        self._forward(s_in, s_out, control, dt, sc, model)

    def _forward(self, s_in: State, s_out: State, control: Control | None, dt: float, sc: Scratch,
                 model: Model | None = None, check: bool = False) -> None:
        """``forward``; with ``check`` the G2P launch also writes the blow-up flag (as substep ``self.substep``)."""
        m = model or self.model
        k = self.k
        # every P2G first zeroes the grid nodes its previous launch on this scratch wrote (sc.box)
        if self._hand(m):
            # the whole substep in one launch: deform, SVD, muscle activation, stress and P2G in one pass (keeping
            # τ and, with SVD materials, the SVD; the backward recomputes the trial F, so sc.F_tr is not written),
            # the grid update, G2P. Without ``check`` the blow-up flag goes to a buffer nobody reads
            act = self._no_act if control is None else control.act
            substep = k.substep_svd if self.use_svd else k.substep
            substep(s_in.x, s_in.v, s_in.C, s_in.F, s_in.Jp, m.material, m.E, m.nu, m.rho, m.vol, m.muscle, act,
                    m.fibre, m.table, m.dx, dt, sc.tau, sc.grid_mv, sc.grid_m, sc.box, sc.U, sc.sig, sc.V, m.gravity,
                    m.bound, m.heights, m.normals, self._floor_kind, m.boundary.floor_friction, self._wall_kind,
                    m.boundary.wall_friction, *self._clamp, sc.grid_v, s_out.x, s_out.v, s_out.C, s_out.F,
                    s_out.Jp, self._lo, self._hi, self.substep, self._flag if check else self._no_flag)
            return
        k.deform(s_in.C, s_in.F, dt, sc.F_tr)
        if self.use_svd:
            k.svd(sc.F_tr, m.material, sc.U, sc.sig, sc.V)
        if self.use_muscle:
            sc.act.data.zero_()
            k.muscle(m.muscle, (control or self.zero_control()).act, sc.act)
        k.stress(sc.F_tr, sc.U, sc.sig, sc.V, s_in.Jp, m.material, m.E, m.nu, sc.act, m.fibre, m.table, dt,
                 s_out.F, s_out.Jp, sc.tau)
        k.p2g(s_in.x, s_in.v, s_in.C, sc.tau, m.vol, m.rho, m.dx, dt, sc.grid_mv, sc.grid_m, sc.box)
        k.grid(sc.box, sc.grid_mv, sc.grid_m, m.gravity, dt, m.dx, m.bound, m.heights, m.normals, self._floor_kind,
               m.boundary.floor_friction, self._wall_kind, m.boundary.wall_friction, *self._clamp, sc.grid_v)
        if check:
            k.g2p_check(s_in.x, sc.grid_v, m.dx, dt, s_out.x, s_out.v, s_out.C, s_out.F, self._lo, self._hi,
                        self.substep, self._flag)
        else:
            k.g2p(s_in.x, sc.grid_v, m.dx, dt, s_out.x, s_out.v, s_out.C)

    # ----------------------------------------------------------------------------------------------- backward
    def backward(self, s_in: State, s_out: State, control: Control | None, dt: float, sc: Scratch,
                 model: Model | None = None) -> None:
        """Reverse one substep: reads ``s_out``'s ``.grad`` buffers, accumulates into ``s_in``'s, the model's
        (E, nu, rho, vol, muscle, fibre) and ``control.act``'s. ``sc`` must hold this substep's forward
        intermediates, with zeroed grads. Every float tensor involved must have ``.grad`` allocated."""
        m = model or self.model
        k, g = self.k, self._grad
        sc._grid_v_grad_clean = False  # until the grid adjoint has consumed (and zeroed) it
        if self._hand(m):
            # hand-written adjoints of G2P, the grid update, P2G, the stress (with the muscle's active term) and
            # deform, then the muscle activations' sum, in one launch (kernels.py)
            act = self._no_act if control is None else control.act
            backward = k.backward_svd if self.use_svd else k.backward
            backward(s_in.x, s_in.v, s_in.C, s_in.F, sc.tau, m.material, m.E, m.nu, m.vol, m.rho, m.muscle, act,
                     m.fibre, sc.U, sc.sig, sc.V, s_in.Jp, m.table, m.dx, dt, sc.box, sc.grid_mv, sc.grid_m,
                     sc.grid_v, m.gravity, m.bound, m.heights, m.normals, self._floor_kind,
                     m.boundary.floor_friction, self._wall_kind, m.boundary.wall_friction, *self._clamp, g(s_out.x),
                     g(s_out.v), g(s_out.C), g(s_out.F), g(s_out.Jp), g(sc.grid_v), g(sc.grid_mv), g(sc.grid_m),
                     g(s_in.x), g(s_in.v), g(s_in.C), g(s_in.F), g(s_in.Jp), g(m.E), g(m.nu), g(m.vol), g(m.rho),
                     g(m.fibre), g(sc.act), m.n if self.use_muscle and control is not None else 0, g(m.muscle),
                     g(act))
            sc._grid_v_grad_clean = sc.grid_v.grad is not None
            return
        # the generated stress adjoints: hand-written adjoints of G2P, the grid update and P2G, then Taichi's
        k.g2p_adjoint(s_in.x, sc.grid_v, m.dx, dt, g(s_out.x), g(s_out.v), g(s_out.C), g(s_in.x), g(sc.grid_v))
        k.grid_adjoint(sc.box, sc.grid_mv, sc.grid_m, m.gravity, dt, m.dx, m.bound, m.heights, m.normals,
                       self._floor_kind, m.boundary.floor_friction, self._wall_kind, m.boundary.wall_friction,
                       *self._clamp, g(sc.grid_v), g(sc.grid_mv), g(sc.grid_m))
        sc._grid_v_grad_clean = sc.grid_v.grad is not None
        k.p2g_adjoint(s_in.x, s_in.v, s_in.C, sc.tau, m.vol, m.rho, m.dx, dt, g(sc.grid_mv), g(sc.grid_m),
                      g(s_in.x), g(s_in.v), g(s_in.C), g(sc.tau), g(m.vol), g(m.rho))
        k.ad.stress.grad(sc.F_tr, sc.U, sc.sig, sc.V, s_in.Jp, m.material, m.E, m.nu, sc.act, m.fibre, m.table,
                         dt, s_out.F, s_out.Jp, sc.tau)
        if self.use_muscle:
            k.muscle.grad(m.muscle, control.act, sc.act)
        if self.use_svd:
            k.svd_backward(sc.U, sc.sig, sc.V, sc.U.grad, sc.sig.grad, sc.V.grad, sc.F_tr.grad)
        k.ad.deform.grad(s_in.C, s_in.F, dt, sc.F_tr)

    def zero_scratch_grad(self, sc: Scratch, model: Model | None = None) -> Scratch:
        """Zero the grads of ``sc`` that ``backward`` accumulates into (``Scratch.zero_grad_`` zeroes all of them):
        with hand-written stress adjoints only the grid velocity's; the others it overwrites or never touches."""
        if self._hand(model or self.model):
            if not getattr(sc, "_grid_v_grad_clean", False):  # a completed backward leaves it zeroed
                sc.grid_v.grad.zero_()
            return sc
        return sc.zero_grad_()

    def _hand(self, m: Model) -> bool:
        """Whether ``m`` runs the hand-written stress adjoints (``materials.HAND_ADJOINT``; see ``stress_adjoint``)."""
        return self.hand_stress and m.material is self.model.material

    def _grad(self, t: torch.Tensor) -> torch.Tensor:
        """``t.grad``, or for a tensor without one a pooled zero sink that the hand-written adjoints write into
        (the same buffer every call, so launch contexts stay cached)."""
        if t.grad is not None:
            return t.grad
        key = (tuple(t.shape), t.dtype)
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._sinks[key] = torch.zeros_like(t, memory_format=torch.contiguous_format)
        return sink

    # ----------------------------------------------------------------------------------------------- helpers
    def advance(self, state: State, n_substeps: int, dt: float, control: Control | None = None) -> State:
        """Run ``n_substeps`` in place on ``state`` (ping-pong with an internal buffer). Returns ``state``."""
        if not hasattr(self, "_spare") or self._spare.x.shape != state.x.shape:
            self._spare = state.empty_like()
        a, b = state, self._spare
        for _ in range(int(n_substeps)):
            self.step(a, b, control, dt)
            a, b = b, a
        if a is not state:
            state.copy_(a)
        self.check(state, dt)
        return state

    def energy(self, state: State) -> dict:
        """Kinetic and gravitational potential energy [J] and total mass [kg] (diagnostics)."""
        m = self.model
        mass = (m.vol * m.rho).detach()
        g = torch.as_tensor(m.gravity, dtype=mass.dtype, device=mass.device)
        return {"kinetic": float(0.5 * (mass[:, None] * state.v.detach() ** 2).sum()),
                "potential": float(-(mass[:, None] * state.x.detach() * g).sum()), "mass": float(mass.sum())}


