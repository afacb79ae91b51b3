"""A sweep's tables: ``summary.csv`` (one row per run), ``summary.md`` (the grouped table, then the runs) and the
``--plot`` bar chart. Built from the runs' records alone, so they can be rewritten at any time (after each finished
run, and again by ``--resume``).

The grouped table groups runs by every setting but the seed and shows, for each chosen metric, the mean ± the
population standard deviation (numpy's default, ddof=0) over the group's successful runs, and n = how many.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..io import atomic_path, write_text

__all__ = ["flatten", "rows", "numeric_metrics", "grouped", "write_csv", "write_markdown", "write_plot"]

RUN_COLUMNS = ["status", "reason", "run_time_s", "node"]


def flatten(metrics: dict, prefix: str = "") -> dict:
    """Nested metric dicts become ``a.b`` keys; lists are left out (they do not fit a table cell)."""
    out = {}
    for k, v in (metrics or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif not isinstance(v, (list, tuple)):
            out[name] = v
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None


def rows(plan, records: dict) -> tuple[list[dict], list[str]]:
    """One row per planned run (in plan order) and the metric columns (sorted). Runs with no record yet are
    ``pending``."""
    out, metric_cols = [], {}
    taken = set(["run", *plan.columns, "seed", *RUN_COLUMNS])
    for spec in plan.runs:
        rec = records.get(spec.key)
        row = {"run": spec.key, **dict(spec.settings), "seed": spec.seed}
        if rec is None:
            row.update(status="pending", reason="", run_time_s=None, node="")
        else:
            row.update(status=rec["status"], reason=rec.get("reason", ""), run_time_s=rec.get("run_time_s"),
                       node=rec.get("node", ""))
            for k, v in flatten(rec.get("metrics") or {}).items():
                col = k if k not in taken else f"metric.{k}"
                metric_cols[col] = True
                row[col] = v
        out.append(row)
    return out, sorted(metric_cols)


def numeric_metrics(table: list[dict], metric_cols: list[str]) -> list[str]:
    """Metrics that are numbers in every successful run (the default for the grouped table)."""
    ok = [r for r in table if r["status"] == "ok"]
    return [c for c in metric_cols if ok and all(_is_number(r.get(c)) for r in ok)]


def grouped(plan, table: list[dict], metrics: list[str]) -> list[dict]:
    """Groups (settings without the seed, in plan order) with n and {metric: (mean, std)} over ok runs."""
    groups: dict = {}
    for r in table:
        gkey = tuple(r[c] for c in plan.columns)
        g = groups.setdefault(gkey, {"settings": dict(zip(plan.columns, gkey)), "runs": 0, "ok": []})
        g["runs"] += 1
        if r["status"] == "ok":
            g["ok"].append(r)
    out = []
    for g in groups.values():
        stats = {}
        for m in metrics:
            vals = [float(r[m]) for r in g["ok"] if _is_number(r.get(m))]
            if vals:
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
                stats[m] = (mean, std)
        out.append({"settings": g["settings"], "n": len(g["ok"]), "runs": g["runs"], "stats": stats})
    return out


def write_csv(path: Path, table: list[dict], plan, metric_cols: list[str]) -> None:
    cols = ["run", *plan.columns, "seed", *RUN_COLUMNS, *metric_cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    write_text(path, buf.getvalue())


def _fmt(v) -> str:
    if v is None:
        return ""
    if _is_number(v):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def write_markdown(path: Path, plan, table: list[dict], groups: list[dict], metrics: list[str],
                   header: str = "") -> None:
    lines = [header, ""] if header else []
    gcols = plan.columns or ["(all runs)"]
    lines += [f"Mean ± std over seeds (population std; n = successful runs of the group): {', '.join(metrics)}", "",
              "| " + " | ".join([*gcols, "n", *metrics]) + " |", "|---" * (len(gcols) + 1 + len(metrics)) + "|"]
    for g in groups:
        cells = [_fmt(g["settings"][c]) for c in plan.columns] or ["all"]
        cells.append(f"{g['n']}/{g['runs']}")
        for m in metrics:
            cells.append(f"{g['stats'][m][0]:.4g} ± {g['stats'][m][1]:.2g}" if m in g["stats"] else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| " + " | ".join(["run", "status", "time [s]", *metrics, "reason"]) + " |",
              "|---" * (4 + len(metrics)) + "|"]
    for r in table:
        lines.append("| " + " | ".join([r["run"], r["status"], _fmt(r["run_time_s"]),
                                         *[_fmt(r.get(m)) for m in metrics], _fmt(r["reason"])]) + " |")
    write_text(path, "\n".join(lines) + "\n")


def write_plot(path: Path, plan, groups: list[dict], metrics: list[str], title: str = "") -> Path | None:
    """One bar chart per metric: a bar per group (mean, with a ±std error bar). None when nothing to plot."""
    metrics = [m for m in metrics if any(m in g["stats"] for g in groups)]
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["\n".join(f"{k}={v}" for k, v in g["settings"].items()) or "all" for g in groups]
    n = len(metrics)
    fig, axes = plt.subplots(n, 1, figsize=(max(5.0, 0.9 * len(groups) + 2), 3.2 * n), dpi=100, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[:, 0], metrics):
        means = [g["stats"].get(m, (math.nan, 0.0))[0] for g in groups]
        stds = [g["stats"].get(m, (math.nan, 0.0))[1] for g in groups]
        # colour by the last grid key's value, so bars of one setting compare at a glance
        last = plan.columns[-1] if plan.columns else None
        values = list(dict.fromkeys(g["settings"].get(last) for g in groups)) if last else [None]
        col = [colours[values.index(g["settings"].get(last)) % len(colours)] if last else colours[0] for g in groups]
        ax.bar(range(len(groups)), means, yerr=stds, color=col, capsize=4, edgecolor="black", linewidth=0.5)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(m)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    if title:
        axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
