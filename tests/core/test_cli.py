"""The `tide` runner: outputs, resume, and one-line errors with exit status 2 for every kind of bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine import cli

ROOT = Path(__file__).resolve().parents[2]
TOY = str(ROOT / "tests" / "data" / "toy_scene.py")
FLAGS = ["--arch", "cpu", "--precision", "f64", "--no-progress"]


def run(args, capsys=None):
    code = cli.main(args)
    if capsys is None:
        return code, ""
    return code, capsys.readouterr().err


def test_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "toy"
    code, _ = run(["run", TOY, "--out", str(out), "--set", "iterations=25", "--set", "target=0.6,0.2", *FLAGS], capsys)
    assert code == 0
    for name in ("config.json", "metrics.json", "video.mp4", "loss.png", "log.txt", "point.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["scene"]["iterations"] == 25 and config["scene"]["target"] == [0.6, 0.2]
    assert config["backend"]["precision"] == "f64"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_loss"] < 0.05 and metrics["frames"] == 4
    frames = iio.imread(out / "video.mp4")
    assert frames.shape[0] == 3 + 4  # optimisation frames (every 10th iteration) then the rollout
    assert not list(out.glob(".tmp-*"))


def test_resume_continues_to_the_same_result(tmp_path, capsys):
    ref, part = tmp_path / "ref", tmp_path / "part"
    assert run(["run", TOY, "--out", str(ref), *FLAGS], capsys)[0] == 0
    code, _ = run(["run", TOY, "--out", str(part), "--set", "fail_at=17", *FLAGS], capsys)
    assert code == 130 and sorted(p.name for p in (part / "checkpoints").iterdir()) == ["ckpt_0000010.pt"]
    assert not (part / "metrics.json").exists()
    code, err = run(["run", TOY, "--out", str(part), "--resume", "--set", "fail_at=-1", *FLAGS], capsys)
    assert code == 0, err
    a = json.loads((ref / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert b["resumed_from_iteration"] == 10
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-12)
    assert "resumed from ckpt_0000010.pt" in (part / "log.txt").read_text()


@pytest.mark.parametrize("args, message", [
    (["run", "no_such_scene.py"], "scene not found"),
    (["run", TOY, "--set", "colour=red"], "unknown option 'colour'; valid keys: iterations, lr"),
    (["run", TOY, "--set", "lr=fast"], "lr='fast': expected a float"),
    (["run", TOY, "--set", "iterations"], "expects key=value"),
    (["run", TOY, "--frames", "-3"], "--frames must be >= 0"),
    (["run", TOY, "--bogus"], "unrecognized arguments: --bogus"),
    (["view", TOY, "--res", "big"], "--res expects WxH"),
])
def test_bad_input_is_one_line_and_status_2(args, message, capsys, tmp_path):
    code, err = run([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unparsable_and_contractless_scenes(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    code, err = run(["run", str(bad)], capsys)
    assert code == 2 and "cannot parse scene" in err and "line 1" in err
    empty = tmp_path / "empty.py"
    empty.write_text('"""nothing here"""\n')
    code, err = run(["run", str(empty)], capsys)
    assert code == 2 and "has no Config dataclass" in err


def test_existing_and_unwritable_out(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = run(["run", TOY, "--out", str(out), *FLAGS], capsys)
    assert code == 2 and "already exists" in err
    code, err = run(["run", TOY, "--out", str(out), "--overwrite", *FLAGS], capsys)
    assert code == 2 and "not a tide output folder" in err
    assert (out / "precious.txt").read_text() == "keep me"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run(["run", TOY, "--out", str(blocker / "sub"), *FLAGS], capsys)
    assert code == 2 and "cannot write to --out" in err


def test_overwrite_replaces_a_previous_run(tmp_path, capsys):
    out = tmp_path / "o"
    assert run(["run", TOY, "--out", str(out), "--set", "iterations=10", *FLAGS], capsys)[0] == 0
    assert run(["run", TOY, "--out", str(out), "--overwrite", "--set", "iterations=20", *FLAGS], capsys)[0] == 0
    assert json.loads((out / "config.json").read_text())["scene"]["iterations"] == 20
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_0000010.pt", "ckpt_0000020.pt"]


@pytest.mark.parametrize("content, message", [
    (None, "mesh not found"),
    (b"", "mesh file is empty"),
    (b"this is not a mesh at all\n\x00\x01", "mesh"),
])
def test_bad_mesh_files(tmp_path, capsys, content, message):
    path = tmp_path / "thing.obj"
    if content is not None:
        path.write_bytes(content)
    code, err = run(["run", "mesh_turntable", "--set", f"mesh={path}", "--out", str(tmp_path / "o"), *FLAGS], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_list_and_scene_help(capsys):
    assert cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    line = next(ln for ln in listing.splitlines() if ln.startswith("mesh_turntable "))
    assert line.split(None, 1)[1].startswith("Spin a mesh file on a turntable")
    assert cli.main(["run", TOY, "--help"]) == 0
    text = capsys.readouterr().out
    assert "lr (float, default 0.1)" in text and "Adam learning rate." in text


def _subprocess(args, **kw):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          **kw)


def test_console_error_has_no_traceback(tmp_path):
    res = _subprocess(["run", TOY, "--set", "nope=1", "--out", str(tmp_path / "o")])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "tide: error: unknown option 'nope'; valid keys: iterations, lr, target, frames, fail_at, sleep_s"]


@pytest.mark.slow
def test_sigkill_leaves_no_half_written_file(tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", TOY, "--out", str(out), "--arch", "cpu",
                             "--set", "iterations=400", "--set", "sleep_s=0.01", "--no-progress"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "checkpoints").glob("ckpt_*.pt"))) < 2:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "config.json").read_text())["scene"]["iterations"] == 400
    assert not (out / "video.mp4").exists() and not (out / "metrics.json").exists()
    for ckpt in (out / "checkpoints").glob("ckpt_*.pt"):  # every published checkpoint loads whole
        blob = torch.load(ckpt, weights_only=False)
        assert blob["iteration"] % 10 == 0
    res = _subprocess(["run", TOY, "--out", str(out), "--resume", "--set", "sleep_s=0", "--arch", "cpu",
                       "--no-progress"])
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "metrics.json").read_text())["final_loss"] < 1e-3


def test_view_offscreen_writes_frames_of_the_scene(tmp_path, capsys):
    out = tmp_path / "view"
    code, err = run(["view", "mesh_turntable", "--offscreen", "--frames", "3", "--res", "160x120", "--out", str(out),
                     "--set", "samples=100", *FLAGS[:4]], capsys)
    assert code == 0, err
    frames = sorted((out / "frames").glob("frame_*.png"))
    assert len(frames) == 3 and iio.imread(out / "video.mp4").shape[0] == 3
    imgs = [iio.imread(f) for f in frames]
    assert imgs[0].shape == (120, 160, 3)
    # the mesh is drawn in orange-brown (0.85, 0.6, 0.35) under lighting: red > green > blue on its pixels
    first = imgs[0].astype(int)
    mesh_px = (first[..., 0] - first[..., 2] > 40) & (first[..., 0] > 60)
    assert 0.02 < mesh_px.mean() < 0.6
    # it is centred: the mesh occupies the middle of the image, and it turns between frames
    ys, xs = np.nonzero(mesh_px)
    assert abs(xs.mean() - 80) < 25 and abs(ys.mean() - 60) < 30
    assert np.abs(imgs[0].astype(int) - imgs[2].astype(int)).mean() > 0.5


def test_simulation_error_publishes_what_it_had_and_exits_1(tmp_path, capsys):
    out = tmp_path / "boom"
    scene = str(ROOT / "tests" / "data" / "blowup_scene.py")
    code, err = run(["run", scene, "--out", str(out), *FLAGS], capsys)
    assert code == 1
    assert err.strip().splitlines() == ["tide: NaN in particle velocities at substep 23: dt above the CFL limit"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "substep 23" in metrics["error"] and metrics["frames"] == 5
    assert iio.imread(out / "video.mp4").shape[0] == 2  # the frames rendered before the blow-up
    assert not list(out.glob(".tmp-*"))
