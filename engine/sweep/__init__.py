"""``tide sweep``: run a scene over grids of settings, seeds and datasets, on one machine or a Ray cluster.

Each run is an ordinary ``tide run`` (in a fresh subprocess) into ``DIR/runs/<key=value,...,seed=S>/``; the sweep
adds ``summary.csv`` / ``summary.md`` (per-run rows and mean ± std over seeds) and, with ``--plot``, a bar chart.

    from engine.sweep import make_plan, run_sweep
    plan = make_plan("codesign", ["env=ground,ice", "optimiser=diffsim,cmaes"], seeds=[0, 1, 2])
    result = run_sweep(plan, "runs/table", workers=2, metrics=["distance"])
"""
from .driver import SweepResult, add_arguments, cmd_sweep, run_sweep
from .plan import Plan, RunSpec, make_plan, parse_grid, parse_seeds

__all__ = ["make_plan", "run_sweep", "SweepResult", "Plan", "RunSpec", "parse_grid", "parse_seeds",
           "add_arguments", "cmd_sweep"]
