"""SoftZoo-style results table: each optimiser x each environment on the same compute budget, over seeds.

Every run co-designs body (SDF-basis) and open-loop sine controller for 2D forward locomotion. The budget is in
rollout equivalents (one forward episode = 1; a diffsim iteration = forward + backward = ``DIFFSIM_COST``), so
diffsim gets budget/3 Adam steps and CMA-ES / random search get budget/popsize generations. The score is the
distance travelled along +x [m] by the best parameters found (higher is better); the table shows mean ± standard
deviation over seeds and the initial design's distance for reference.

A thin layer over ``tide sweep``: each (environment, optimiser, seed) is an ordinary ``tide run codesign`` in
``--sweep-dir/runs/`` (its video, metrics and design exports included), run ``--workers`` at a time on an embedded
Ray (or ``--ray-address`` for a cluster); populations are evaluated inside each run. ``--resume`` continues an
interrupted table.

    python scripts/codesign_table.py [--budget 24] [--seeds 0,1,2] [--envs ground,ice,...] [--out table.md]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def iterations(opt: str, args) -> int:
    from tasks.codesign import DIFFSIM_COST

    return max(1, int(args.budget // DIFFSIM_COST)) if opt == "diffsim" else max(1, args.budget // args.popsize)


def table_lines(result, envs, opts, args) -> list[str]:
    """The markdown table from the sweep's rows: distance mean ± std per (environment, optimiser)."""
    by = {}
    for r in result.table:
        if r["status"] == "ok":
            by.setdefault((r["env"], r["optimiser"]), []).append(r)
    lines = [f"Distance travelled [m] along +x after co-design (2D, res {args.res}, {args.steps}x{args.substeps} "
             f"substeps of 1 ms, budget {args.budget} rollout equivalents, mean ± std over seeds {args.seeds}):",
             "", "| environment | initial | " + " | ".join(opts) + " |", "|---" * (len(opts) + 2) + "|"]
    for env in envs:
        first = by.get((env, opts[0]), [])
        init = f"{np.mean([float(r['initial_distance']) for r in first]):.3f}" if first else "—"
        cells = []
        for opt in opts:
            d = np.array([float(r["distance"]) for r in by.get((env, opt), [])])
            cells.append(f"{d.mean():.3f} ± {d.std():.3f}" if len(d) else "—")
        lines.append(f"| {env} | {init} | " + " | ".join(cells) + " |")
    return lines


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
    ap.add_argument("--workers", type=int, default=2, help="runs at a time (CPUs of the embedded Ray)")
    ap.add_argument("--ray-address", default=None, help="run the table on a Ray cluster instead")
    ap.add_argument("--precision", default="f64", choices=["f64"], help="f64 (f32 MPM adjoints are not usable)")
    ap.add_argument("--sweep-dir", default="runs/codesign_table", help="where the sweep's runs and summaries go")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted table in --sweep-dir")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    from engine.errors import TideError
    from engine.sweep import make_plan, parse_seeds, run_sweep

    envs = [e for e in args.envs.split(",") if e]
    opts = [o for o in args.optimisers.split(",") if o]
    grid = [[{"env": e} for e in envs],
            [{"optimiser": o, "iterations": str(iterations(o, args))} for o in opts]]
    sets = [f"res={args.res}", f"steps={args.steps}", f"substeps={args.substeps}", f"n_groups={args.groups}",
            f"lr={args.lr}", f"popsize={args.popsize}", f"sigma={args.sigma}",
            "workers=0",  # the sweep runs the table's runs in parallel; each evaluates its population in-process
            "frames=0"]  # no playback video: the table needs the scores only
    t0 = time.perf_counter()
    try:
        plan = make_plan("codesign", grid, parse_seeds(args.seeds), sets)
        result = run_sweep(plan, args.sweep_dir, workers=args.workers, address=args.ray_address, resume=args.resume,
                           arch="cpu", precision=args.precision, metrics=["distance", "initial_distance"])
    except TideError as exc:
        print(f"codesign_table: error: {exc}", file=sys.stderr)
        return 2
    lines = table_lines(result, envs, opts, args)
    lines += ["", f"Total wall time {time.perf_counter() - t0:.0f} s on this machine "
                  f"({args.workers} runs at a time; runs and summaries in {args.sweep_dir})."]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        from engine.io import write_text

        write_text(args.out, table + "\n")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
