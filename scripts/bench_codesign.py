"""One diffsim iteration (forward + backward) in tide vs a DiffTaichi-style diffmpm setup, same process.

The reference is rewritten here from DiffTaichi's published description of diffmpm (2D MLS-MPM, 128² grid,
dt = 1e-3, 1024 substeps, E = 10, gravity 3.8, fixed-corotated stress via polar decomposition, 4 actuators driven
by tanh(Σ w·sin(20 t + 2πj/4) + b) acting along y, every substep's particle state stored in Taichi fields, the
grid cleared and recomputed in backward through ``ti.ad.grad_replaced``, loss = −mean x at the end,
``ti.ad.Tape``). It is not DiffTaichi's code. tide runs the same particles, grid, substeps and actuators through
(a) ``engine.physics.checkpoint.rollout`` (per-substep actions, segmented checkpoints) and (b) the co-design
rollout of ``tasks.codesign`` (one torch op per control step of ``--hold`` substeps).

    python scripts/bench_codesign.py [--iters 5] [--precision f32|f64] [--steps 1024]

Prints the median seconds per warm iteration over interleaved rounds (reference, physics, co-design, in turn; the
first call, which compiles, is reported apart) and the tide/reference ratios with their per-round spread.

``--dim 3`` measures the 3D co-design path instead (there is no runnable 3D peer here: SoftZoo pins Taichi 1.4.1):
one diffsim iteration (forward + backward through ``Problem.loss``) of the default 3D robot box at 2, 3 and 4
particles per cell per axis (1.7k, 5.7k, 13.5k particles) on the 48x24x24 grid, 50 control steps x 5 substeps of
2 ms, f64; then the cold compile of the 3D kernels, in a child process with an empty Taichi cache.

    python scripts/bench_codesign.py --dim 3 [--iters 2] [--ppc 2,3,4] [--steps3d 50]
"""
import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

N_GRID, DT, E_REF, GRAVITY, ACT_STRENGTH, N_ACT, N_SIN = 128, 1e-3, 10.0, 3.8, 4.0, 4, 4


def robot_particles():
    """(N, 2) particles [m] and (N,) actuator ids of a four-legged box robot (~3k particles at 4 per cell)."""
    h = 1.0 / N_GRID / 2
    parts = [((0.10, 0.10), (0.38, 0.08), -1), ((0.10, 0.03), (0.06, 0.07), 0), ((0.18, 0.03), (0.06, 0.07), 1),
             ((0.32, 0.03), (0.06, 0.07), 2), ((0.42, 0.03), (0.06, 0.07), 3)]
    pts, ids = [], []
    for (x, y), (w, hh), a in parts:
        xs, ys = np.meshgrid(np.arange(x + h / 2, x + w, h), np.arange(y + h / 2, y + hh, h), indexing="ij")
        p = np.stack([xs.ravel(), ys.ravel()], 1)
        pts.append(p)
        ids.append(np.full(len(p), a))
    pts, ids = np.concatenate(pts), np.concatenate(ids)
    # the body's actuators: split it into four vertical bands so every particle but a few is driven
    body = ids < 0
    ids[body] = np.clip(((pts[body, 0] - 0.10) / 0.38 * N_ACT).astype(int), 0, N_ACT - 1)
    return pts, ids


# ------------------------------------------------------------------------------------------------ reference
def reference(pts, act_ids, steps, real):
    """Build the DiffTaichi-style fields and kernels; returns ``iteration() -> loss``."""
    import taichi as ti

    n = len(pts)
    dx, inv_dx = 1.0 / N_GRID, float(N_GRID)
    p_vol, p_mass, mu, la, bound = 1.0, 1.0, E_REF, E_REF, 3
    vec = lambda: ti.Vector.field(2, real, shape=(steps, n), needs_grad=True)  # noqa: E731
    mat = lambda: ti.Matrix.field(2, 2, real, shape=(steps, n), needs_grad=True)  # noqa: E731
    x, v, C, F = vec(), vec(), mat(), mat()
    grid_v_in = ti.Vector.field(2, real, shape=(N_GRID, N_GRID), needs_grad=True)
    grid_m = ti.field(real, shape=(N_GRID, N_GRID), needs_grad=True)
    grid_v_out = ti.Vector.field(2, real, shape=(N_GRID, N_GRID), needs_grad=True)
    actuator_id = ti.field(ti.i32, shape=n)
    weights = ti.field(real, shape=(N_ACT, N_SIN), needs_grad=True)
    bias = ti.field(real, shape=N_ACT, needs_grad=True)
    actuation = ti.field(real, shape=(steps, N_ACT), needs_grad=True)
    x_avg = ti.Vector.field(2, real, shape=(), needs_grad=True)
    loss = ti.field(real, shape=(), needs_grad=True)

    @ti.kernel
    def clear_grid():
        for i, j in grid_m:
            grid_v_in[i, j] = [0, 0]
            grid_m[i, j] = 0
            grid_v_in.grad[i, j] = [0, 0]
            grid_m.grad[i, j] = 0
            grid_v_out.grad[i, j] = [0, 0]

    @ti.kernel
    def actuate(t: ti.i32):
        for i in range(N_ACT):
            a = bias[i]
            for j in ti.static(range(N_SIN)):
                a += weights[i, j] * ti.sin(20.0 * t * DT + 2 * math.pi / N_SIN * j)
            actuation[t, i] = ti.tanh(a)

    @ti.kernel
    def p2g(f: ti.i32):
        for p in range(n):
            base = ti.cast(x[f, p] * inv_dx - 0.5, ti.i32)
            fx = x[f, p] * inv_dx - ti.cast(base, real)
            w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1) ** 2, 0.5 * (fx - 0.5) ** 2]
            new_F = (ti.Matrix.identity(real, 2) + DT * C[f, p]) @ F[f, p]
            F[f + 1, p] = new_F
            J = new_F.determinant()
            r, _ = ti.polar_decompose(new_F)
            aid = actuator_id[p]
            act = actuation[f, ti.max(0, aid)] * ACT_STRENGTH
            if aid < 0:
                act = 0.0
            A = ti.Matrix([[0.0, 0.0], [0.0, 1.0]]) * act  # contraction along the y fibre
            cauchy = 2 * mu * (new_F - r) @ new_F.transpose() + ti.Matrix.identity(real, 2) * la * J * (J - 1)
            cauchy += new_F @ A @ new_F.transpose()
            affine = -(DT * p_vol * 4 * inv_dx * inv_dx) * cauchy + p_mass * C[f, p]
            for i, j in ti.static(ti.ndrange(3, 3)):
                off = ti.Vector([i, j])
                dpos = (ti.cast(off, real) - fx) * dx
                weight = w[i][0] * w[j][1]
                grid_v_in[base + off] += weight * (p_mass * v[f, p] + affine @ dpos)
                grid_m[base + off] += weight * p_mass

    @ti.kernel
    def grid_op():
        for i, j in grid_m:
            vo = grid_v_in[i, j] / (grid_m[i, j] + 1e-10)
            vo[1] -= DT * GRAVITY
            if i < bound and vo[0] < 0:
                vo[0] = 0
            if i > N_GRID - bound and vo[0] > 0:
                vo[0] = 0
            if j < bound and vo[1] < 0:  # the floor stops and holds what presses into it
                vo[0] = 0
                vo[1] = 0
            if j > N_GRID - bound and vo[1] > 0:
                vo[1] = 0
            grid_v_out[i, j] = vo

    @ti.kernel
    def g2p(f: ti.i32):
        for p in range(n):
            base = ti.cast(x[f, p] * inv_dx - 0.5, ti.i32)
            fx = x[f, p] * inv_dx - ti.cast(base, real)
            w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
            new_v = ti.Vector([0.0, 0.0], real)
            new_C = ti.Matrix([[0.0, 0.0], [0.0, 0.0]], real)
            for i, j in ti.static(ti.ndrange(3, 3)):
                dpos = ti.cast(ti.Vector([i, j]), real) - fx
                g_v = grid_v_out[base[0] + i, base[1] + j]
                weight = w[i][0] * w[j][1]
                new_v += weight * g_v
                new_C += 4 * weight * g_v.outer_product(dpos) * inv_dx
            v[f + 1, p] = new_v
            x[f + 1, p] = x[f, p] + DT * new_v
            C[f + 1, p] = new_C

    @ti.kernel
    def average(f: ti.i32):
        for p in range(n):
            x_avg[None] += (1.0 / n) * x[f, p]

    @ti.kernel
    def compute_loss():
        loss[None] = -x_avg[None][0]

    @ti.ad.grad_replaced
    def advance(s):
        clear_grid()
        actuate(s)
        p2g(s)
        grid_op()
        g2p(s)

    @ti.ad.grad_for(advance)
    def advance_grad(s):  # the grid is not stored per step: recompute it, then go backwards
        clear_grid()
        p2g(s)
        grid_op()
        g2p.grad(s)
        grid_op.grad()
        p2g.grad(s)
        actuate.grad(s)

    rng = np.random.default_rng(0)
    weights.from_numpy((rng.standard_normal((N_ACT, N_SIN)) * 0.01).astype(np.float64))
    actuator_id.from_numpy(act_ids.astype(np.int32))

    def iteration():
        x_np = np.zeros((steps, n, 2))
        x_np[0] = pts
        x.from_numpy(x_np)
        F_np = np.zeros((steps, n, 2, 2))
        F_np[0] = np.eye(2)
        F.from_numpy(F_np)
        v.fill(0)
        C.fill(0)
        x_avg[None] = [0, 0]
        with ti.ad.Tape(loss=loss):
            for s in range(steps - 1):
                advance(s)
            average(steps - 1)
            compute_loss()
        return float(loss[None]), float(np.abs(weights.grad.to_numpy()).sum())

    return iteration


# ------------------------------------------------------------------------------------------------ tide
def tide_physics(pts, act_ids, steps):
    """tide's physics rollout (per-substep actions from a torch sine controller). Returns ``iteration()``."""
    import torch

    from engine import backend
    from engine.physics import Boundary, ModelBuilder, Solver
    from engine.physics.checkpoint import rollout

    dtype = backend.torch_dtype()
    b = ModelBuilder(res=(N_GRID, N_GRID), dx=1.0 / N_GRID, ppc=2)
    for g in range(N_ACT):
        b.add_points(pts[act_ids == g], material="muscle", E=5e3, nu=0.3, rho=1e3, group=g, fibre=(0.0, 1.0))
    model = b.finalize(gravity=(0.0, -GRAVITY), boundary=Boundary(floor="separate", floor_friction=0.5))
    solver = Solver(model)
    gen = torch.Generator().manual_seed(0)
    W = (0.01 * torch.randn(N_ACT, N_SIN, generator=gen, dtype=dtype)).requires_grad_(True)
    bias = torch.zeros(N_ACT, dtype=dtype, requires_grad=True)
    t = torch.arange(steps - 1, dtype=dtype)[:, None] * DT
    phases = 2 * math.pi * torch.arange(N_SIN, dtype=dtype) / N_SIN

    def iteration():
        W.grad = bias.grad = None
        acts = 0.3 * torch.tanh(torch.sin(20.0 * t + phases) @ W.T + bias)  # (T, G)
        x, _, _ = rollout(solver, steps - 1, DT, actions=acts)
        loss = -x[:, 0].mean()
        loss.backward()
        return float(loss), float(W.grad.abs().sum())

    return iteration


def tide_codesign(pts, act_ids, steps, hold):
    """tasks.codesign's rollout op on the same particles: actions held for ``hold`` substeps."""
    import torch

    from engine import backend
    from engine.physics import Boundary, ModelBuilder, Solver
    from tasks.codesign import DesignFields, SineController, simulate
    from tasks.codesign.world import _FLOAT_FIELDS, _with_grad

    class _World:  # a World over the benchmark's particles (no design box, no terrain)
        pass

    dtype = backend.torch_dtype()
    b = ModelBuilder(res=(N_GRID, N_GRID), dx=1.0 / N_GRID, ppc=2)
    b.add_points(pts, material="muscle", E=5e3, nu=0.3, rho=1e3, group=N_ACT - 1, fibre=(0.0, 1.0))
    model = b.finalize(gravity=(0.0, -GRAVITY), boundary=Boundary(floor="separate", floor_friction=0.5))
    w = _World()
    w.model = model.with_params(**{k: _with_grad(getattr(model, k)) for k in _FLOAT_FIELDS})
    w.solver, w.n_robot, w.spec = Solver(w.model), model.n, type("S", (), {"E": 5e3, "rho": 1e3, "gravity": GRAVITY})
    w.x0_robot = w.model.x0.detach()
    w.vol = w.model.vol.detach()
    w.material = lambda f: (f.material(5e3, 1e3) + (f.muscle, f.fibre))
    w.robot_mass = lambda f: w.vol * f.material(5e3, 1e3)[1]
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(act_ids), N_ACT).to(dtype)
    fibre = torch.zeros(model.n, 2, dtype=dtype)
    fibre[:, 1] = 1
    fields = DesignFields(torch.ones(model.n, dtype=dtype), torch.ones(model.n, dtype=dtype), one_hot, fibre)
    ctrl = SineController(N_ACT, omega=20.0, init_scale=0.01).to(dtype)

    def iteration():
        ctrl.zero_grad()
        traj = simulate(w, fields, ctrl, (steps - 1) // hold, hold, DT)
        loss = -traj.xs[-1][:, 0].mean()
        loss.backward()
        return float(loss), float(ctrl.W.grad.abs().sum())

    return iteration


def interleaved(names: dict, fns: dict, rounds: int) -> dict:
    """Time each function's first call (compile) apart, then ``rounds`` warm rounds in which every function runs
    once in turn, so a change of load on this shared box hits all of them alike. Returns {key: [seconds per round]}."""
    out, times = {}, {k: [] for k in fns}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        out[k] = fn()
        print(f"{names[k]:<28s} first (compile) {time.perf_counter() - t0:7.2f} s", flush=True)
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t0)
    for k, t in times.items():
        print(f"{names[k]:<28s} warm median {np.median(t):6.3f} s/iter (min {min(t):.3f}, max {max(t):.3f}, "
              f"{rounds} interleaved rounds)   loss {out[k][0]:+.5f}  |grad| {out[k][1]:.3g}", flush=True)
    return times


def bench_3d(args) -> int:
    """One 3D diffsim iteration's time against the particle count, and the cold compile of the 3D kernels."""
    import subprocess
    import tempfile

    import torch

    from engine import backend

    s = backend.init(arch=args.arch, precision="f64")
    torch.set_num_threads(1)  # as the codesign scene does
    from tasks.codesign import Problem, ProblemSpec, WorldSpec
    from tasks.codesign.world import grid_res

    print(f"3D co-design diffsim iteration (forward + backward), {s.resolved_arch} f64, "
          f"{args.steps3d} control steps x 5 substeps of 2 ms; load average {os.getloadavg()}")
    rows = []
    for ppc in [int(p) for p in args.ppc.split(",")]:
        spec = ProblemSpec(world=WorldSpec(dim=3, res=48, ppc=ppc, robot_size=(0.2, 0.1, 0.1)), n_groups=4,
                           steps=args.steps3d, substeps=5, dt=2e-3)
        prob = Problem(spec)

        def it():
            for q in prob.trainable():
                q.grad = None
            loss, _ = prob.loss()
            loss.backward()
            return float(loss), float(sum(q.grad.norm() ** 2 for q in prob.trainable() if q.grad is not None) ** 0.5)

        name = f"ppc {ppc}: {prob.world.n_robot} particles"
        t = float(np.median(interleaved({0: name}, {0: it}, args.iters)[0]))
        rows.append((prob.world.n_robot, t))
        print(f"    grid {grid_res(spec.world)}, {t / (args.steps3d * 5) * 1e3:.2f} ms per substep (fwd + bwd), "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if len(rows) > 1:
        n, t = np.array(rows).T
        slope = np.polyfit(np.log(n), np.log(t), 1)[0]
        print(f"growth: time ~ N^{slope:.2f} over N = {int(n[0])}..{int(n[-1])} (the grid work is fixed, so "
              f"below 1 while it weighs)")
    # cold compile: a fresh process with an empty Taichi cache builds a tiny 3D problem and runs two iterations; the
    # first minus the second is what the kernels' first calls cost (Taichi's front end, then LLVM or a cache load).
    # ti.reset() writes the offline cache (a plain script's exit does not). Then the same with the cache filled.
    code = ("import time; from engine import backend; backend.init(arch='cpu', precision='f64'); import torch; "
            "torch.set_num_threads(1); from tasks.codesign import Problem, ProblemSpec, WorldSpec; "
            "p=Problem(ProblemSpec(world=WorldSpec(dim=3,res=16,robot_size=(0.2,0.1,0.1)),n_groups=2,steps=2,"
            "substeps=2,dt=2e-3)); ts=[]\nfor _ in range(2):\n t=time.perf_counter(); l,_=p.loss(); l.backward(); "
            "ts.append(time.perf_counter()-t)\nimport taichi as ti; ti.reset(); print(ts[0]-ts[1])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    times = []
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold (empty cache)", "warm (offline cache)"):
            env = dict(os.environ, TIDE_CACHE_DIR=cache, PYTHONPATH=root)
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            times.append(float(out.stdout.strip().splitlines()[-1]))
            print(f"3D gradient path, first calls of its kernels in a fresh process, {label}: {times[-1]:.1f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"cold compile of the 3D co-design kernels: {times[0]:.1f} s (goal < 120 s); from the offline cache "
          f"{times[1]:.1f} s (Taichi's Python front end runs either way)")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=2, choices=[2, 3], help="3: the 3D co-design benchmark")
    ap.add_argument("--ppc", default="2,3,4", help="3D: particles per cell per axis to time")
    ap.add_argument("--steps3d", type=int, default=50, help="3D: control steps (of 5 substeps) per episode")
    ap.add_argument("--iters", type=int, default=5, help="warm rounds (each runs every variant once, in turn)")
    ap.add_argument("--steps", type=int, default=1024, help="substeps per episode (DiffTaichi: 1024)")
    ap.add_argument("--hold", type=int, default=8, help="substeps per control step in the co-design rollout")
    ap.add_argument("--precision", default="f32", choices=["f32", "f64"], help="DiffTaichi runs f32")
    ap.add_argument("--arch", default="cpu")
    ap.add_argument("--skip", default="", help="comma list of reference,physics,codesign to skip")
    args = ap.parse_args(argv)
    if args.dim == 3:
        return bench_3d(args)
    from engine import backend

    s = backend.init(arch=args.arch, precision=args.precision)
    import taichi as ti

    pts, ids = robot_particles()
    skip = set(filter(None, args.skip.split(",")))
    print(f"{len(pts)} particles, {N_GRID}² grid, {args.steps} substeps, {s.resolved_arch} {s.precision}, "
          f"fast_compile={s.fast_compile}")
    builders = {"reference": ("DiffTaichi-style (Tape)",
                              lambda: reference(pts, ids, args.steps, ti.f64 if args.precision == "f64" else ti.f32)),
                "physics": ("tide physics rollout", lambda: tide_physics(pts, ids, args.steps)),
                "codesign": (f"tide codesign (hold {args.hold})",
                             lambda: tide_codesign(pts, ids, args.steps, args.hold))}
    names = {k: v[0] for k, v in builders.items() if k not in skip}
    fns = {k: builders[k][1]() for k in names}
    res = interleaved(names, fns, args.iters)
    if "reference" in res:
        for k in ("physics", "codesign"):
            if k in res:
                per = [a / b for a, b in zip(res[k], res["reference"])]
                print(f"ratio tide {k} / reference: median {np.median(res[k]) / np.median(res['reference']):.2f} "
                      f"(per round {min(per):.2f}-{max(per):.2f}; goal <= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
