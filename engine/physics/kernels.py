"""Taichi kernels of one MLS-MPM substep (Hu et al. 2018, "A moving least squares material point method"),
with APIC transfers (Jiang et al. 2015) and the quadratic B-spline.

One set per (dimension, precision), built on first use: arrays are ``ti.types.ndarray`` so a kernel compiles once
per dimension whatever the particle count or grid size (fields would recompile per solver instance). Taichi also
keys kernels on which arguments require grad, so callers keep that pattern fixed (see ``Solver``).

Substep order (DiffTaichi/PlasticineLab style, every stage a separate kernel so its gradient can be replayed):
    deform   F_tr = (I + dt·C)·F
    svd      F_tr = U·diag(σ)·Vᵀ                       (hand-written gradient, svd.py)
    muscle   a_p = Σ_g w_pg·a_g
    stress   plasticity → F_new, Jp_new; Kirchhoff τ  (materials.py)
    p2g      m_i, (m·v)_i from particles
    grid     v_i = (m·v)_i / m_i + dt·g, then colliders
    g2p      v_p, C_p, x_p ← grid

With the hand-written stress adjoints (every material's, ``materials.build_stress_adjoint``) a substep is one
launch each way, its stages running as loops of one kernel, with no torch calls in between:
    substep[_svd]  P2G with deform, SVD, muscle, plasticity and stress inline (the new F's blow-up check too),
                   the grid update over the nodes P2G wrote (its ``box``), G2P with the x/v blow-up check (a flag
                   the solver reads every few substeps); ``_svd`` also stores the SVD the SVD materials' adjoint
                   reads. The forward-only path (``Solver.step`` without a scratch, ``Rollout.run``) and the
                   differentiable forward (into a ``Scratch``, keeping τ) run the same kernel
    backward[_svd] hand-written adjoints of G2P (a scatter into the grid velocity's grad), the grid update with
                   its colliders (per node, no atomics), P2G with the stress and deform (a gather over each
                   particle's 3^d stencil, no atomics; τ's grad stays in registers), then the muscle activations'
                   sum (weights and activations)
    substep_chunked  forward-only, larger scenes on multi-core CPUs: P2G in per-thread chunks into per-thread grid
                   copies, summed by the grid update (see its comment)
It computes the same numbers as the staged kernels (tests/physics/test_fast_path.py).
``Solver(stress_adjoint="generated")`` keeps the staged kernels for the SVD-based materials, with hand-written
adjoints of G2P (``g2p_adjoint``), the grid (``grid_adjoint``) and P2G (``p2g_adjoint``), and Taichi's generated
adjoints of stress and deform (``ad``), the SVD's hand-written one and muscle's: they carry every material's
branch, cost more and compile several times longer, and are kept for comparison (tests/physics/test_gradients.py
checks both against central differences and against each other).

On CPUs the scatter loops (P2G, and G2P's gradient) run serialised: Taichi then turns their float atomics into
plain adds, which is about 5x faster on this box than two threads contending through compare-and-swap loops.
Reverse mode on CPUs also runs serialised twins of deform and stress (``ad``), whose generated adjoints would
otherwise accumulate through atomics. GPUs keep the parallel atomic versions. Small scenes on CPUs (``serial_all``)
run every loop serialised, so the forward kernels are their own reverse-mode twins.

Every kernel is called through ``_Launch``, which re-uses Taichi's launch context while the tensors passed stay the
same (Python-side argument set-up was ~40% of a small scene's substep), and the grid loops run only over the box
of nodes P2G wrote (see ``box_rows``).
"""

import functools
import itertools
import weakref
from types import SimpleNamespace

import taichi as ti
from taichi.lang import impl

from .. import backend, launch
from . import materials, svd
from .model import SLIP, STICKY

__all__ = ["build", "serial_scatter", "serial_all"]


def serial_scatter() -> bool:
    """Whether scatter loops run serialised: on CPU arches (see the module docstring), not on GPUs."""
    from .. import backend

    return backend.ensure().resolved_arch in ("x64", "arm64")


try:
    from torch import Tensor as _Tensor
except ImportError:  # pragma: no cover - torch is a dependency of the bridge
    _Tensor = ()


def _no_grad():
    return None


class _Launch:
    """Calls a Taichi kernel whose arguments are torch tensors (``ti.types.ndarray``) and scalars, re-using the
    launch context Taichi builds while the tensors passed stay the same.

    Taichi's per-call set-up of a tensor argument (template look-up, type and contiguity checks, shape stripping)
    costs ~10 µs in Python, more than most of these kernels run on ~3k particles, and a substep's kernels take
    ~60 tensors. A launch context holds only each tensor's data and grad pointers and shape, so it stays valid for
    any later call with the same tensor objects holding the same ``.grad`` objects: contexts are cached under the
    tensors' ids, and a hit checks, through weak references, that each id still names the tensor it was made for
    and that its ``.grad`` is the same object (a re-allocated grad buffer, ``requires_grad_`` again, misses); only
    the scalar arguments are set again. Reading shapes, pointers and flags of every tensor on every launch cost
    ~1 µs per tensor (~100 µs per 2D co-design substep). A tensor whose storage is swapped in place (``.data =``,
    ``set_``, ``resize_``) between launches is not noticed; tide does neither. A miss takes Taichi's ordinary path
    (which compiles on first use and checks the arguments), and caches a context when every tensor is a
    contiguous CPU tensor whose grad, if Taichi would want one, exists. ``.grad`` is the adjoint kernel, wrapped
    the same way.
    """

    MAX_CONTEXTS = 512  # per kernel; the checkpointed backward cycles through K (states, scratch) sets

    def __init__(self, kernel, fast: bool):
        self.kernel = kernel
        self.fast = fast
        self._kernel = getattr(kernel, "_primal", kernel)  # the Kernel object behind @ti.kernel's wrapper
        self._ctx = {}
        self._tpos = None  # positions of the tensor (ndarray) arguments, from the first plan
        adjoint = getattr(kernel, "grad", None)
        if adjoint is not None:
            self.grad = _Launch(adjoint, fast)

    @staticmethod
    def _cacheable(args) -> bool:
        """Whether a context can serve these arguments (the conditions of the class docstring)."""
        for a in args:
            if isinstance(a, _Tensor):
                if not a.is_cpu or not a.is_contiguous():
                    return False
                g = a.grad
                if g is None:
                    if a.requires_grad:
                        return False
                elif not g.is_contiguous():
                    return False
        return True

    def __call__(self, *args):
        if not self.fast:
            return self.kernel(*args)
        tpos = self._tpos
        ident = None
        if tpos is not None:
            ident = tuple([id(args[i]) for i in tpos])
            hit = self._ctx.get(ident)
            if hit is not None:
                ctx, compiled, scalars, refs = hit
                for i, ref, gref in refs:
                    a = args[i]
                    if ref() is not a or a.grad is not gref():
                        break
                else:
                    launch.set_args(ctx, scalars, args)
                    impl.get_runtime().prog.launch_kernel(compiled, ctx)
                    return None
        self.kernel(*args)  # Taichi's path: compiles on first use and checks the arguments
        entry = self._context(args) if self._cacheable(args) else None
        if entry is not None:
            if ident is None:
                ident = tuple([id(args[i]) for i in self._tpos])
            if len(self._ctx) >= self.MAX_CONTEXTS:
                self._ctx.pop(next(iter(self._ctx)))
            self._ctx[ident] = entry
        return None

    def _context(self, args):
        tk, compiled, slots = launch.plan(self._kernel, args)
        ctx = tk.make_launch_context()
        launch.set_args(ctx, slots, args)
        if self._tpos is None:
            self._tpos = tuple(s[0] for s in slots if s[1] == launch.NDARRAY)
        refs = []
        for i in self._tpos:
            if not isinstance(args[i], _Tensor):  # e.g. a numpy array: Taichi's path every time
                return None
            g = args[i].grad
            refs.append((i, weakref.ref(args[i]), _no_grad if g is None else weakref.ref(g)))
        return ctx, compiled, [s for s in slots if s[1] != launch.NDARRAY], tuple(refs)


def _launchers(ns: SimpleNamespace, fast: bool) -> SimpleNamespace:
    return SimpleNamespace(**{k: (_launchers(v, fast) if isinstance(v, SimpleNamespace) else _Launch(v, fast))
                              for k, v in vars(ns).items()})


SMALL_PARTICLES = 16384
"""``serial_all``: scenes up to this many particles (and ``SMALL_NODES`` grid nodes) run every loop serialised."""
SMALL_NODES = 128 * 128 * 4


def serial_all(n_particles: int, n_nodes: int) -> bool:
    """Whether a scene is small enough to run every loop serialised on a CPU. Waking the worker threads of a
    parallel loop costs ~40 µs per launch on a 2-core box (much more while other processes load it), more than a
    2D co-design scene's kernels (~3k particles, 128² nodes) gain from the second core; the serialised kernels
    are also their own reverse-mode twins, so fewer kernels compile."""
    return serial_scatter() and n_particles <= SMALL_PARTICLES and n_nodes <= SMALL_NODES


@functools.lru_cache(maxsize=None)
def build(dim: int, real, serial: bool = False, small: bool = False) -> SimpleNamespace:
    """Kernels for ``dim`` (2 or 3) in float type ``real``; see the module docstring for the stage order.
    ``serial``: serialise the scatter loops (``serial_scatter()``); with ``small`` too, every loop
    (``serial_all``)."""
    ser_all = serial and small
    D = dim
    vec = ti.types.vector(D, real)
    mat = ti.types.matrix(D, D, real)
    P_vec = ti.types.ndarray(dtype=vec, ndim=1)
    P_mat = ti.types.ndarray(dtype=mat, ndim=1)
    P_s = ti.types.ndarray(dtype=real, ndim=1)
    G_vec = ti.types.ndarray(dtype=vec, ndim=D)
    G_s = ti.types.ndarray(dtype=real, ndim=D)
    H_s = ti.types.ndarray(dtype=real, ndim=D - 1)
    H_vec = ti.types.ndarray(dtype=vec, ndim=D - 1)
    W_s = ti.types.ndarray(dtype=real, ndim=2)
    A_i = ti.types.ndarray(dtype=ti.i32, ndim=1)
    STENCIL = (3,) * D
    T_ = ti.template()

    @ti.func
    def bspline(x, inv_dx, res):
        """Base node, fractional offset and quadratic B-spline weights of a particle at x."""
        Xp = x * inv_dx
        base = ti.cast(Xp - 0.5, ti.i32)
        for d in ti.static(range(D)):  # keep memory safe for a blown-up particle; the guard reports it
            base[d] = ti.min(ti.max(base[d], 0), res[d] - 3)
        fx = Xp - ti.cast(base, real)
        w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
        return base, fx, w

    @ti.func
    def scatter(p, xp, vp, Cp, taup, mass, volp, dx, dt, grid_mv: T_, grid_m: T_, box: T_):
        """APIC/MLS-MPM P2G of one particle into grid momentum and mass (grids must start zeroed). With serialised
        scatters (CPUs) it also grows ``box`` to cover the particle's stencil (see ``begin_p2g``)."""
        inv_dx = 1.0 / dx  # inside the loop: Taichi's autodiff wants kernels made of loops only
        res = grid_m.shape
        base, fx, w = bspline(xp, inv_dx, res)
        if ti.static(serial):  # a serial loop: plain loads and stores, no atomics
            for d in ti.static(range(D)):
                box[d] = ti.min(box[d], base[d])
                box[D + d] = ti.max(box[D + d], base[d] + 3)
        # MLS-MPM momentum: stress enters as −dt·V·M⁻¹·τ with M⁻¹ = 4/dx² for the quadratic kernel
        affine = -dt * volp * 4.0 * inv_dx * inv_dx * taup + mass * Cp
        for offs in ti.static(ti.grouped(ti.ndrange(*STENCIL))):
            dpos = (ti.cast(offs, real) - fx) * dx
            weight = ti.cast(1.0, real)
            for d in ti.static(range(D)):
                weight *= w[offs[d]][d]
            grid_mv[base + offs] += weight * (mass * vp + affine @ dpos)
            grid_m[base + offs] += weight * mass

    @ti.func
    def gather(p, x: T_, grid_v: T_, dx, dt, x_out: T_, v_out: T_, C_out: T_):
        """G2P of particle p: APIC velocity and affine matrix from the grid, then the position update."""
        inv_dx = 1.0 / dx
        res = grid_v.shape
        base, fx, w = bspline(x[p], inv_dx, res)
        new_v = vec(0.0)
        new_C = mat(0.0)
        for offs in ti.static(ti.grouped(ti.ndrange(*STENCIL))):
            dpos = (ti.cast(offs, real) - fx) * dx
            weight = ti.cast(1.0, real)
            for d in ti.static(range(D)):
                weight *= w[offs[d]][d]
            gv = grid_v[base + offs]
            new_v += weight * gv
            new_C += 4.0 * inv_dx * inv_dx * weight * gv.outer_product(dpos)
        v_out[p] = new_v
        C_out[p] = new_C
        x_out[p] = x[p] + dt * new_v

    @ti.func
    def flag_bad(bad_val, out, step, flag: T_):
        # flag[0]: first bad substep; flag[1]: a non-finite value; flag[2]: a particle outside the domain
        if bad_val or out:
            ti.atomic_min(flag[0], step)
            flag[1] = ti.max(flag[1], bad_val)
            flag[2] = ti.max(flag[2], out)

    @ti.func
    def check_xv(xp, vp, lo, hi, step, flag: T_):
        bad_val = 0
        for d in ti.static(range(D)):
            if not (ti.abs(xp[d]) < 1e30 and ti.abs(vp[d]) < 1e30):  # false for NaN too
                bad_val = 1
        out = 0
        for d in ti.static(range(D)):
            if xp[d] < lo or xp[d] >= hi[d]:
                out = 1
        flag_bad(bad_val, out, step, flag)

    @ti.func
    def check_F(Fp, step, flag: T_):
        if not (ti.abs(Fp.determinant()) < 1e30):
            flag_bad(1, 0, step, flag)

    @ti.func
    def check_particle(p, x: T_, v: T_, F: T_, lo, hi, step, flag: T_):
        check_xv(x[p], v[p], lo, hi, step, flag)
        check_F(F[p], step, flag)

    def make_deform(ser):
        @ti.kernel
        def deform(C: P_mat, F: P_mat, dt: real, F_tr: P_mat):
            ti.loop_config(serialize=ser)
            for p in range(F.shape[0]):
                F_tr[p] = (ti.Matrix.identity(real, D) + dt * C[p]) @ F[p]
        return deform

    deform = make_deform(ser_all)

    @ti.kernel
    def muscle(w: W_s, act: P_s, out: P_s):
        # out must be zeroed; one atomic add per (particle, channel) keeps the gradient a plain transpose. Serialised
        # on CPUs: the adjoint adds every particle into the few act[g], which two threads contend for
        ti.loop_config(serialize=serial)
        for p, g in ti.ndrange(w.shape[0], w.shape[1]):
            out[p] += w[p, g] * act[g]

    @ti.kernel
    def p2g(x: P_vec, v: P_vec, C: P_mat, tau: P_mat, vol: P_s, rho: P_s, dx: real, dt: real,
            grid_mv: G_vec, grid_m: G_s, box: A_i):
        begin_p2g(grid_mv, grid_m, box)
        ti.loop_config(serialize=serial)
        for p in range(x.shape[0]):
            scatter(p, x[p], v[p], C[p], tau[p], vol[p] * rho[p], vol[p], dx, dt, grid_mv, grid_m, box)

    @ti.func
    def collide(v, n, kind, mu):
        """Velocity after a static collider with outward normal n: sticky, slip or separate, Coulomb μ."""
        vn = v.dot(n)
        out = v
        if kind == STICKY:
            out = ti.Vector.zero(real, D)
        elif kind == SLIP or vn < 0:
            vt = v - vn * n
            if vn < 0 and mu > 0:
                vt_norm = ti.sqrt(vt.dot(vt) + 1e-30)
                vt *= ti.max(0.0, 1.0 + mu * vn / vt_norm)
            out = vt
        return out

    @ti.func
    def node_velocity(I, mv, m, res, gravity, dt, dx, bound, heights: T_, normals: T_, floor_kind,
                      floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi):
        """Grid node I: velocity from momentum mv and mass m, gravity, then the terrain, wall and clamp
        colliders."""
        v = ti.Vector.zero(real, D)
        if m > 0:
            v = mv / m + dt * gravity
            h = 0.0
            n = vec(0.0)
            if ti.static(D == 2):
                h = heights[I[0]]
                n = normals[I[0]]
            else:
                h = heights[I[0], I[2]]
                n = normals[I[0], I[2]]
            if I[1] * dx < h:
                v = collide(v, n, floor_kind, floor_mu)
            for d in ti.static(range(D)):
                e = vec(0.0)
                e[d] = 1.0
                if ti.static(d != 1):  # the floor is the heightfield (never below the wall band)
                    if I[d] < bound:
                        v = collide(v, e, wall_kind, wall_mu)
                if I[d] >= res[d] - bound:
                    v = collide(v, -e, wall_kind, wall_mu)
            xi = ti.cast(I, real) * dx
            if all(xi >= clamp_lo) and all(xi <= clamp_hi):
                v = vec(0.0)
        return v

    # Grid-node loops run over ``box``, an int32 array (lo_0..lo_{d-1}, hi_0..hi_{d-1}): the nodes lo <= I < hi.
    # With serialised scatters (CPUs) P2G sets it to the bounding box of its particles' stencils, the only nodes
    # it writes (a 2D co-design robot covers ~1/10 of its 128^2 grid, a fluid block ~1/16 of a 3D one); nodes
    # outside keep zero momentum and mass, and nothing reads their velocity (G2P and its adjoint gather the same
    # stencils). GPUs run P2G in parallel, with no cheap way to grow a shared box: theirs stays the whole grid.
    @ti.func
    def box_rows(box: T_, o=0):
        """Number of rows (runs of nodes along the last axis) in ``box`` (the one starting at entry o)."""
        n = 1
        for d in ti.static(range(D - 1)):
            n *= ti.max(0, box[o + D + d] - box[o + d])
        return n

    @ti.func
    def box_row_start(r, box: T_, o=0):
        """Grid index of the first node of row r of ``box`` (the one starting at entry o)."""
        I = ti.Vector([0] * D)
        for d in ti.static(range(D - 2, -1, -1)):
            n = ti.max(1, box[o + D + d] - box[o + d])
            I[d] = box[o + d] + r % n
            r //= n
        I[D - 1] = box[o + D - 1]
        return I

    @ti.func
    def box_nodes(box: T_):
        return box_rows(box) * ti.max(0, box[2 * D - 1] - box[D - 1])

    @ti.func
    def box_node(q, box: T_):
        """Grid index of flat node number q of ``box`` (a flat range loop can be serialised, a struct-for cannot)."""
        I = ti.Vector([0] * D)
        for d in ti.static(range(D - 1, -1, -1)):
            n = ti.max(1, box[D + d] - box[d])
            I[d] = box[d] + q % n
            q //= n
        return I

    @ti.func
    def grid_node(I, grid_mv: T_, grid_m: T_, gravity, dt, dx, bound, heights: T_, normals: T_, floor_kind, floor_mu,
                  wall_kind, wall_mu, clamp_lo, clamp_hi, grid_v: T_):
        grid_v[I] = node_velocity(I, grid_mv[I], grid_m[I], grid_m.shape, gravity, dt, dx, bound, heights, normals,
                                  floor_kind, floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi)

    @ti.func
    def clear_node(I, grid_mv: T_, grid_m: T_):
        grid_mv[I] = vec(0.0)
        grid_m[I] = 0.0

    @ti.func
    def begin_p2g(grid_mv: T_, grid_m: T_, box: T_):
        """Start of every P2G kernel: zero the nodes the previous P2G into these grids wrote (``box``; everything
        else is zero already), then, with serialised scatters, empty the box for the scatter to grow."""
        if ti.static(serial):
            ti.loop_config(serialize=ser_all)
            for r in range(box_rows(box)):
                I = box_row_start(r, box)
                for k in range(box[D - 1], box[2 * D - 1]):
                    I[D - 1] = k
                    clear_node(I, grid_mv, grid_m)
            for d in ti.static(range(D)):
                box[d] = 1 << 30
                box[D + d] = 0
        else:
            for q in range(box_nodes(box)):
                clear_node(box_node(q, box), grid_mv, grid_m)

    @ti.func
    def grid_loop(box: T_, grid_mv: T_, grid_m: T_, gravity, dt, dx, bound, heights: T_, normals: T_, floor_kind,
                  floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi, grid_v: T_):
        # Node loops on CPUs run in parallel over rows, serially along each row: one divide and modulo per row
        # instead of per node (the box shape is a runtime value, so each is a real division; a flat loop spent 3x
        # as long on a 64^3 grid). GPUs keep a flat loop over nodes for its parallelism.
        if ti.static(serial):
            ti.loop_config(serialize=ser_all)
            for r in range(box_rows(box)):
                I = box_row_start(r, box)
                for k in range(box[D - 1], box[2 * D - 1]):
                    I[D - 1] = k
                    grid_node(I, grid_mv, grid_m, gravity, dt, dx, bound, heights, normals, floor_kind, floor_mu,
                              wall_kind, wall_mu, clamp_lo, clamp_hi, grid_v)
        else:
            for q in range(box_nodes(box)):
                grid_node(box_node(q, box), grid_mv, grid_m, gravity, dt, dx, bound, heights, normals,
                          floor_kind, floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi, grid_v)

    @ti.kernel
    def grid(box: A_i, grid_mv: G_vec, grid_m: G_s, gravity: vec, dt: real, dx: real, bound: ti.i32, heights: H_s,
             normals: H_vec, floor_kind: ti.i32, floor_mu: real, wall_kind: ti.i32, wall_mu: real,
             clamp_lo: vec, clamp_hi: vec, grid_v: G_vec):
        grid_loop(box, grid_mv, grid_m, gravity, dt, dx, bound, heights, normals, floor_kind, floor_mu, wall_kind,
                  wall_mu, clamp_lo, clamp_hi, grid_v)

    def make_g2p(ser):
        @ti.kernel
        def g2p(x: P_vec, grid_v: G_vec, dx: real, dt: real, x_out: P_vec, v_out: P_vec, C_out: P_mat):
            ti.loop_config(serialize=ser)
            for p in range(x.shape[0]):
                gather(p, x, grid_v, dx, dt, x_out, v_out, C_out)
        return g2p

    g2p = make_g2p(ser_all)

    @ti.kernel
    def check(x: P_vec, v: P_vec, F: P_mat, lo: real, hi: vec, step: ti.i32, flag: A_i):
        ti.loop_config(serialize=ser_all)
        for p in range(x.shape[0]):
            check_particle(p, x, v, F, lo, hi, step, flag)

    # ---------------------------------------------------------------------------- fused forward-only path
    stress_kernel, update, stress_serial = materials.build_stress(dim, real)
    decompose = svd.decompose_func(dim, real)

    @ti.func
    def deform_stress(p, C: T_, F: T_, Jp: T_, material: T_, E: T_, nu: T_, muscle: T_, act: T_, fibre: T_,
                      table: T_, dt, F_out: T_, Jp_out: T_, tau: T_, step, flag: T_):
        """One particle's trial F = (I + dt C) F, its SVD, the muscle activation, plasticity and stress (``update``
        writes F_out, Jp_out, tau) and the new F's blow-up check. Returns (material, U, sigma, V) of the trial F."""
        F_tr = (ti.Matrix.identity(real, D) + dt * C[p]) @ F[p]
        m = material[p]
        u, s, vv = decompose(F_tr, m)
        a = ti.cast(0.0, real)
        if m == materials.MUSCLE:
            for g in range(muscle.shape[1]):
                a += muscle[p, g] * act[g]
        update(p, F_tr, u, s, vv, Jp, material, E, nu, a, fibre, table, dt, F_out, Jp_out, tau)
        check_F(F_out[p], step, flag)
        return m, u, s, vv

    @ti.func
    def p2g_fused_loop(x: T_, v: T_, C: T_, F: T_, Jp: T_, material: T_, E: T_, nu: T_, rho: T_, vol: T_, muscle: T_,
                       act: T_, fibre: T_, table: T_, dx, dt, F_out: T_, Jp_out: T_, tau: T_, grid_mv: T_,
                       grid_m: T_, box: T_, U: T_, sig: T_, V: T_, store_svd: ti.template(), step, flag: T_):
        """Deform, SVD, muscle activation, plasticity and stress inline, then the scatter (after ``begin_p2g``).
        With ``store_svd`` it also stores the SVD materials' trial-F SVD, which their stress adjoint reads. The
        new F's blow-up check is made here, where F is at hand (G2P checks x and v)."""
        begin_p2g(grid_mv, grid_m, box)
        ti.loop_config(serialize=serial)
        for p in range(x.shape[0]):
            m, u, s, vv = deform_stress(p, C, F, Jp, material, E, nu, muscle, act, fibre, table, dt, F_out, Jp_out,
                                        tau, step, flag)
            scatter(p, x[p], v[p], C[p], tau[p], vol[p] * rho[p], vol[p], dx, dt, grid_mv, grid_m, box)
            if ti.static(store_svd):
                if m != materials.ELASTIC and m != materials.MUSCLE and m != materials.WATER:
                    U[p] = u
                    sig[p] = s
                    V[p] = vv

    @ti.func
    def g2p_check_loop(x: T_, grid_v: T_, dx, dt, x_out: T_, v_out: T_, C_out: T_, F_out: T_, lo, hi, step,
                       flag: T_, with_F: ti.template()):
        ti.loop_config(serialize=ser_all)
        for p in range(x.shape[0]):
            gather(p, x, grid_v, dx, dt, x_out, v_out, C_out)
            check_xv(x_out[p], v_out[p], lo, hi, step, flag)
            if ti.static(with_F):
                check_F(F_out[p], step, flag)

    def make_substep(store_svd):
        @ti.kernel
        def substep(x: P_vec, v: P_vec, C: P_mat, F: P_mat, Jp: P_s, material: A_i, E: P_s, nu: P_s, rho: P_s,
                    vol: P_s, muscle: W_s, act: P_s, fibre: P_vec, table: W_s, dx: real, dt: real, tau: P_mat,
                    grid_mv: G_vec, grid_m: G_s, box: A_i, U: P_mat, sig: P_vec, V: P_mat, gravity: vec,
                    bound: ti.i32, heights: H_s, normals: H_vec, floor_kind: ti.i32, floor_mu: real,
                    wall_kind: ti.i32, wall_mu: real, clamp_lo: vec, clamp_hi: vec, grid_v: G_vec, x_out: P_vec,
                    v_out: P_vec, C_out: P_mat, F_out: P_mat, Jp_out: P_s, lo: real, hi: vec, step: ti.i32,
                    flag: A_i):
            # a whole substep in one launch (three loops, run in order): P2G with the stress inline, the grid
            # update over P2G's box, G2P with the blow-up check. Without ``store_svd`` U, sig, V are not touched
            p2g_fused_loop(x, v, C, F, Jp, material, E, nu, rho, vol, muscle, act, fibre, table, dx, dt, F_out,
                           Jp_out, tau, grid_mv, grid_m, box, U, sig, V, store_svd, step, flag)
            grid_loop(box, grid_mv, grid_m, gravity, dt, dx, bound, heights, normals, floor_kind, floor_mu,
                      wall_kind, wall_mu, clamp_lo, clamp_hi, grid_v)
            g2p_check_loop(x, grid_v, dx, dt, x_out, v_out, C_out, F_out, lo, hi, step, flag, False)
        return substep

    substep = make_substep(False)
    substep_svd = make_substep(True)

    # Forward-only substep for larger scenes on CPUs (serialised scatters, not ``small``): P2G in NC chunks of
    # particles, one per worker thread, each scattering with plain adds into its own copy of the momentum/mass
    # grid (NC, *res[, d]) and growing its own box (entries 2dc..2dc+2d−1 of ``box``; entry 2d·NC on: their
    # union); the grid update sums the copies. One thread's serialised P2G was most of a 3D substep at 128^3.
    # Only the forward-only path: its sums differ from the serial P2G's in the order of the adds (round-off).
    NC = max(1, min(4, int(impl.current_cfg().cpu_max_num_threads)))
    SPAN = backend.CPU_SPAN
    chunked = serial and not ser_all and NC > 1
    GC_vec = ti.types.ndarray(dtype=vec, ndim=D + 1)
    GC_s = ti.types.ndarray(dtype=real, ndim=D + 1)

    @ti.func
    def cidx(c, I):
        J = ti.Vector([0] * (D + 1))
        J[0] = c
        for d in ti.static(range(D)):
            J[d + 1] = I[d]
        return J

    @ti.kernel
    def substep_chunked(x: P_vec, v: P_vec, C: P_mat, F: P_mat, Jp: P_s, material: A_i, E: P_s, nu: P_s, rho: P_s,
                        vol: P_s, muscle: W_s, act: P_s, fibre: P_vec, table: W_s, dx: real, dt: real, tau: P_mat,
                        grid_mv: GC_vec, grid_m: GC_s, box: A_i, gravity: vec, bound: ti.i32, heights: H_s,
                        normals: H_vec, floor_kind: ti.i32, floor_mu: real, wall_kind: ti.i32, wall_mu: real,
                        clamp_lo: vec, clamp_hi: vec, grid_v: G_vec, x_out: P_vec, v_out: P_vec, C_out: P_mat,
                        F_out: P_mat, Jp_out: P_s, lo: real, hi: vec, step: ti.i32, flag: A_i):
        # zero each copy where its previous P2G wrote (rows of all NC boxes, in parallel), empty the boxes
        nr = 0
        for c in ti.static(range(NC)):
            nr = ti.max(nr, box_rows(box, 2 * D * c))
        for cr in range(NC * nr):
            c = cr // nr
            r = cr % nr
            o = 2 * D * c
            if r < box_rows(box, o):
                I = box_row_start(r, box, o)
                for k in range(box[o + D - 1], box[o + 2 * D - 1]):
                    I[D - 1] = k
                    grid_mv[cidx(c, I)] = vec(0.0)
                    grid_m[cidx(c, I)] = 0.0
        for c in ti.static(range(NC)):
            for d in ti.static(range(D)):
                box[2 * D * c + d] = 1 << 30
                box[2 * D * c + D + d] = 0
        # P2G: chunk c of the particles into copy c (one thread each; plain loads and stores, no atomics). The
        # loop runs SPAN iterations per chunk and only every SPAN-th works: Taichi's CPU range-for gives a thread
        # at least backend.CPU_SPAN iterations, so a loop of NC iterations ran every chunk on one thread
        for it in range(NC * SPAN):
            if it % SPAN != 0:
                continue
            c = it // SPAN
            n = x.shape[0]
            o = 2 * D * c
            for p in range(c * n // NC, (c + 1) * n // NC):
                deform_stress(p, C, F, Jp, material, E, nu, muscle, act, fibre, table, dt, F_out, Jp_out, tau, step,
                              flag)
                # the scatter (``scatter``'s arithmetic) into copy c
                inv_dx = 1.0 / dx
                base, fx, w = bspline(x[p], inv_dx, grid_v.shape)
                for d in ti.static(range(D)):
                    box[o + d] = ti.min(box[o + d], base[d])
                    box[o + D + d] = ti.max(box[o + D + d], base[d] + 3)
                mass = vol[p] * rho[p]
                affine = -dt * vol[p] * 4.0 * inv_dx * inv_dx * tau[p] + mass * C[p]
                vp = v[p]
                for offs in ti.static(ti.grouped(ti.ndrange(*STENCIL))):
                    dpos = (ti.cast(offs, real) - fx) * dx
                    weight = ti.cast(1.0, real)
                    for d in ti.static(range(D)):
                        weight *= w[offs[d]][d]
                    J = cidx(c, base + offs)
                    grid_mv[J] = grid_mv[J] + weight * (mass * vp + affine @ dpos)
                    grid_m[J] = grid_m[J] + weight * mass
        # the union of the boxes, then the grid update over it, summing the copies
        u0 = 2 * D * NC
        for d in ti.static(range(D)):
            b_lo = 1 << 30
            b_hi = 0
            for c in ti.static(range(NC)):
                b_lo = ti.min(b_lo, box[2 * D * c + d])
                b_hi = ti.max(b_hi, box[2 * D * c + D + d])
            box[u0 + d] = b_lo
            box[u0 + D + d] = b_hi
        for r in range(box_rows(box, u0)):
            I = box_row_start(r, box, u0)
            for k in range(box[u0 + D - 1], box[u0 + 2 * D - 1]):
                I[D - 1] = k
                mv = vec(0.0)
                mm = ti.cast(0.0, real)
                for c in ti.static(range(NC)):
                    mv += grid_mv[cidx(c, I)]
                    mm += grid_m[cidx(c, I)]
                grid_v[I] = node_velocity(I, mv, mm, grid_v.shape, gravity, dt, dx, bound, heights, normals,
                                          floor_kind, floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi)
        g2p_check_loop(x, grid_v, dx, dt, x_out, v_out, C_out, F_out, lo, hi, step, flag, False)

    @ti.kernel
    def g2p_check(x: P_vec, grid_v: G_vec, dx: real, dt: real, x_out: P_vec, v_out: P_vec, C_out: P_mat,
                  F_out: P_mat, lo: real, hi: vec, step: ti.i32, flag: ti.types.ndarray(dtype=ti.i32, ndim=1)):
        g2p_check_loop(x, grid_v, dx, dt, x_out, v_out, C_out, F_out, lo, hi, step, flag, True)

    # ---------------------------------------------------------------------------- hand-written adjoints
    @ti.func
    def bspline_grad(fx):  # returns a list like ``bspline``'s w, indexed by static offsets
        """Derivatives of the quadratic B-spline weights w (``bspline``) with respect to fx."""
        return [fx - 1.5, -2.0 * (fx - 1.0), fx - 0.5]

    OFFSETS = list(itertools.product(range(3), repeat=D))  # the 3^d stencil as tuples of Python ints

    @ti.func
    def p2g_grad(p, x: T_, v: T_, C: T_, tau: T_, vol: T_, rho: T_, dx, dt, g_mv: T_, g_m: T_, g_x: T_, g_v: T_,
                 g_vol: T_, g_rho: T_):
        """Particle p of the P2G adjoint: a gather over its 3^d stencil (every write is the particle's own, so no
        atomics and no serialisation). Accumulates into g_x, g_v, g_vol, g_rho; returns the C and τ grads. With
        dpos_o = (o − fx)·dx the per-node terms split into particle constants and products with the literal
        offset o, which fold."""
        inv_dx = 1.0 / dx
        base, fx, w = bspline(x[p], inv_dx, g_m.shape)
        dw = bspline_grad(fx)
        mass = vol[p] * rho[p]
        k = -dt * 4.0 * inv_dx * inv_dx
        A = k * vol[p] * tau[p] + mass * C[p]
        dxA = dx * A
        c0 = mass * v[p] - dxA @ fx  # mass·v + A·dpos_o = c0 + dx·A·o
        g_B = mat(0.0)  # Σ_o w_o·g_o ⊗ o
        g_mvp = vec(0.0)
        g_mass = ti.cast(0.0, real)
        g_fx = vec(0.0)
        for o in ti.static(OFFSETS):
            ov = ti.Vector(o, dt=real)
            weight = ti.cast(1.0, real)
            for d in ti.static(range(D)):
                weight *= w[o[d]][d]
            gi = g_mv[base + ti.Vector(o)]
            gm = g_m[base + ti.Vector(o)]
            wg = weight * gi
            g_mvp += wg
            g_B += wg.outer_product(ov)
            g_mass += weight * gm
            g_w = gi.dot(c0 + dxA @ ov) + gm * mass
            for d in ti.static(range(D)):  # ∂weight/∂fx_d
                r = g_w * dw[o[d]][d]
                for e in ti.static(range(D)):
                    if ti.static(e != d):
                        r *= w[o[e]][e]
                g_fx[d] += r
        g_A = dx * (g_B - g_mvp.outer_product(fx))  # Σ_o w_o·g_o ⊗ dpos_o
        g_fx -= dxA.transpose() @ g_mvp  # Σ_o w_o·Aᵀ·g_o, from ∂dpos_o/∂fx = −dx·I
        g_mass += g_mvp.dot(v[p]) + (g_A * C[p]).sum()
        g_v[p] += mass * g_mvp
        g_vol[p] += g_mass * rho[p] + k * (g_A * tau[p]).sum()
        g_rho[p] += g_mass * vol[p]
        g_x[p] += g_fx * inv_dx
        return mass * g_A, k * vol[p] * g_A

    @ti.kernel
    def p2g_adjoint(x: P_vec, v: P_vec, C: P_mat, tau: P_mat, vol: P_s, rho: P_s, dx: real, dt: real,
                    g_mv: G_vec, g_m: G_s, g_x: P_vec, g_v: P_vec, g_C: P_mat, g_tau: P_mat, g_vol: P_s,
                    g_rho: P_s):
        # Reverse of P2G (``p2g_grad``); accumulates into the g_* particle grads, but writes g_tau (τ feeds only
        # P2G, so its grad needs no zeroing)
        ti.loop_config(serialize=ser_all)
        for p in range(x.shape[0]):
            gc, gt = p2g_grad(p, x, v, C, tau, vol, rho, dx, dt, g_mv, g_m, g_x, g_v, g_vol, g_rho)
            g_C[p] += gc
            g_tau[p] = gt

    def make_backward(stress_grad):
        @ti.func
        def p2g_stress_adjoint_loop(x: T_, v: T_, C: T_, F: T_, tau: T_, material: T_, E: T_, nu: T_, vol: T_,
                                    rho: T_, muscle: T_, act: T_, fibre: T_, U: T_, sig: T_, V: T_, Jp: T_, table: T_,
                                    dx, dt, g_mv: T_, g_m: T_, g_Fn: T_, g_Jpn: T_, g_x: T_, g_v: T_, g_C: T_,
                                    g_F: T_, g_Jp: T_, g_E: T_, g_nu: T_, g_vol: T_, g_rho: T_, g_fibre: T_,
                                    g_actp: T_):
            # Reverse of deform, stress (muscle activation included) and P2G in one pass per particle, with the
            # hand-written stress adjoints (``materials.build_stress_adjoint``; SVD materials read the SVD the
            # forward stored): τ's grad stays in registers; each particle's activation grad lands in g_actp for
            # the muscle adjoint
            ti.loop_config(serialize=ser_all)
            for p in range(x.shape[0]):
                gc, gt = p2g_grad(p, x, v, C, tau, vol, rho, dx, dt, g_mv, g_m, g_x, g_v, g_vol, g_rho)
                g_C[p] += gc + stress_grad(p, C, F, dt, material, E, nu, muscle, act, fibre, U, sig, V, Jp, table,
                                           g_Fn, g_Jpn, gt, g_F, g_Jp, g_E, g_nu, g_fibre, g_actp)

        @ti.kernel
        def backward(x: P_vec, v: P_vec, C: P_mat, F: P_mat, tau: P_mat, material: A_i, E: P_s, nu: P_s,
                     vol: P_s, rho: P_s, muscle: W_s, act: P_s, fibre: P_vec, U: P_mat, sig: P_vec, V: P_mat,
                     Jp: P_s, table: W_s, dx: real, dt: real, box: A_i, grid_mv: G_vec, grid_m: G_s, grid_v: G_vec,
                     gravity: vec, bound: ti.i32, heights: H_s, normals: H_vec, floor_kind: ti.i32, floor_mu: real,
                     wall_kind: ti.i32, wall_mu: real, clamp_lo: vec, clamp_hi: vec, g_xo: P_vec, g_vo: P_vec,
                     g_Co: P_mat, g_Fn: P_mat, g_Jpn: P_s, g_gv: G_vec, g_mv: G_vec, g_m: G_s, g_x: P_vec,
                     g_v: P_vec, g_C: P_mat, g_F: P_mat, g_Jp: P_s, g_E: P_s, g_nu: P_s, g_vol: P_s, g_rho: P_s,
                     g_fibre: P_vec, g_actp: P_s, n_muscle: ti.i32, g_muscle: W_s, g_act: P_s):
            # A whole substep reversed in one launch (loops run in order): G2P, the grid update over the forward's
            # box, then P2G with the stress and deform; last the muscle activations' sum over n_muscle particles
            # (0: none)
            g2p_adjoint_loop(x, grid_v, dx, dt, g_xo, g_vo, g_Co, g_x, g_gv)
            grid_adjoint_loop(box, grid_mv, grid_m, gravity, dt, dx, bound, heights, normals, floor_kind, floor_mu,
                              wall_kind, wall_mu, clamp_lo, clamp_hi, g_gv, g_mv, g_m)
            p2g_stress_adjoint_loop(x, v, C, F, tau, material, E, nu, vol, rho, muscle, act, fibre, U, sig, V, Jp,
                                    table, dx, dt, g_mv, g_m, g_Fn, g_Jpn, g_x, g_v, g_C, g_F, g_Jp, g_E, g_nu,
                                    g_vol, g_rho, g_fibre, g_actp)
            muscle_adjoint_loop(n_muscle, muscle, act, g_actp, g_muscle, g_act)
        return backward

    @ti.kernel
    def g2p_adjoint(x: P_vec, grid_v: G_vec, dx: real, dt: real, g_xo: P_vec, g_vo: P_vec, g_Co: P_mat,
                    g_x: P_vec, g_gv: G_vec):
        g2p_adjoint_loop(x, grid_v, dx, dt, g_xo, g_vo, g_Co, g_x, g_gv)

    @ti.func
    def g2p_adjoint_loop(x: T_, grid_v: T_, dx, dt, g_xo: T_, g_vo: T_, g_Co: T_, g_x: T_, g_gv: T_):
        # Reverse of G2P: scatters into g_gv (serialised on CPUs like P2G), accumulates into g_x.
        ti.loop_config(serialize=serial)
        for p in range(x.shape[0]):
            inv_dx = 1.0 / dx
            base, fx, w = bspline(x[p], inv_dx, grid_v.shape)
            dw = bspline_grad(fx)
            g_nv = g_vo[p] + dt * g_xo[p]
            g_c = 4.0 * inv_dx * inv_dx * g_Co[p]
            dxg_c = dx * g_c
            c0 = g_nv - dxg_c @ fx  # ∂L/∂(w_o·gv_o) = g_nv + g_c·dpos_o = c0 + dx·g_c·o
            g_fx = vec(0.0)
            new_v = vec(0.0)
            for o in ti.static(OFFSETS):
                weight = ti.cast(1.0, real)
                for d in ti.static(range(D)):
                    weight *= w[o[d]][d]
                gv = grid_v[base + ti.Vector(o)]
                g_out = c0 + dxg_c @ ti.Vector(o, dt=real)
                g_gv[base + ti.Vector(o)] += weight * g_out
                g_w = gv.dot(g_out)
                new_v += weight * gv
                for d in ti.static(range(D)):
                    r = g_w * dw[o[d]][d]
                    for e in ti.static(range(D)):
                        if ti.static(e != d):
                            r *= w[o[e]][e]
                    g_fx[d] += r
            g_fx -= dxg_c.transpose() @ new_v  # Σ_o w_o·g_cᵀ·gv_o, from ∂dpos_o/∂fx = −dx·I
            g_x[p] += g_xo[p] + g_fx * inv_dx

    # Collider stages of ``node_velocity`` in order: the floor, then per axis the lower (not for the floor's axis)
    # and upper walls.
    WALLS = [(d, lower) for d in range(D) for lower in ((True, False) if d != 1 else (False,))]
    N_STAGES = 1 + len(WALLS)

    @ti.func
    def stage(I, s: ti.template(), res, dx, bound, h, n_floor, floor_kind, floor_mu, wall_kind, wall_mu):
        """(applies, normal, kind, μ) of collider stage s (static) at node I."""
        hit = 0
        nrm = vec(0.0)
        kind = floor_kind
        mu = floor_mu
        if ti.static(s == 0):
            if I[1] * dx < h:
                hit = 1
            nrm = n_floor
        else:
            kind = wall_kind
            mu = wall_mu
            d = ti.static(WALLS[s - 1][0])
            if ti.static(WALLS[s - 1][1]):
                if I[d] < bound:
                    hit = 1
                nrm[d] = 1.0
            else:
                if I[d] >= res[d] - bound:
                    hit = 1
                nrm[d] = -1.0
        return hit, nrm, kind, mu

    @ti.func
    def collide_adjoint(v, n, kind, mu, g_out):
        """∂L/∂v of ``collide`` at input velocity v, from ∂L/∂out."""
        vn = v.dot(n)
        g = g_out
        if kind == STICKY:
            g = vec(0.0)
        elif kind == SLIP or vn < 0:
            vt = v - vn * n
            g_vt = g_out
            g_vn = ti.cast(0.0, real)
            if vn < 0 and mu > 0:
                nrm = ti.sqrt(vt.dot(vt) + 1e-30)
                sc = 1.0 + mu * vn / nrm
                if sc > 0:  # out = sc·vt with sc = 1 + μ·vn/|vt|
                    gs = g_out.dot(vt)
                    g_vt = sc * g_out - gs * mu * vn / (nrm * nrm * nrm) * vt
                    g_vn = gs * mu / nrm
                else:
                    g_vt = vec(0.0)
            g = g_vt - g_vt.dot(n) * n + g_vn * n  # vt = v − (v·n)n, vn = v·n
        return g

    @ti.kernel
    def grid_adjoint(box: A_i, grid_mv: G_vec, grid_m: G_s, gravity: vec, dt: real, dx: real, bound: ti.i32,
                     heights: H_s, normals: H_vec, floor_kind: ti.i32, floor_mu: real, wall_kind: ti.i32,
                     wall_mu: real, clamp_lo: vec, clamp_hi: vec, g_v: G_vec, g_mv: G_vec, g_m: G_s):
        grid_adjoint_loop(box, grid_mv, grid_m, gravity, dt, dx, bound, heights, normals, floor_kind, floor_mu,
                          wall_kind, wall_mu, clamp_lo, clamp_hi, g_v, g_mv, g_m)

    @ti.func
    def grid_adjoint_loop(box: T_, grid_mv: T_, grid_m: T_, gravity, dt, dx, bound, heights: T_, normals: T_,
                          floor_kind, floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi, g_v: T_, g_mv: T_, g_m: T_):
        # Reverse of ``grid`` (node_velocity) over the same box: every node writes only its own grads, so no
        # atomics. Each collider stage that applies is reversed at its input velocity, recomputed from v0 (stages
        # rarely apply).
        if ti.static(serial):  # rows, as in ``grid``
            ti.loop_config(serialize=ser_all)
            for r in range(box_rows(box)):
                I = box_row_start(r, box)
                for k in range(box[D - 1], box[2 * D - 1]):
                    I[D - 1] = k
                    node_adjoint(I, grid_mv, grid_m, gravity, dt, dx, bound, heights, normals, floor_kind, floor_mu,
                                 wall_kind, wall_mu, clamp_lo, clamp_hi, g_v, g_mv, g_m)
        else:
            for q in range(box_nodes(box)):
                node_adjoint(box_node(q, box), grid_mv, grid_m, gravity, dt, dx, bound, heights, normals,
                             floor_kind, floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi, g_v, g_mv, g_m)

    @ti.func
    def node_adjoint(I, grid_mv: T_, grid_m: T_, gravity, dt, dx, bound, heights: T_, normals: T_, floor_kind,
                     floor_mu, wall_kind, wall_mu, clamp_lo, clamp_hi, g_v: T_, g_mv: T_, g_m: T_):
        """Node I of ``grid_adjoint``: writes g_mv[I], g_m[I] (the grid's momentum and mass feed only this update,
        so they need no zeroing) from g_v[I], and zeroes g_v[I]."""
        m = grid_m[I]
        g_mvI = vec(0.0)
        g_mI = ti.cast(0.0, real)
        if m > 0:
            xi = ti.cast(I, real) * dx
            if not (all(xi >= clamp_lo) and all(xi <= clamp_hi)):
                res = grid_m.shape
                h = ti.cast(0.0, real)
                n_floor = vec(0.0)
                if ti.static(D == 2):
                    h = heights[I[0]]
                    n_floor = normals[I[0]]
                else:
                    h = heights[I[0], I[2]]
                    n_floor = normals[I[0], I[2]]
                mv = grid_mv[I]
                v0 = mv / m + dt * gravity
                g = g_v[I]
                for j in ti.static(range(N_STAGES - 1, -1, -1)):
                    hit, nrm, kind, mu = stage(I, j, res, dx, bound, h, n_floor, floor_kind, floor_mu,
                                               wall_kind, wall_mu)
                    if hit:
                        vin = v0
                        for s in ti.static(range(j)):
                            hit_s, nrm_s, kind_s, mu_s = stage(I, s, res, dx, bound, h, n_floor, floor_kind,
                                                               floor_mu, wall_kind, wall_mu)
                            if hit_s:
                                vin = collide(vin, nrm_s, kind_s, mu_s)
                        g = collide_adjoint(vin, nrm, kind, mu, g)
                g_mvI = g / m
                g_mI = -g.dot(mv) / (m * m)
        g_mv[I] = g_mvI
        g_m[I] = g_mI
        g_v[I] = vec(0.0)  # consumed: the scratch's grid-velocity grad is left zeroed for its next use

    stress_adjoint, stress_grad, muscle_adjoint, muscle_adjoint_loop = materials.build_stress_adjoint(dim, real,
                                                                                                     ser_all)
    # without SVD materials the adjoint leaves their branch out (less to compile for elastic/muscle/water scenes)
    stress_grad_no_svd = materials.build_stress_adjoint(dim, real, ser_all, with_svd=False)[1]
    backward = make_backward(stress_grad_no_svd)
    backward_svd = make_backward(stress_grad)

    svd_forward, svd_backward = svd.kernels(dim, real)
    # Reverse mode runs these twins' .grad: on CPUs their loops are serialised (the adjoint atomics become plain
    # adds; G2P's adjoint scatters into the grid), on GPUs they are the kernels themselves. Their forwards are never
    # launched, so nothing extra compiles.
    if ser_all:  # everything is serial already: one set of kernels serves both directions
        stress_kernel = stress_serial
    ad = SimpleNamespace(deform=make_deform(True), stress=stress_serial) \
        if serial and not ser_all else SimpleNamespace(deform=deform, stress=stress_kernel)
    ns = _launchers(SimpleNamespace(deform=deform, svd=svd_forward, svd_backward=svd_backward, muscle=muscle,
                                      stress=stress_kernel, p2g=p2g, grid=grid, g2p=g2p, check=check,
                                      substep=substep, substep_svd=substep_svd, substep_chunked=substep_chunked,
                                      backward=backward,
                                      backward_svd=backward_svd,
                                      g2p_check=g2p_check, ad=ad,
                                      p2g_adjoint=p2g_adjoint, g2p_adjoint=g2p_adjoint, grid_adjoint=grid_adjoint,
                                      stress_adjoint=stress_adjoint, muscle_adjoint=muscle_adjoint), serial)
    ns.chunks = NC if chunked else 0  # substep_chunked's copies of the grid (0: the forward-only path uses substep)
    return ns

