"""Shared by the sweep tests: run `tide sweep` as users do (a subprocess), read its outputs back."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENE = str(ROOT / "tests" / "data" / "sweep_scene.py")
FLAGS = ["--arch", "cpu", "--precision", "f64", "--no-progress"]
GRID = ["--grid", "shape=square,circle", "--grid", "scale=0.5,1", "--seeds", "0,1"]


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(extra)
    return e


def sweep(*args, timeout=600, **extra):
    """Run `tide sweep SCENE ARGS` and return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "engine.cli", "sweep", SCENE, *args, *FLAGS], cwd=ROOT,
                          env=env(**extra), capture_output=True, text=True, timeout=timeout)


def popen(*args, **extra):
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "sweep", SCENE, *args, *FLAGS], cwd=ROOT,
                            env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def summary(out: Path) -> dict:
    """summary.csv as {run key: row}."""
    with open(out / "summary.csv", newline="") as fh:
        return {r["run"]: r for r in csv.DictReader(fh)}


def metrics(out: Path, key: str) -> dict:
    return json.loads((out / "runs" / key / "metrics.json").read_text())


def comparable(row: dict) -> dict:
    """A summary row without what legitimately differs between two sweeps (time, node, the resume marker)."""
    drop = {"run_time_s", "node", "wall_time_s", "resumed_from_iteration"}
    return {k: v for k, v in row.items() if k not in drop and not k.startswith("time_s")}  # time_s: phase timings
