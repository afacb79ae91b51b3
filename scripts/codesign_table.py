"""SoftZoo-style results table: each optimiser x each environment on the same compute budget, over seeds.

Every run co-designs body (SDF-basis) and open-loop sine controller for a task (``--task``: locomotion by default;
turning, waypoints, velocity) in 2D or 3D (``--dim``). The budget is in rollout equivalents (one forward episode =
1; a diffsim iteration = forward + backward = ``DIFFSIM_COST``), so diffsim gets budget/3 Adam steps and CMA-ES /
random search get budget/popsize generations. Columns: ``diffsim`` (design and control), ``diffsim_control``
(control only, the body stays the initial one), ``cmaes``, ``random``. The score is the distance travelled along
+x [m] for locomotion, else the task reward (−loss), of the best parameters found (higher is better); the table
shows mean ± standard deviation over seeds and the initial design's score for reference, and ``--png`` draws it as
a bar chart.

A thin layer over ``tide sweep``: each (environment, column, seed) is an ordinary ``tide run codesign`` in
``--sweep-dir/runs/`` (its video, metrics and design exports included), run ``--workers`` at a time on an embedded
Ray (or ``--ray-address`` for a cluster); populations are evaluated inside each run. ``--resume`` continues an
interrupted table.

    python scripts/codesign_table.py [--dim 3] [--task locomotion] [--budget 24] [--seeds 0,1,2]
                                     [--envs ground,ice,...] [--out table.md] [--png table.png]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


COLUMNS = {"diffsim": {"optimiser": "diffsim", "optimise": "both"},
           "diffsim_control": {"optimiser": "diffsim", "optimise": "control"},
           "cmaes": {"optimiser": "cmaes", "optimise": "both"},
           "random": {"optimiser": "random", "optimise": "both"}}
"""Table columns: the optimiser and which parameters it trains."""


def iterations(opt: str, args) -> int:
    from tasks.codesign import DIFFSIM_COST

    if COLUMNS[opt]["optimiser"] == "diffsim":
        return max(1, int(args.budget // DIFFSIM_COST))
    return max(1, args.budget // args.popsize)


def _score(r, args, initial=False) -> float:
    if args.task == "locomotion":
        return float(r["initial_distance" if initial else "distance"])
    return -float(r["initial_loss" if initial else "final_loss"])


def _column(r) -> str:
    for name, sets in COLUMNS.items():
        if r["optimiser"] == sets["optimiser"] and r.get("optimise", "both") == sets["optimise"]:
            return name
    return r["optimiser"]


def scores(result, envs, opts, args) -> dict:
    """{(environment, column): array of the seeds' scores}, plus {(environment, "initial"): ...}."""
    out = {}
    for r in result.table:
        if r["status"] == "ok":
            out.setdefault((r["env"], _column(r)), []).append(_score(r, args))
            out.setdefault((r["env"], "initial"), []).append(_score(r, args, initial=True))
    return {k: np.array(v) for k, v in out.items()}


def table_lines(result, envs, opts, args) -> list[str]:
    """The markdown table from the sweep's rows: score mean ± std per (environment, column)."""
    sc = scores(result, envs, opts, args)
    what = "Distance travelled [m] along +x" if args.task == "locomotion" else f"Reward (−loss) of the {args.task} task"
    dt = "2 ms" if args.dim == 3 else "1 ms"
    lines = [f"{what} after co-design ({args.dim}D, res {args.res}, {args.steps}x{args.substeps} substeps of {dt}, "
             f"budget {args.budget} rollout equivalents, mean ± std over seeds {args.seeds}):",
             "", "| environment | initial | " + " | ".join(opts) + " |", "|---" * (len(opts) + 2) + "|"]
    for env in envs:
        init = sc.get((env, "initial"))
        cells = []
        for opt in opts:
            d = sc.get((env, opt), np.array([]))
            cells.append(f"{d.mean():.3f} ± {d.std():.3f}" if len(d) else "—")
        lines.append(f"| {env} | {f'{init.mean():.3f}' if init is not None else '—'} | " + " | ".join(cells) + " |")
    return lines


def bar_chart(path, result, envs, opts, args) -> None:
    """Grouped bars: one group per environment, one bar per column (mean, with the seeds' std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.io.atomic import atomic_path

    sc = scores(result, envs, opts, args)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(envs) + 2), 3.6))
    width = 0.8 / len(opts)
    for j, opt in enumerate(opts):
        m = [sc[(e, opt)].mean() if (e, opt) in sc else np.nan for e in envs]
        s = [sc[(e, opt)].std() if (e, opt) in sc else 0.0 for e in envs]
        ax.bar(np.arange(len(envs)) + (j - (len(opts) - 1) / 2) * width, m, width, yerr=s, capsize=2, label=opt)
    ax.set_xticks(np.arange(len(envs)), envs, rotation=20)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_ylabel("distance [m]" if args.task == "locomotion" else "reward")
    ax.set_title(f"{args.dim}D co-design, {args.task}, budget {args.budget} rollouts, seeds {args.seeds}")
    ax.legend(fontsize=8, ncol=len(opts))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv=None):
    from tasks.codesign import ENVIRONMENTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=2, choices=[2, 3])
    ap.add_argument("--task", default="locomotion", choices=["locomotion", "turning", "waypoints", "velocity"])
    ap.add_argument("--budget", type=int, default=24, help="rollout equivalents per run")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--envs", default=",".join(ENVIRONMENTS))
    ap.add_argument("--optimisers", default=None,
                    help=f"columns, from {','.join(COLUMNS)} (default: diffsim,cmaes,random in 2D, all in 3D)")
    ap.add_argument("--res", type=int, default=None, help="grid (default 32 in 2D, 24 in 3D)")
    ap.add_argument("--steps", type=int, default=30, help="control steps per episode")
    ap.add_argument("--substeps", type=int, default=None, help="substeps per control step (default 10 in 2D, 5 in 3D)")
    ap.add_argument("--png", default=None, help="also draw the table as a bar chart here")
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
    args.optimisers = args.optimisers or ("diffsim,cmaes,random" if args.dim == 2 else ",".join(COLUMNS))
    args.res = args.res or (32 if args.dim == 2 else 24)
    args.substeps = args.substeps or (10 if args.dim == 2 else 5)
    opts = [o for o in args.optimisers.split(",") if o]
    bad = [o for o in opts if o not in COLUMNS]
    if bad:
        print(f"codesign_table: error: unknown column {bad[0]!r}; choose from {', '.join(COLUMNS)}", file=sys.stderr)
        return 2
    grid = [[{"env": e} for e in envs],
            [{**COLUMNS[o], "iterations": str(iterations(o, args))} for o in opts]]
    sets = [f"dim={args.dim}", f"task={args.task}", f"res={args.res}", f"steps={args.steps}",
            f"substeps={args.substeps}", f"n_groups={args.groups}",
            f"lr={args.lr}", f"popsize={args.popsize}", f"sigma={args.sigma}",
            "workers=0",  # the sweep runs the table's runs in parallel; each evaluates its population in-process
            "frames=0"]  # no playback video: the table needs the scores only
    t0 = time.perf_counter()
    try:
        plan = make_plan("codesign", grid, parse_seeds(args.seeds), sets)
        result = run_sweep(plan, args.sweep_dir, workers=args.workers, address=args.ray_address, resume=args.resume,
                           arch="cpu", precision=args.precision,
                           metrics=["distance", "initial_distance", "final_loss", "initial_loss"])
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
    if args.png:
        bar_chart(args.png, result, envs, opts, args)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
