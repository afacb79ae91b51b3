"""The refine scene's comparison table: coarse / refined (BoostDream: distil, then SDS) / SDS from scratch, against
the fine ground truth, on held-out procedural shapes.

    nice -n 5 python scripts/refine_table.py --classes chair,table,mug --shapes 5 --out runs/refine_table.json

For every (class, held-out shape): the coarse asset (the scene's own coarse maker), the refined asset (the scene's
default settings) and SDS from scratch with the same wall time (``budget_s`` = the refined run's build + distillation +
refinement time; both wall times and the scratch step count are recorded). The distilled asset (before SDS) is
reported too, so the table shows what the SDS refinement itself adds. Rows are appended to ``--out`` as they finish (JSON, rewritten atomically), so a killed run keeps its
rows and a rerun skips them. Prints a markdown table of the means per class and the win counts.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("chamfer_l1", "normal_consistency", "gt_psnr")


class _Run:
    """The two methods of engine's Run that Scene.optimize uses, without checkpoints or progress bars."""

    def loop(self, n, state=None, load=None, desc=""):
        return range(n)

    def log(self, **kw):
        pass


def one(cls: str, i: int, init: str, overrides: dict, budget_s: float = 0.0) -> dict:
    import scenes.refine as sc

    cfg = sc.Config(prompt=cls, held_out=i, init=init, **overrides)
    if init == "scratch":      # as many SDS steps as fit in the refined run's wall time
        cfg.steps, cfg.budget_s = 100_000, budget_s
    t0 = time.perf_counter()
    s = sc.Scene(cfg)
    s.build()
    s.optimize(_Run())
    wall = time.perf_counter() - t0
    m = s.metrics()
    m["wall_s"] = wall
    return m


def table(rows: list) -> str:
    out = ["| class | n | Chamfer-L1 ↓ coarse / distilled / refined / scratch | normal consistency ↑ | PSNR (dB) ↑ | "
           "refined beats coarse (CD, NC, PSNR) | refined beats scratch | best_shift_deg = 0 (refined, scratch) | "
           "wall s (refined, scratch) |", "|" + "---|" * 9]
    for cls in dict.fromkeys(r["class"] for r in rows):
        rs = [r for r in rows if r["class"] == cls]
        cells = []
        for k in KEYS:
            cells.append(" / ".join(f"{np.mean([r[m][k] for r in rs]):.4g}" if all(r.get(m) for r in rs) else "-"
                                    for m in ("coarse", "distilled", "refined", "scratch")))
        better = lambda a, b, k: (a[k] < b[k]) if k == "chamfer_l1" else (a[k] > b[k])  # noqa: E731
        wc = ", ".join(str(sum(better(r["refined"], r["coarse"], k) for r in rs)) for k in KEYS)
        ws = ", ".join(str(sum(better(r["refined"], r["scratch"], k) for r in rs)) for k in KEYS)
        front = f"{sum(r['refined']['best_shift_deg'] == 0 for r in rs)}, {sum(r['scratch']['best_shift_deg'] == 0 for r in rs)}"
        if all("front_margin" in r["refined"] for r in rs):
            front += " (margin " + ", ".join(f"{np.mean([r[m]['front_margin'] for r in rs]):.4f}"
                                             for m in ("refined", "scratch")) + ")"
        wall = f"{np.mean([r['wall_refined'] for r in rs]):.0f}, {np.mean([r['wall_scratch'] for r in rs]):.0f}"
        out.append(f"| {cls} | {len(rs)} | " + " | ".join(cells) + f" | {wc} | {ws} | {front} | {wall} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", default="chair,table,mug")
    p.add_argument("--shapes", type=int, default=5, help="held-out shapes per class")
    p.add_argument("--out", default=str(ROOT / "runs" / "refine_table.json"))
    p.add_argument("--set", action="append", default=[], help="Config override key=value (both methods)")
    p.add_argument("--print", action="store_true", help="only print the table of an existing --out")
    args = p.parse_args()
    from engine.io import write_json

    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    if not args.print:
        import torch

        from engine import backend

        backend.init(arch="cpu")
        torch.set_num_threads(1)
        import scenes.refine as sc

        types = {k: type(v) for k, v in vars(sc.Config()).items()}
        overrides = {k: types[k](v) for k, v in (s.split("=", 1) for s in args.set)}
        for i in range(args.shapes):                      # shape-major: every class gets its i-th shape early
            for cls in args.classes.split(","):
                if any(r["class"] == cls and r["held_out"] == i for r in rows):
                    continue
                t0 = time.time()
                a = one(cls, i, "distill", overrides)
                b = one(cls, i, "scratch", overrides, budget_s=a["wall_s"])
                rows.append({"class": cls, "held_out": i, "coarse": a["coarse"], "distilled": a.get("distilled"), "refined": a["refined"],
                             "scratch": b["refined"], "scratch_steps": b["sds_steps"], "wall_refined": a["wall_s"], "wall_scratch": b["wall_s"],
                             "distill": a["distill"], "load_average": os.getloadavg(), "settings": overrides})
                write_json(out, rows)
                r = rows[-1]
                print(f"{cls} {i}: CD {r['coarse']['chamfer_l1']:.4f} -> {r['refined']['chamfer_l1']:.4f} "
                      f"(scratch {r['scratch']['chamfer_l1']:.4f}), PSNR {r['coarse']['gt_psnr']:.2f} -> "
                      f"{r['refined']['gt_psnr']:.2f} (scratch {r['scratch']['gt_psnr']:.2f}), "
                      f"{time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
