"""Benchmark tide's MPM solver against taichi's shipped mpm3d example, side by side in one process.

The reference is a re-implementation of ``taichi/examples/simulation/mpm3d.py``'s kernel setup (one fused
substep kernel on fields, a J-only fluid with E = 400, ρ = 1): 3D 64³ grid with 65,536 particles, 2D 256² grid with
32,768 particles. tide runs the same fluid through its general solver (``water`` material: full F, colliders,
guards). Prints particle·steps/s for both and the ratio; then tide's forward+backward cost against its forward
cost (2D, segmented checkpoints), and the memory of a 4000-substep, 20k-particle 3D checkpointed backward pass.

Usage: python scripts/bench_mpm.py [--steps 20] [--precision f32] [--skip-grad]
"""
import argparse
import os
import sys
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


def rate(fn, steps, n_particles, sync):
    fn(1)  # compile / warm up
    sync()
    t = time.perf_counter()
    fn(steps)
    sync()
    return n_particles * steps / (time.perf_counter() - t)


def bench_forward(dim, n_grid, dt, steps, ti, real):
    n = n_grid ** dim // 2 ** (dim - 1)
    pts = np.random.default_rng(0).random((n, dim)) * 0.4 + 0.15
    substep, init, sync = reference(dim, n_grid, dt, ti, real)
    init(pts)

    def run_ref(k):
        for _ in range(k):
            substep()
    r_ref = rate(run_ref, steps, n, sync)
    m, solver = tide_fluid(dim, n_grid, pts)
    st = m.state()
    r_tide = rate(lambda k: solver.advance(st, k, dt), steps, n, sync)
    return n, r_ref, r_tide


def bench_grad(n_grid, dt, steps, segment):
    """Seconds for a forward pass vs a forward + segmented backward pass of the 2D fluid."""
    import torch

    from engine.physics.checkpoint import Rollout

    n = n_grid ** 2 // 2
    pts = np.random.default_rng(0).random((n, 2)) * 0.4 + 0.15
    m, solver = tide_fluid(2, n_grid, pts)
    ro = Rollout(solver, steps, dt, segment=segment)
    ro.run(m.x0, m.v0)  # compile forward (grad variant) and backward kernels
    ro.grad(torch.ones_like(m.x0))
    st = m.state()
    solver.advance(st, 1, dt)
    t = time.perf_counter()
    solver.advance(st, steps, dt)
    fwd = time.perf_counter() - t
    t = time.perf_counter()
    ro.run(m.x0, m.v0)
    ro.grad(torch.ones_like(m.x0))
    both = time.perf_counter() - t
    return fwd, both


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="substeps timed per configuration")
    ap.add_argument("--precision", default="f32", choices=["f32", "f64"])
    ap.add_argument("--skip-grad", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from engine import backend

    s = backend.init(arch=os.environ.get("TIDE_ARCH", "auto"), precision=args.precision)
    import taichi as ti

    real = backend.real()
    print(f"arch={s.resolved_arch} precision={s.precision} fast_compile={s.fast_compile}")
    print(f"{'config':<28}{'reference p·steps/s':>22}{'tide p·steps/s':>18}{'ratio':>8}")
    for dim, n_grid, dt, steps in ((3, 64, 2e-4, args.steps), (2, 256, 1e-4, args.steps * 5)):
        n, r_ref, r_tide = bench_forward(dim, n_grid, dt, steps, ti, real)
        print(f"{f'{dim}D {n_grid}^{dim}, {n} particles':<28}{r_ref / 1e6:>20.2f} M{r_tide / 1e6:>16.2f} M"
              f"{r_tide / r_ref:>7.2f}x")
    if not args.skip_grad:
        for segment in (None, 10):
            fwd, both = bench_grad(128, 1e-4, 100, segment or 100)
            label = "full tape" if segment is None else f"checkpoint every {segment}"
            print(f"2D 128^2 fluid, 100 substeps, {label}: forward {fwd:.2f} s, forward+backward {both:.2f} s "
                  f"= {both / fwd:.2f}x forward")
    from engine.physics.checkpoint import memory_estimate

    for res, K in (((64,) * 3, 63), ((128,) * 3, 20)):
        est = memory_estimate(20000, 3, res, 4000, K, bytes_per_float=8)
        parts = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in est.items())
        print(f"memory, 4000 substeps x 20k particles 3D f64, grid {res[0]}^3, K={K}: {parts}")


if __name__ == "__main__":
    main()
