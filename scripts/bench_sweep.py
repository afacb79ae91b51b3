"""Benchmark `tide sweep` (not a test): its overhead per run against a shell loop of `tide run`, and the speed-up
from 1 to 2 workers.

The same N short runs of ``tests/data/sweep_scene.py`` (a 2 x 2 grid x N/4 seeds, 20 Adam steps each, so a run is
mostly process start-up: torch and Taichi imports, ``ti.init``, the video and ``loss.png``) are timed three ways:

1. a shell loop calling ``tide run`` once per run, one after the other;
2. ``tide sweep --workers 1`` (Ray start-up, one run at a time);
3. ``tide sweep --workers 2``.

Overhead per run = (2 - 1) / N; speed-up = 2 / 3. Times are wall clock on a box shared with other work, so run it
twice and compare.

    python scripts/bench_sweep.py [--runs 16] [--out runs/bench_sweep]
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "tests" / "data" / "sweep_scene.py")
FLAGS = ["--arch", "cpu", "--precision", "f64", "--no-progress"]


def _env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    # the same per-run thread caps the sweep gives its runs, so the loop is not penalised by oversubscription
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TI_CPU_MAX_NUM_THREADS="1")
    return e


def _timed(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16, help="number of runs (a multiple of 4)")
    ap.add_argument("--out", default="runs/bench_sweep")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    seeds = list(range(max(1, args.runs // 4)))
    n = 4 * len(seeds)
    grid = ["--grid", "shape=square,circle", "--grid", "scale=0.5,1", "--seeds", ",".join(map(str, seeds))]
    py = [sys.executable, "-m", "engine.cli"]

    t0 = time.perf_counter()
    for shape in ("square", "circle"):
        for scale in ("0.5", "1"):
            for s in seeds:
                _timed([*py, "run", SCENE, "--out", str(out / "loop" / f"{shape}_{scale}_{s}"), "--seed", str(s),
                        "--set", f"shape={shape}", "--set", f"scale={scale}", *FLAGS])
    t_loop = time.perf_counter() - t0
    t_one = _timed([*py, "sweep", SCENE, *grid, "--out", str(out / "w1"), "--workers", "1", *FLAGS])
    t_two = _timed([*py, "sweep", SCENE, *grid, "--out", str(out / "w2"), "--workers", "2", *FLAGS])
    print(f"{n} runs of sweep_scene on {os.cpu_count()} cores (wall clock; shared box, expect noise):")
    print(f"  shell loop of `tide run`      {t_loop:7.1f} s  ({t_loop / n:.2f} s/run)")
    print(f"  tide sweep --workers 1        {t_one:7.1f} s  (overhead {(t_one - t_loop) / n:+.2f} s/run)")
    print(f"  tide sweep --workers 2        {t_two:7.1f} s  (speed-up over 1 worker {t_one / t_two:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
