"""`tide sweep`: a 2 x 2 grid x 2 seeds on 2 workers, checked run by run against an independent re-computation,
and every kind of bad input refused with one line, exit status 2 and nothing written."""
import json
from pathlib import Path
import re

import numpy as np
import pytest
import torch

from engine import cli

from .helpers import ROOT, SCENE, comparable, metrics, summary

TOY = str(ROOT / "tests" / "data" / "toy_scene.py")
TARGETS = {"square": (0.7, 0.3), "circle": (0.2, 0.8)}


def reference_fit(seed: int, target, iterations=20, lr=0.05):
    """The sweep scene's optimisation, written out again: Adam from a start drawn after `tide run --seed`."""
    torch.manual_seed(seed)
    start = torch.randn(2, dtype=torch.float64) * 0.5
    target = torch.tensor(target, dtype=torch.float64)
    p = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in range(iterations):
        loss = ((p - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(start[0]), float((p.detach() - target).norm())


def test_grid_of_ordinary_runs_and_their_summaries(grid_sweep):
    out, res = grid_sweep
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
    assert len(lines) == 8 and all(re.match(r"\[\d/8\] ok ", ln) for ln in lines)  # one line per finished run
    assert "8 ok, 0 failed" in res.stdout.splitlines()[-1]
    rows = summary(out)
    keys = [f"shape={s},scale={c},seed={d}" for s in ("square", "circle") for c in ("0.5", "1") for d in (0, 1)]
    assert list(rows) == keys  # plan order, whatever order the runs finished in
    for key, row in rows.items():
        run = out / "runs" / key
        for name in ("config.json", "metrics.json", "video.mp4", "loss.png", "log.txt"):
            assert (run / name).is_file(), (key, name)  # an ordinary `tide run` folder
        cfg = json.loads((run / "config.json").read_text())
        shape, scale, seed = row["shape"], float(row["scale"]), int(row["seed"])
        assert (cfg["scene"]["shape"], cfg["scene"]["scale"], cfg["seed"]) == (shape, scale, seed)
        m = metrics(out, key)
        for name in ("distance", "final_loss", "start_x", "wall_time_s"):
            assert float(row[name]) == m[name]  # the csv keeps every digit of metrics.json
        assert row["status"] == "ok" and row["reason"] == "" and float(row["run_time_s"]) > 0
        start_x, distance = reference_fit(seed, np.array(TARGETS[shape]) * scale)
        assert m["start_x"] == pytest.approx(start_x, abs=1e-12)
        assert m["distance"] == pytest.approx(distance, rel=1e-9)
        assert (out / "logs" / f"{key}.log").is_file()
    # the grouped table: mean ± population std over the two seeds, recomputed from the metrics files
    md = (out / "summary.md").read_text()
    for shape in ("square", "circle"):
        for scale in ("0.5", "1"):
            cells = [f"{shape}", scale, "2/2"]
            for name in ("distance", "final_loss"):
                v = np.array([metrics(out, f"shape={shape},scale={scale},seed={s}")[name] for s in (0, 1)])
                cells.append(f"{v.mean():.4g} ± {v.std():.2g}")
            assert "| " + " | ".join(cells) + " |" in md, cells
    png = (out / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_resume_of_a_finished_sweep_runs_nothing(grid_sweep, capsys):
    out, _ = grid_sweep
    before = summary(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    code = cli.main(["sweep", SCENE, "--grid", "shape=square,circle", "--grid", "scale=0.5,1", "--seeds", "0,1",
                     "--out", str(out), "--resume", "--workers", "1", "--arch", "cpu", "--precision", "f64",
                     "--no-progress", "--metric", "distance", "--metric", "final_loss"])
    assert code == 0
    assert "8 of 8 runs already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == stamps
    assert {k: comparable(r) for k, r in summary(out).items()} == {k: comparable(r) for k, r in before.items()}


@pytest.mark.parametrize("args, message", [
    (["no_such_scene"], "scene not found: no_such_scene"),
    ([SCENE, "--grid", "colour=red,blue"], "unknown option 'colour' in --grid; valid keys: shape, scale"),
    ([SCENE, "--grid", "scale=0.5,big"], "run scale=big,seed=0: scale='big': expected a float"),
    ([SCENE, "--grid", "scale=0.5,3"], "run scale=3,seed=0: scale must be in (0, 2], got 3.0"),
    ([SCENE, "--grid", "shape=square", "--grid", "mode=ok,explode"], "run shape=square,mode=explode,seed=0: unknown mode"),
    ([SCENE, "--grid", "shape="], "--grid shape= has no values"),
    ([SCENE, "--grid", "shape=square,square"], "lists a value twice"),
    ([SCENE, "--seeds", ","], "--seeds is empty"),
    ([SCENE, "--seeds", "0,one"], "--seeds expects comma-separated integers"),
    ([SCENE, "--set", "colour=red"], "unknown option 'colour' in --set"),
    ([SCENE, "--grid", "lr=0.1,0.2", "--set", "lr=0.3"], "'lr' is given by both --grid and --set"),
    ([SCENE, "--data-dir", "EMPTY"], "has no datasets (expected one subfolder per dataset)"),
    ([SCENE, "--data-dir", "MISSING"], "is not a folder"),
    ([TOY, "--data-dir", "DATA"], "has no 'data' option"),
    ([SCENE, "--run-timeout", "0"], "--run-timeout must be > 0"),
    ([SCENE, "--workers", "0"], "--workers must be >= 1"),
    ([SCENE, "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_status_2_nothing_written(args, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "data" / "a").mkdir(parents=True)
    subs = {"EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing"), "DATA": str(tmp_path / "data")}
    args = [subs.get(a, a) for a in args]
    out = tmp_path / "o"
    code = cli.main(["sweep", *args, "--out", str(out), "--arch", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_out_in_the_way_is_refused(grid_sweep, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "precious.txt").write_text("keep me")
    for extra, message in ([[], "already exists: pass --resume"], [["--overwrite"], "not a tide sweep folder"],
                           [["--resume"], "not a tide sweep folder"]):
        assert cli.main(["sweep", SCENE, "--out", str(taken), *extra, "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in taken.iterdir()) == ["precious.txt"]
    out, _ = grid_sweep  # resuming a sweep with other sweep-wide settings would mix two experiments in one table
    stamp = (out / "summary.csv").stat().st_mtime_ns
    code = cli.main(["sweep", SCENE, "--grid", "shape=square", "--out", str(out), "--resume", "--set", "lr=0.2",
                     "--arch", "cpu", "--precision", "f64", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot --resume" in err and "different sets" in err and err.count("\n") == 1
    assert (out / "summary.csv").stat().st_mtime_ns == stamp


def test_plan_order_keys_and_linked_axes():
    from engine.sweep import make_plan

    plan = make_plan(TOY, ["target=0.7,0.3;0.2,0.9", [{"lr": "0.1", "iterations": "5"}, {"lr": "0.2", "iterations": "9"}]],
                     seeds=[3, 1], sets=["frames=2"])
    assert [r.key for r in plan.runs] == [
        "target=0.7_0.3,lr=0.1,iterations=5,seed=3", "target=0.7_0.3,lr=0.1,iterations=5,seed=1",
        "target=0.7_0.3,lr=0.2,iterations=9,seed=3", "target=0.7_0.3,lr=0.2,iterations=9,seed=1",
        "target=0.2_0.9,lr=0.1,iterations=5,seed=3", "target=0.2_0.9,lr=0.1,iterations=5,seed=1",
        "target=0.2_0.9,lr=0.2,iterations=9,seed=3", "target=0.2_0.9,lr=0.2,iterations=9,seed=1"]
    assert plan.columns == ["target", "lr", "iterations"] and plan.scene == str(Path(TOY).resolve())
    assert plan.runs[2].overrides == ("frames=2", "target=0.7,0.3", "lr=0.2", "iterations=9")
    assert make_plan("codesign", ["env=ground"], seeds=[4]).runs[0].overrides == ("env=ground", "seed=4")


def test_failure_reasons_are_one_line():
    from engine.sweep.worker import reason_from_output

    trace = "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: boom\n"
    assert reason_from_output(trace, 1) == "RuntimeError: boom"
    assert reason_from_output("[Taichi] hi\ntide: error: unknown option 'x'\n", 2) == "unknown option 'x'"
    assert reason_from_output("tide: NaN at substep 3\ntide: outputs in /a/b\n", 1) == "NaN at substep 3"
    assert reason_from_output("", -9) == "killed by SIGKILL"


def test_runs_take_the_scene_default_precision_unless_one_is_given(tmp_path):
    """A sweep without --precision must not force f32 on scenes whose default differs (3D co-design is f64)."""
    from engine.sweep.driver import _job
    from engine.sweep.plan import RunSpec

    spec = RunSpec(key="a=1,seed=0", settings=(("a", "1"),), seed=0, overrides=("a=1",))
    plain = _job("s", spec, tmp_path, False, None, "cpu", None, None, 1)["args"]
    forced = _job("s", spec, tmp_path, False, None, "cpu", "f32", None, 1)["args"]
    assert "--precision" not in plain
    assert forced[forced.index("--precision") + 1] == "f32"
