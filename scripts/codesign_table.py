"""SoftZoo-style results table: each optimiser x each environment on the same compute budget, over seeds.

Every run co-designs body (SDF-basis) and open-loop sine controller for 2D forward locomotion. The budget is in
rollout equivalents (one forward episode = 1; a diffsim iteration = forward + backward = ``DIFFSIM_COST``), so
diffsim gets budget/3 Adam steps and CMA-ES / random search get budget/popsize generations. The score is the
distance travelled along +x [m] by the best parameters found (higher is better); the table shows mean ± standard
deviation over seeds and the initial design's distance for reference. Gradient-free populations run on an
embedded Ray instance (``--workers``).

    python scripts/codesign_table.py [--budget 24] [--seeds 0,1,2] [--envs ground,ice,...] [--out table.md]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_one(opt_name, env, seed, args, ray_ok):
    import torch

    from tasks.codesign import CMAES, DIFFSIM_COST, Diffsim, Population, Problem, ProblemSpec, RandomSearch, WorldSpec

    spec = ProblemSpec(world=WorldSpec(env=env, res=args.res, robot_size=(0.2, 0.1)), representation="sdf_basis",
                       controller="sine", n_groups=args.groups, steps=args.steps, substeps=args.substeps, dt=1e-3,
                       optimise="both", seed=seed)
    problem = Problem(spec)
    with torch.no_grad():
        initial = problem.summary(problem.rollout())["distance"]
    t0 = time.perf_counter()
    if opt_name == "diffsim":
        opt = Diffsim(problem, lr=args.lr)
        best = -np.inf
        for i in range(max(1, int(args.budget // DIFFSIM_COST))):
            best = max(best, -opt.step(i).loss)
    else:
        pop = Population(spec, workers=args.workers if ray_ok else 0, precision=args.precision, problem=problem)
        try:
            x0 = problem.vector()
            opt = (CMAES(x0, pop, sigma0=args.sigma, popsize=args.popsize, seed=seed) if opt_name == "cmaes"
                   else RandomSearch(x0, pop, sigma=args.sigma, popsize=args.popsize, seed=seed))
            for i in range(max(1, args.budget // args.popsize)):
                opt.step(i)
            best = -opt.best
        finally:
            pop.close()
    return initial, float(best), time.perf_counter() - t0


def main(argv=None):
    from tasks.codesign import ENVIRONMENTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=24, help="rollout equivalents per run")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--envs", default=",".join(ENVIRONMENTS))
    ap.add_argument("--optimisers", default="diffsim,cmaes,random")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="control steps per episode")
    ap.add_argument("--substeps", type=int, default=10)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--popsize", type=int, default=6)
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--workers", type=int, default=2, help="Ray workers for populations (0: in-process)")
    ap.add_argument("--precision", default="f64", choices=["f64"], help="f64 (f32 MPM adjoints are not usable)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    from engine import backend

    backend.init(arch="cpu", precision=args.precision)
    seeds = [int(s) for s in args.seeds.split(",")]
    envs = [e for e in args.envs.split(",") if e]
    opts = [o for o in args.optimisers.split(",") if o]
    ray_ok = False
    if args.workers > 0 and any(o != "diffsim" for o in opts):
        import ray

        from tasks.codesign.population import _ROOT

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": _ROOT}})
        ray_ok = True
    rows, t_all = {}, time.perf_counter()
    for env in envs:
        for opt in opts:
            res = [run_one(opt, env, s, args, ray_ok) for s in seeds]
            rows[(env, opt)] = res
            d = np.array([r[1] for r in res])
            print(f"{env:14s} {opt:8s} distance {d.mean():+.4f} ± {d.std():.4f} m  "
                  f"(initial {np.mean([r[0] for r in res]):+.4f}, {np.mean([r[2] for r in res]):.1f} s/run)",
                  flush=True)
    lines = [f"Distance travelled [m] along +x after co-design (2D, res {args.res}, {args.steps}x{args.substeps} "
             f"substeps of 1 ms, budget {args.budget} rollout equivalents, mean ± std over seeds {args.seeds}):",
             "", "| environment | initial | " + " | ".join(opts) + " |", "|---" * (len(opts) + 2) + "|"]
    for env in envs:
        init = np.mean([r[0] for r in rows[(env, opts[0])]])
        cells = []
        for opt in opts:
            d = np.array([r[1] for r in rows[(env, opt)]])
            cells.append(f"{d.mean():.3f} ± {d.std():.3f}")
        lines.append(f"| {env} | {init:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Total wall time {time.perf_counter() - t_all:.0f} s on this machine.")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        from engine.io import write_text

        write_text(args.out, table + "\n")
    if ray_ok:
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
