"""Benchmark tide's MPM solver against taichi's shipped mpm3d example, side by side in one process.

The reference is a re-implementation of ``taichi/examples/simulation/mpm3d.py``'s kernel setup (one fused
substep kernel on fields, a J-only fluid with E = 400, ρ = 1): 3D 64³ grid with 65,536 particles, 2D 256² grid with
32,768 particles. tide runs the same fluid through its general solver (``water`` material: full F, colliders,
guards; its forward-only path is one fused kernel per substep). Both run in one process under tide's backend settings
(advanced_optimization off by default), and the timings alternate between reference and tide over several rounds,
keeping each one's best, because the box is shared. Prints particle·steps/s for both and the ratio; then tide's
forward+backward cost against its forward cost (2D, segmented checkpoints), and the memory formula's figures for a
4000-substep, 20k-particle 3D checkpointed backward pass.

Then, when Genesis (``genesis-world`` 1.4.5, the ``bench`` extra) is importable by ``--genesis-python`` (default:
$TIDE_GENESIS_PYTHON, else this interpreter), the same 3D scene in both engines (``genesis_peer.SCENE``: a
neo-Hookean jelly block and a water block, 32,768 particles each, 64³ grid, dt 2e-4, f32, 4-node separating walls):
first a check that both simulate the same thing (block centroids and every particle after ``--genesis-check``
substeps, loss and dL/dv0 of the gradient run), then forward particle·steps/s and forward + backward time over
``--genesis-substeps`` substeps (checkpoint window ``--genesis-window`` in both). Genesis runs in its own process
(its Taichi fork and tide's cannot be assumed to share one), driven over a pipe: the parent times tide, then asks
Genesis to run and time the same work, alternating, and keeps each one's best. Genesis is timed at
``--genesis-threads`` worker threads (QD_NUM_THREADS; Genesis' CPU default is one). ``--genesis-only`` runs only this.

``--profile`` instead times every kernel launch (forward and adjoint) of the 2D fluid's full-tape forward + backward
pass and prints µs per substep for each, largest first.

``--memory`` instead measures the peak resident memory of a real 3D f64 checkpointed rollout (20k particles, 64³
grid, a reduced substep count) above the process's baseline, compares it with the formula and extrapolates to
4000 substeps.

``--materials`` instead times each material's rollout per substep, forward and forward + backward (segmented
checkpoints, as co-design runs them), with the hand-written stress adjoints and with Taichi's generated ones
(``Solver(stress_adjoint="generated")``, the SVD-based materials' path before theirs were written), alternating,
2D and 3D; then the cold compile of the 3D sand gradient path in each mode (a subprocess on an empty kernel
cache, ``TIDE_CACHE_DIR``). ``--dims 2`` or ``--no-cold`` shorten it.

Usage: python scripts/bench_mpm.py [--steps 20] [--rounds 3] [--precision f32] [--skip-grad] [--profile]
       [--memory [--substeps 240]] [--scaling [--plot]] [--materials [--dims 2,3] [--no-cold]]
       [--genesis-only] [--genesis-python PY] [--genesis-threads 2,1] [--genesis-substeps 200] [--genesis-window 20]
       [--genesis-check 500] [--genesis-grad-rounds 2] [--no-genesis]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reference(dim, n_grid, dt, ti, real):
    """The mpm3d example's substep, as shipped (fields, one kernel). Returns (substep, init, sync)."""
    n_particles = n_grid ** dim // 2 ** (dim - 1)
    dx = 1 / n_grid
    p_vol, p_rho = (dx * 0.5) ** 2, 1
    p_mass, gravity, bound, E = p_vol * p_rho, 9.8, 3, 400
    x = ti.Vector.field(dim, real, n_particles)
    v = ti.Vector.field(dim, real, n_particles)
    C = ti.Matrix.field(dim, dim, real, n_particles)
    J = ti.field(real, n_particles)
    grid_v = ti.Vector.field(dim, real, (n_grid,) * dim)
    grid_m = ti.field(real, (n_grid,) * dim)
    neighbour = (3,) * dim

    @ti.kernel
    def substep():
        for I in ti.grouped(grid_m):
            grid_v[I] = ti.zero(grid_v[I])
            grid_m[I] = 0
        ti.loop_config(block_dim=n_grid)
        for p in x:
            Xp = x[p] / dx
            base = int(Xp - 0.5)
            fx = Xp - base
            w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1) ** 2, 0.5 * (fx - 0.5) ** 2]
            stress = -dt * 4 * E * p_vol * (J[p] - 1) / dx ** 2
            affine = ti.Matrix.identity(real, dim) * stress + p_mass * C[p]
            for offset in ti.static(ti.grouped(ti.ndrange(*neighbour))):
                dpos = (offset - fx) * dx
                weight = 1.0
                for i in ti.static(range(dim)):
                    weight *= w[offset[i]][i]
                grid_v[base + offset] += weight * (p_mass * v[p] + affine @ dpos)
                grid_m[base + offset] += weight * p_mass
        for I in ti.grouped(grid_m):
            if grid_m[I] > 0:
                grid_v[I] /= grid_m[I]
            grid_v[I][1] -= dt * gravity
            cond = (I < bound) & (grid_v[I] < 0) | (I > n_grid - bound) & (grid_v[I] > 0)
            grid_v[I] = ti.select(cond, 0, grid_v[I])
        ti.loop_config(block_dim=n_grid)
        for p in x:
            Xp = x[p] / dx
            base = int(Xp - 0.5)
            fx = Xp - base
            w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1) ** 2, 0.5 * (fx - 0.5) ** 2]
            new_v = ti.zero(v[p])
            new_C = ti.zero(C[p])
            for offset in ti.static(ti.grouped(ti.ndrange(*neighbour))):
                dpos = (offset - fx) * dx
                weight = 1.0
                for i in ti.static(range(dim)):
                    weight *= w[offset[i]][i]
                g_v = grid_v[base + offset]
                new_v += weight * g_v
                new_C += 4 * weight * g_v.outer_product(dpos) / dx ** 2
            v[p] = new_v
            x[p] += dt * v[p]
            J[p] *= 1 + dt * new_C.trace()
            C[p] = new_C

    def init(points):
        x.from_numpy(points.astype(np.float32 if real == ti.f32 else np.float64))
        J.fill(1)

    return substep, init, ti.sync


def tide_fluid(dim, n_grid, points):
    from engine.physics import Boundary, ModelBuilder, Solver

    dx = 1 / n_grid
    b = ModelBuilder(res=(n_grid,) * dim, dx=dx, ppc=2)
    b.add_points(points, material="water", E=400.0, rho=1.0, vol=(dx * 0.5) ** 2)
    m = b.finalize(gravity=(0.0, -9.8) + (0.0,) * (dim - 2), boundary=Boundary(floor="separate", floor_friction=0.0,
                                                                                walls="separate"))
    return m, Solver(m, check_every=25)


def rates(fns, steps, n_particles, sync, rounds):
    """Best particle·steps/s of each of ``fns`` (called as fn(k) for k substeps), timed in alternation."""
    for fn in fns:
        fn(1)  # compile / warm up
    sync()
    best = [0.0] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn(steps)
            sync()
            best[i] = max(best[i], n_particles * steps / (time.perf_counter() - t))
    return best


def bench_forward(dim, n_grid, dt, steps, ti, real, rounds):
    n = n_grid ** dim // 2 ** (dim - 1)
    pts = np.random.default_rng(0).random((n, dim)) * 0.4 + 0.15
    substep, init, sync = reference(dim, n_grid, dt, ti, real)
    init(pts)

    def run_ref(k):
        for _ in range(k):
            substep()
    m, solver = tide_fluid(dim, n_grid, pts)
    st = m.state()
    r_ref, r_tide = rates([run_ref, lambda k: solver.advance(st, k, dt)], steps, n, sync, rounds)
    return n, r_ref, r_tide


def bench_grad(n_grid, dt, steps, segments, rounds):
    """Best seconds of: the forward-only pass, the differentiable (staged, intermediates kept) forward pass, and a
    forward + segmented backward pass per segment length, of the 2D fluid; all timed in alternation."""
    import torch

    from engine.physics.checkpoint import Rollout

    n = n_grid ** 2 // 2
    pts = np.random.default_rng(0).random((n, 2)) * 0.4 + 0.15
    m, solver = tide_fluid(2, n_grid, pts)
    ros = [Rollout(solver, steps, dt, segment=K) for K in segments]
    for ro in ros:
        ro.run(m.x0, m.v0)  # compile forward and backward kernels
        ro.grad(torch.ones_like(m.x0))
    st = m.state()
    a, b = m.state().requires_grad_(), m.state().requires_grad_()
    sc = solver.new_scratch(grad=True)
    solver.advance(st, 1, dt)

    def staged():
        nonlocal a, b
        for _ in range(steps):
            solver.forward(a, b, None, dt, sc)
            a, b = b, a

    def both(ro):
        ro.run(m.x0, m.v0)
        ro.grad(torch.ones_like(m.x0))
    jobs = [lambda: solver.advance(st, steps, dt), staged] + [lambda ro=ro: both(ro) for ro in ros]
    best = [float("inf")] * len(jobs)
    for _ in range(rounds):
        for i, job in enumerate(jobs):
            t = time.perf_counter()
            job()
            best[i] = min(best[i], time.perf_counter() - t)
    return best[0], best[1], best[2:]


def profile_grad(n_grid, dt, steps, rounds):
    """µs per substep of each kernel in a full-tape forward + backward pass of the 2D fluid (best of ``rounds``)."""
    import torch

    from engine.physics.checkpoint import Rollout

    n = n_grid ** 2 // 2
    pts = np.random.default_rng(0).random((n, 2)) * 0.4 + 0.15
    m, solver = tide_fluid(2, n_grid, pts)
    ro = Rollout(solver, steps, dt, segment=steps)
    ro.run(m.x0, m.v0)  # compile
    ro.grad(torch.ones_like(m.x0))
    spent: dict = {}

    def timed(launch, name):
        def call(*args):
            t = time.perf_counter()
            launch(*args)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return call

    ks = vars(solver.k)
    for name, launch in list(ks.items()):
        if callable(launch) and hasattr(launch, "kernel"):
            ks[name] = timed(launch, name)
    best: dict = {}
    for _ in range(rounds):
        spent.clear()
        t = time.perf_counter()
        ro.run(m.x0, m.v0)
        ro.grad(torch.ones_like(m.x0))
        total = time.perf_counter() - t
        for k, v in spent.items():
            best[k] = min(best.get(k, float("inf")), v)
        best["(total, incl. Python)"] = min(best.get("(total, incl. Python)", float("inf")), total)
    return {k: v / steps * 1e6 for k, v in best.items()}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_memory(n_substeps):
    """Peak RSS above baseline of a 3D f64 checkpointed rollout (forward + backward) vs ``memory_estimate``."""
    import gc
    import threading

    import torch

    from engine.physics import Boundary, ModelBuilder, Solver
    from engine.physics.checkpoint import Rollout, memory_estimate

    n_grid = 64
    b = ModelBuilder(res=(n_grid,) * 3, dx=1 / n_grid, ppc=2)
    b.add_box((0.3, 0.3, 0.3), (0.51, 0.51, 0.51), material="elastic", E=2e4, nu=0.3, velocity=(0.3, -0.5, 0.1))
    m = b.finalize(boundary=Boundary(floor="sticky"))
    s = Solver(m)
    dt = 2e-4
    warm = Rollout(s, 2, dt, segment=1)  # compile (or load) every kernel first
    warm.run(m.x0, m.v0)
    warm.grad(torch.ones_like(m.x0))
    del warm
    gc.collect()
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    K = max(1, round(np.sqrt(n_substeps)))
    t = time.perf_counter()
    ro = Rollout(s, n_substeps, dt, segment=K)
    x, v, _ = ro.run(m.x0, m.v0)
    ro.grad(torch.ones_like(x), torch.zeros_like(v))
    seconds = time.perf_counter() - t
    done.set()
    th.join()
    measured = peak[0] - base
    est = memory_estimate(m.n, 3, m.res, n_substeps, K, bytes_per_float=8)
    return m.n, m.res, K, measured, est, seconds


MATERIAL_SCENES = {2: dict(res=(128, 128), lo=(0.3, 0.1), hi=(0.6, 0.3), substeps=40, dt=1e-4),
                   3: dict(res=(32, 32, 32), lo=(0.3, 0.1, 0.3), hi=(0.65, 0.35, 0.65), substeps=20, dt=2e-4)}
"""``--materials``: one block per run (2D ~3.8k, 3D ~7.8k particles, ppc 2), thrown sideways and down onto the
floor with a random shear so the plastic materials yield; E = 5 kPa, ν = 0.3, ρ = 1000 for every material."""


def material_rollouts(dim, name):
    """(model, {mode: Rollout}, v0) for ``name``'s block (``MATERIAL_SCENES``) under both stress adjoints."""
    import torch

    from engine.physics import Boundary, ModelBuilder, Solver
    from engine.physics.checkpoint import Rollout

    c = MATERIAL_SCENES[dim]
    b = ModelBuilder(res=c["res"], dx=1 / c["res"][0], ppc=2)
    b.add_box(c["lo"], c["hi"], material=name, E=5e3, nu=0.3, rho=1e3, velocity=(1.0, -1.5) + (0.3,) * (dim - 2),
              group=0 if name == "muscle" else None, fibre=(1.0,) + (0.0,) * (dim - 1))
    m = b.finalize(boundary=Boundary(floor="sticky"))
    g = torch.Generator().manual_seed(0)
    v0 = m.v0 + 0.5 * torch.randn(m.n, dim, generator=g, dtype=m.v0.dtype)
    ros = {mode: Rollout(Solver(m, stress_adjoint=mode), c["substeps"], c["dt"]) for mode in ("generated", "hand")}
    return m, ros, v0


def bench_materials(dims, rounds):
    """ms per substep of each material's forward and forward + backward, generated vs hand-written stress adjoints,
    timed in alternation (best of ``rounds``)."""
    import torch

    from engine.physics import materials

    rows = []
    for dim in dims:
        c = MATERIAL_SCENES[dim]
        for name in materials.NAMES:
            m, ros, v0 = material_rollouts(dim, name)
            acts = torch.zeros(c["substeps"], m.n_groups, dtype=m.v0.dtype)
            if name == "muscle":
                acts[:, 0] = 0.5

            def fwd(ro):
                return ro.run(m.x0, v0, actions=acts)

            def both(ro):
                x, v, _ = ro.run(m.x0, v0, actions=acts)
                ro.grad(torch.ones_like(x), torch.zeros_like(v))
            for ro in ros.values():  # compile (or load) every kernel first
                both(ro)
            best = {}
            for _ in range(rounds):
                for mode, ro in ros.items():
                    for kind, job in (("fwd", fwd), ("both", both)):
                        t, t_cpu = time.perf_counter(), time.process_time()
                        job(ro)
                        for clock, dt in (("wall", time.perf_counter() - t), ("cpu", time.process_time() - t_cpu)):
                            key = mode, kind, clock
                            best[key] = min(best.get(key, float("inf")), dt)
            ms = {k: v / c["substeps"] * 1e3 for k, v in best.items()}
            rows.append((dim, name, m.n, ms))
            cpu = {(mode, kind): ms[mode, kind, "cpu"] for mode in ros for kind in ("fwd", "both")}
            print(f"{dim}D {name:<10}{m.n:>7} {cpu['generated', 'fwd']:>8.2f} {cpu['generated', 'both']:>9.2f} "
                  f"{cpu['hand', 'fwd']:>8.2f} {cpu['hand', 'both']:>9.2f} "
                  f"{cpu['hand', 'both'] / cpu['hand', 'fwd']:>7.2f}x "
                  f"{cpu['generated', 'both'] / cpu['hand', 'both']:>7.2f}x   {ms['generated', 'both', 'wall']:>9.2f} "
                  f"{ms['hand', 'both', 'wall']:>9.2f}", flush=True)
    return rows


COLD = """
import os, sys, time, torch
sys.path.insert(0, {root!r})
from engine import backend
backend.init(arch="cpu", precision={precision!r})
from engine.physics import Boundary, ModelBuilder, Solver
from engine.physics.checkpoint import Rollout
b = ModelBuilder(res=(16, 16, 16), dx=1 / 16, ppc=2)
b.add_box((0.3, 0.2, 0.3), (0.6, 0.45, 0.6), material="sand", E=5e3, nu=0.3, rho=1e3, velocity=(1.0, -1.5, 0.3))
m = b.finalize(boundary=Boundary(floor="sticky"))
ro = Rollout(Solver(m, stress_adjoint={mode!r}), 4, 2e-4, segment=2)
t = time.perf_counter()
ro.run(m.x0, m.v0)
t1 = time.perf_counter()
ro.grad(torch.ones_like(m.x0))
t2 = time.perf_counter()
ro.run(m.x0, m.v0)
ro.grad(torch.ones_like(m.x0))
t3 = time.perf_counter()
print(f"{{t1 - t:.2f}} {{t2 - t1:.2f}} {{t3 - t2:.2f}}")
"""


def bench_cold_compile(precision):
    """Seconds of the first forward and backward of a small 3D sand rollout on an empty kernel cache, per mode,
    each in a fresh process: (forward, backward, a second forward + backward once compiled)."""
    import subprocess
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for mode in ("hand", "generated"):
        with tempfile.TemporaryDirectory(prefix="tide-cold-") as cache:
            env = dict(os.environ, TIDE_CACHE_DIR=cache)
            r = subprocess.run([sys.executable, "-c", COLD.format(root=root, precision=precision, mode=mode)],
                               env=env, capture_output=True, text=True, check=True)
            out[mode] = tuple(float(v) for v in r.stdout.split()[-3:])
    return out


def bench_scaling(ti, real, args):
    """Time per substep against particle count: the grid doubles per side (particles = cells / 2^(dim-1), as the
    mpm3d example), tide and the reference timed in alternation at each size."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import growth

    panels = {}
    for dim, grids, dt in ((2, (64, 128, 256), 1e-4), (3, (32, 64, 128), 2e-4)):  # 3D 16^3: walls fill it
        ns, t_ref, t_tide = [], [], []
        for n_grid in grids:
            n, r_ref, r_tide = bench_forward(dim, n_grid, dt, args.steps, ti, real, args.rounds)
            ns.append(n)
            t_ref.append(n / r_ref * 1e3)                         # ms per substep
            t_tide.append(n / r_tide * 1e3)
            print(f"{dim}D {n_grid}^{dim}, {n} particles: reference {t_ref[-1]:.3f} ms/substep, tide "
                  f"{t_tide[-1]:.3f} ms/substep, ratio {t_ref[-1] / t_tide[-1]:.2f}x", flush=True)
        series = {"tide": t_tide, "mpm3d reference": t_ref}
        growth.table(f"{dim}D fluid, forward: ms per substep against particles (grid side doubles with each row)",
                     "particles", ns, series)
        panels[f"{dim}D fluid forward ({'/'.join(f'{g}^{dim}' for g in grids)} grids)"] = (ns, series)
    if args.plot:
        growth.plot("bench_mpm_scaling", "MPM forward: ms per substep against particles (one run)", "particles",
                    panels, ylabel="ms per substep (best of rounds)")


# ------------------------------------------------------------------------------------------------- Genesis peer
SCRIPTS = os.path.dirname(os.path.abspath(__file__))


class GenesisPeer:
    """A Genesis process running ``genesis_peer.py`` (the scene, in Genesis' own venv), driven over a pipe."""

    def __init__(self, python, threads, grad_substeps, window):
        env = dict(os.environ, QD_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.threads = threads
        self.log = tempfile.NamedTemporaryFile("w+", prefix="genesis_peer_", suffix=".log", delete=False)
        self.proc = subprocess.Popen([python, os.path.join(SCRIPTS, "genesis_peer.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=SCRIPTS)
        self.info = self.ask(cmd="init", grad_substeps=grad_substeps, grad_window=window)

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:  # Genesis' own output passes through; the answer starts with "@@ "
            if line.startswith("@@ "):
                return json.loads(line[3:])
        self.log.seek(0)
        tail = "".join(self.log.readlines()[-15:])
        raise RuntimeError(f"the Genesis process (QD_NUM_THREADS={self.threads}) died on {msg}; its log "
                           f"{self.log.name} ends:\n{tail}")

    def close(self):
        try:
            self.ask(cmd="quit")
        except (RuntimeError, BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=60)


def genesis_python(args):
    """The interpreter that runs Genesis, or None (with the reason printed on one line) when it cannot."""
    python = args.genesis_python or os.environ.get("TIDE_GENESIS_PYTHON") or sys.executable
    probe = subprocess.run([python, "-c", "import genesis, quadrants; print(genesis.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"Genesis: skipped (genesis-world is not importable by {python}; install the bench extra in a "
              f"separate venv and pass --genesis-python or set TIDE_GENESIS_PYTHON)")
        return None
    return python


def tide_genesis_scene():
    """``genesis_peer.SCENE`` as a tide model and solver (y up)."""
    sys.path.insert(0, SCRIPTS)
    import genesis_peer

    from engine.physics import Boundary, ModelBuilder, Solver

    s = genesis_peer.SCENE
    dx = 1.0 / s["grid"]
    jelly, water = genesis_peer.blocks()
    b = ModelBuilder(res=(s["grid"],) * 3, dx=dx, ppc=s["ppc"], bound=s["bound"])
    vol = (dx / s["ppc"]) ** 3
    b.add_points(jelly, material="elastic", E=s["E"], nu=s["nu"], rho=s["rho"], vol=vol)
    b.add_points(water, material="water", E=s["lam"], rho=s["rho"], vol=vol)  # tide's water: τ = E·J(J−1)·I
    # Genesis' CubeBoundary zeroes the velocity component into a wall (restitution 0), no friction: "separate"
    m = b.finalize(gravity=(0.0, -s["gravity"], 0.0),
                   boundary=Boundary(floor="separate", floor_friction=0.0, walls="separate", wall_friction=0.0))
    return genesis_peer, m, Solver(m, check_every=25), len(jelly)


def bench_genesis(args):
    """tide against Genesis on ``genesis_peer.SCENE``: agreement first, then forward and forward + backward."""
    python = genesis_python(args)
    if python is None:
        return
    gp, m, solver, n_jelly = tide_genesis_scene()
    s = gp.SCENE
    dt, n = s["dt"], m.n
    T, K = args.genesis_substeps, args.genesis_window
    if T % K:
        raise SystemExit(f"--genesis-substeps ({T}) must be a multiple of --genesis-window ({K})")
    per_call = s["steps_per_call"]
    steps = max(per_call, -(-args.steps // per_call) * per_call)  # Genesis runs whole calls of steps_per_call
    threads = [int(t) for t in args.genesis_threads.split(",")]
    print(f"\nGenesis peer: {python}; scene: jelly (neo-Hookean E={s['E']:g}, nu={s['nu']}) + water (lambda="
          f"{s['lam']:g}) blocks, {n} particles ({n_jelly} + {n - n_jelly}), grid {s['grid']}^3, dt {dt:g}, f32, "
          f"gravity {s['gravity']} m/s^2, walls {s['bound']} node layers per side, separating, frictionless")
    print(f"  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    t0 = time.perf_counter()
    peers = [GenesisPeer(python, th, T if i == 0 else 0, K) for i, th in enumerate(threads)]
    info = peers[0].info
    print(f"  genesis-world {info['genesis']}, quadrants {info['quadrants']}; Genesis processes started and built "
          f"in {time.perf_counter() - t0:.0f} s")
    try:
        ok = genesis_agreement(args, gp, m, solver, peers[0], n_jelly, T, K)
        if not ok:
            print("  the engines disagree: no timings (a timing of two different simulations means nothing)")
            return
        genesis_forward(args, m, solver, peers, steps, n, dt)
        if not args.skip_grad:
            genesis_grad(args, gp, m, solver, peers[0], T, K)
    finally:
        for p in peers:
            p.close()
        print(f"  load average {os.getloadavg()[0]:.1f} at the end ({time.strftime('%H:%M UTC', time.gmtime())})")


def genesis_agreement(args, gp, m, solver, peer, n_jelly, T, K):
    """Both engines run ``--genesis-check`` substeps from the same particles: block centroids and particles must
    agree (f32 round-off only); then the loss and dL/dv0 of one window."""
    import torch

    from engine.physics.checkpoint import Rollout

    N = args.genesis_check
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.npy")
        peer.ask(cmd="rollout", substeps=N, out=path)
        xg = np.load(path).astype(np.float64)
        st = m.state()
        solver.advance(st, N, gp.SCENE["dt"])
        xt = st.x.detach().cpu().numpy().astype(np.float64)
        ok = True
        for name, sl in (("jelly", slice(0, n_jelly)), ("water", slice(n_jelly, None))):
            ct, cg = xt[sl].mean(0), xg[sl].mean(0)
            c0 = m.x0.detach().cpu().numpy()[sl].astype(np.float64).mean(0)
            dc = np.abs(ct - cg).max()
            dmax = np.abs(xt[sl] - xg[sl]).max()
            moved = np.abs(ct - c0).max()
            # tolerance: the centroids agree to 1e-3 of the distance the block moved, every particle to dx/100
            good = dc <= 1e-3 * moved and dmax <= 0.01 / gp.SCENE["grid"]
            ok &= bool(good)
            print(f"  check, {N} substeps, {name}: centroid tide ({ct[0]:.6f}, {ct[1]:.6f}, {ct[2]:.6f}) m, Genesis "
                  f"({cg[0]:.6f}, {cg[1]:.6f}, {cg[2]:.6f}) m, |difference| {dc:.2e} m ({dc / moved:.1e} of the "
                  f"{moved:.4f} m it moved); max particle |difference| {dmax:.2e} m: {'ok' if good else 'MISMATCH'}")
        path = os.path.join(tmp, "g.npy")
        ans = peer.ask(cmd="grad", substeps=K, out=path)  # also compiles Genesis' gradient kernels
        gg = np.load(path).astype(np.float64)
        v0 = torch.as_tensor(gp.initial_velocity(m.n), dtype=m.x0.dtype)
        w = torch.as_tensor(gp.loss_weights(m.n), dtype=m.x0.dtype)
        ro = Rollout(solver, K, gp.SCENE["dt"], segment=K)
        x, v, _ = ro.run(m.x0, v0)
        gt = ro.grad(w, torch.zeros_like(v))["v0"].detach().cpu().numpy().astype(np.float64)
        loss = float((w.double() * x.double()).sum())
        rel = np.linalg.norm(gt - gg) / np.linalg.norm(gg)
        good = abs(loss - ans["loss"]) <= 1e-4 * abs(loss) and rel <= 1e-3
        ok &= bool(good)
        print(f"  check, {K} substeps, L = sum(w*x_T): tide {loss:.6f}, Genesis {ans['loss']:.6f}; dL/dv0 |g| tide "
              f"{np.linalg.norm(gt):.6f}, Genesis {np.linalg.norm(gg):.6f}, relative difference {rel:.1e}: "
              f"{'ok' if good else 'MISMATCH'}")
    return ok


def genesis_forward(args, m, solver, peers, steps, n, dt):
    """Forward particle·steps/s: tide and each Genesis thread count in turn, best of ``--rounds``."""
    st = m.state()
    solver.advance(st, 1, dt)
    for p in peers:
        p.ask(cmd="forward", substeps=steps)  # warm
    best_t, best_g = float("inf"), [float("inf")] * len(peers)
    for _ in range(args.rounds):
        t = time.perf_counter()
        solver.advance(st, steps, dt)
        best_t = min(best_t, time.perf_counter() - t)
        for i, p in enumerate(peers):
            best_g[i] = min(best_g[i], p.ask(cmd="forward", substeps=steps)["seconds"])
    print(f"  forward, {steps} substeps per round, best of {args.rounds} alternating rounds:")
    print(f"    tide ({solver_threads()} threads)        {n * steps / best_t / 1e6:6.2f} M particle·steps/s "
          f"({best_t / steps * 1e3:.1f} ms per substep)")
    for p, b in zip(peers, best_g):
        print(f"    Genesis ({p.threads} thread{'s' if p.threads > 1 else ''})      {n * steps / b / 1e6:6.2f} M "
              f"particle·steps/s ({b / steps * 1e3:.1f} ms per substep): tide/Genesis {b / best_t:.2f}x")


def solver_threads():
    import taichi as ti

    return ti.lang.impl.current_cfg().cpu_max_num_threads


def genesis_grad(args, gp, m, solver, peer, T, K):
    """Forward + backward over T substeps with a checkpoint every K in both, alternating, best of rounds."""
    import torch

    from engine.physics.checkpoint import Rollout

    dt = gp.SCENE["dt"]
    v0 = torch.as_tensor(gp.initial_velocity(m.n), dtype=m.x0.dtype)
    w = torch.as_tensor(gp.loss_weights(m.n), dtype=m.x0.dtype)
    ro = Rollout(solver, T, dt, segment=K)
    best = {"tide": [float("inf")] * 2, "genesis": [float("inf")] * 2}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "g.npy")
        for r in range(args.genesis_grad_rounds):
            t = time.perf_counter()
            x, v, _ = ro.run(m.x0, v0)
            t_fwd = time.perf_counter() - t
            g = ro.grad(w, torch.zeros_like(v))["v0"]
            t_bwd = time.perf_counter() - t - t_fwd
            ans = peer.ask(cmd="grad", substeps=T, out=path)
            for key, (f, b) in (("tide", (t_fwd, t_bwd)), ("genesis", (ans["forward"], ans["backward"]))):
                if f + b < sum(best[key]):
                    best[key] = [f, b]
            if r == 0:
                gg = np.load(path).astype(np.float64)
                gt = g.detach().cpu().numpy().astype(np.float64)
                loss = float((w.double() * x.double()).sum())
                print(f"  forward + backward, {T} substeps, checkpoint every {K}: L tide {loss:.6f}, Genesis "
                      f"{ans['loss']:.6f}; dL/dv0 relative difference {np.linalg.norm(gt - gg) / np.linalg.norm(gg):.1e}")
    (tf, tb), (gf, gb) = best["tide"], best["genesis"]
    print(f"    tide ({solver_threads()} threads)        forward {tf:7.2f} s + backward {tb:7.2f} s = {tf + tb:7.2f} s")
    print(f"    Genesis ({peer.threads} threads)     forward {gf:7.2f} s + backward {gb:7.2f} s = {gf + gb:7.2f} s: "
          f"tide/Genesis {(gf + gb) / (tf + tb):.2f}x (best of {args.genesis_grad_rounds} alternating rounds)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="substeps timed per configuration and round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (best of each is kept)")
    ap.add_argument("--precision", default=None, choices=["f32", "f64"],
                    help="default f32; f64 for --memory and --materials (3D gradient kernels compile in f64 only in "
                         "reasonable time, as 3D co-design runs)")
    ap.add_argument("--skip-grad", action="store_true")
    ap.add_argument("--profile", action="store_true", help="per-kernel µs/substep of the 2D full-tape fwd+bwd")
    ap.add_argument("--memory", action="store_true", help="measure a real 3D f64 checkpointed rollout's memory")
    ap.add_argument("--substeps", type=int, default=240, help="substeps of the --memory rollout")
    ap.add_argument("--scaling", action="store_true",
                    help="time per substep against particle count (2D 64^2..256^2, 3D 32^3..128^3 grids), both solvers")
    ap.add_argument("--plot", action="store_true", help="with --scaling: write docs/bench_mpm_scaling.png")
    ap.add_argument("--materials", action="store_true",
                    help="each material's forward and forward+backward per substep, hand vs generated stress adjoints")
    ap.add_argument("--dims", default="2,3", help="with --materials: the dimensions to run")
    ap.add_argument("--no-cold", action="store_true", help="with --materials: skip the cold-compile subprocesses")
    ap.add_argument("--genesis-only", action="store_true", help="run only the comparison with Genesis")
    ap.add_argument("--no-genesis", action="store_true", help="skip the comparison with Genesis")
    ap.add_argument("--genesis-python", default=None,
                    help="interpreter with genesis-world installed (default: $TIDE_GENESIS_PYTHON, else this one)")
    ap.add_argument("--genesis-threads", default="2,1",
                    help="Genesis worker threads (QD_NUM_THREADS), comma-separated; fwd+bwd uses the first")
    ap.add_argument("--genesis-substeps", type=int, default=200, help="substeps of the forward + backward run")
    ap.add_argument("--genesis-window", type=int, default=20, help="substeps per checkpoint (both engines)")
    ap.add_argument("--genesis-check", type=int, default=500, help="substeps of the agreement check")
    ap.add_argument("--genesis-grad-rounds", type=int, default=2, help="alternating forward + backward rounds")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from engine import backend
    from engine.physics.checkpoint import memory_estimate

    precision = args.precision or ("f64" if args.memory or args.materials else "f32")
    s = backend.init(arch=os.environ.get("TIDE_ARCH", "auto"), precision=precision)
    import taichi as ti

    real = backend.real()
    import torch

    print(f"arch={s.resolved_arch} precision={s.precision} fast_compile={s.fast_compile} "
          f"taichi_threads={ti.lang.impl.current_cfg().cpu_max_num_threads} torch_threads={torch.get_num_threads()}")
    if args.profile:
        us = profile_grad(128, 1e-4, 100, 2 * args.rounds)
        print("2D 128^2 fluid, full tape, forward + backward: µs per substep")
        for k, v in sorted(us.items(), key=lambda kv: -kv[1]):
            print(f"  {k:<24}{v:>9.1f}")
        return
    if args.memory:
        n, res, K, measured, est, seconds = bench_memory(args.substeps)
        gib = 2.0 ** 30
        print(f"3D f64 rollout, {n} particles, grid {res[0]}^3, {args.substeps} substeps, K={K} ({seconds:.0f} s "
              f"forward+backward): peak RSS above baseline {measured / gib:.3f} GiB, formula {est['total'] / gib:.3f} "
              f"GiB (measured/formula {measured / est['total']:.2f})")
        factor = max(1.0, measured / est["total"])
        for res_, K_ in (((64,) * 3, 63), ((128,) * 3, 20)):
            e = memory_estimate(20000, 3, res_, 4000, K_, bytes_per_float=8)
            print(f"4000 substeps x 20k particles 3D f64, grid {res_[0]}^3, K={K_}: formula {e['total'] / gib:.2f} GiB, "
                  f"x{factor:.2f} measured overhead = {e['total'] * factor / gib:.2f} GiB (of 24 GiB)")
        return
    if args.scaling:
        bench_scaling(ti, real, args)
        return
    if args.materials:
        print(f"load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print("ms per substep, best of {} alternating rounds: CPU time (process_time: robust to the box's load, "
              "which makes each kernel launch wait for a core) and wall time; forward = checkpointed run, both = run +"
              " backward; 2D {} grid, {} substeps; 3D {} grid, {} substeps".format(
                  args.rounds, MATERIAL_SCENES[2]["res"], MATERIAL_SCENES[2]["substeps"], MATERIAL_SCENES[3]["res"],
                  MATERIAL_SCENES[3]["substeps"]))
        print(f"{'':<20}{'-- CPU: generated --':>18} {'-- CPU: hand --':>18} {'both/':>8} {'gen/':>8}   "
              f"{'-- wall: both --':>19}")
        print(f"{'material':<13}{'N':>7} {'fwd':>8} {'both':>9} {'fwd':>8} {'both':>9} {'fwd':>8} {'hand':>8}   "
              f"{'generated':>9} {'hand':>9}")
        bench_materials([int(d) for d in args.dims.split(",")], args.rounds)
        if not args.no_cold:
            for mode, (f, b, warm) in bench_cold_compile(s.precision).items():
                print(f"cold compile, 3D sand rollout ({mode} stress adjoint), empty kernel cache: first forward "
                      f"{f:.1f} s, first backward {b:.1f} s (then {warm:.2f} s for both)", flush=True)
            print(f"load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
        return
    if args.genesis_only:
        if precision != "f32":
            raise SystemExit("the Genesis comparison runs in f32")
        bench_genesis(args)
        return
    print(f"{'config':<28}{'reference p·steps/s':>22}{'tide p·steps/s':>18}{'ratio':>8}")
    for dim, n_grid, dt, steps in ((3, 64, 2e-4, args.steps), (2, 256, 1e-4, args.steps * 5)):
        n, r_ref, r_tide = bench_forward(dim, n_grid, dt, steps, ti, real, args.rounds)
        print(f"{f'{dim}D {n_grid}^{dim}, {n} particles':<28}{r_ref / 1e6:>20.2f} M{r_tide / 1e6:>16.2f} M"
              f"{r_tide / r_ref:>7.2f}x")
    if not args.skip_grad:
        steps, segments = 100, (100, 10)
        fast, staged, boths = bench_grad(128, 1e-4, steps, segments, 2 * args.rounds)
        print(f"2D 128^2 fluid, {steps} substeps: forward {fast:.3f} s, differentiable forward {staged:.3f} s")
        for K, both in zip(segments, boths):
            label = "full tape" if K == steps else f"checkpoint every {K}"
            print(f"  {label}: forward+backward {both:.3f} s = {both / fast:.2f}x forward "
                  f"({both / staged:.2f}x the differentiable forward)")
    for res, K in (((64,) * 3, 63), ((128,) * 3, 20)):
        est = memory_estimate(20000, 3, res, 4000, K, bytes_per_float=8)
        parts = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in est.items())
        print(f"memory (formula), 4000 substeps x 20k particles 3D f64, grid {res[0]}^3, K={K}: {parts}")
    if not args.no_genesis and precision == "f32":
        bench_genesis(args)


if __name__ == "__main__":
    main()
