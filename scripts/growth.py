"""Shared by the ``bench_*.py`` scripts: how cost grows with size (time per doubling) and the ``--plot`` figures."""
import os

import numpy as np

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def per_doubling(sizes, times) -> float:
    """Least-squares slope of log2(time) against log2(size), as the factor per doubling of size (nan if fewer than
    two distinct sizes)."""
    lx, lt = np.log2(np.asarray(sizes, float)), np.log2(np.asarray(times, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        return float("nan")
    return float(2 ** np.polyfit(lx, lt, 1)[0])


def table(title: str, size_label: str, sizes, series: dict, unit: str = "ms"):
    """Print a size-vs-time table (one column per series) and each series' growth per doubling of size."""
    print(f"\n{title}")
    names = list(series)
    print(f"{size_label:>14} " + " ".join(f"{n:>14}" for n in names))
    for i, s in enumerate(sizes):
        print(f"{s:>14,} " + " ".join(f"{series[n][i]:>12.1f}{unit:>2}" for n in names))
    print(f"{'per doubling':>14} " + " ".join(f"{'x%.2f' % per_doubling(sizes, series[n]):>14}" for n in names))


def plot(name: str, title: str, size_label: str, panels: dict, ylabel: str = "ms (median)"):
    """Write docs/<name>.png: one log-log panel per entry of ``panels`` = {panel title: (sizes, {series: times})}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (pt, (sizes, series)) in zip(axes.flat, panels.items()):
        for label, ts in series.items():
            ax.loglog(sizes, ts, "o-", label=label, base=2)
        ax.set_title(pt, fontsize=10)
        ax.set_xlabel(size_label)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(DOCS, exist_ok=True)
    out = os.path.join(DOCS, f"{name}.png")
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, out)
    plt.close(fig)
    print(f"plot written to {out}")
