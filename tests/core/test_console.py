"""What the console tells a user: the version, no Taichi banner, where the time went, interruptions that keep
their work and say how to continue, stale temp files cleaned, --resume only on a run folder."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOY = str(ROOT / "tests" / "data" / "toy_scene.py")
FLAGS = ["--arch", "cpu", "--precision", "f64", "--no-progress"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=300, **kw)


def test_version_and_help_without_banner():
    res = _cli(["--version"])
    assert res.returncode == 0 and res.stdout.startswith("tide 0.") and "taichi 1.7" in res.stdout
    res = _cli(["run", "jelly_drop", "--help"])
    assert res.returncode == 0 and "[Taichi]" not in res.stdout + res.stderr
    assert "E (float > 0, default 20000.0)" in res.stdout


def test_done_line_counts_every_phase(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", TOY, "--out", str(out), "--set", "iterations=3", *FLAGS]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["time_s"]) == {"build", "optimise", "simulate", "export"}
    assert sum(m["time_s"].values()) <= m["wall_time_s"] + 1e-6  # the total includes every phase
    assert f"done in {m['wall_time_s']:.1f} s (build" in printed and "export" in printed


def test_resume_needs_a_run_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "missing"):
        assert main(["run", TOY, "--out", str(folder), "--resume", *FLAGS]) == 2
        err = capsys.readouterr().err.strip()
        assert "is not a tide run folder (no config.json)" in err and len(err.splitlines()) == 1
    assert not any(empty.iterdir()) and not (tmp_path / "missing").exists()


def test_stale_temp_files_are_removed_on_resume(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", TOY, "--out", str(out), "--set", "iterations=2", *FLAGS]) == 0
    stale = [out / ".tmp-video-abc123.mp4", out / "checkpoints" / ".tmp-ckpt_0000005-x.pt"]
    for p in stale:
        p.write_bytes(b"")  # what a kill -9 during a write leaves
    assert main(["run", TOY, "--out", str(out), "--resume", "--set", "iterations=3", *FLAGS]) == 0
    assert not any(p.exists() for p in stale)
    assert "removed stale temp file .tmp-video-abc123.mp4" in (out / "log.txt").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, sig):
    out = tmp_path / "o"
    cmd = ["run", TOY, "--out", str(out), "--set", "iterations=100000", "--set", "sleep_s=0.01", *FLAGS]
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoints").glob("ckpt_*.pt")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert "stopping after this iteration" in err and "continue with:" in lines[-2], err
    saved = int(lines[-2].split("checkpoint at iteration ")[1].split()[0])
    assert (out / "checkpoints" / f"ckpt_{saved:07d}.pt").is_file()
    resume = shlex.split(lines[-1].strip())
    assert resume[0] == "tide" and resume[-1] == "--resume"
    res = _cli([*resume[1:], "--set", f"iterations={saved + 2}", "--set", "sleep_s=0"])
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "metrics.json").read_text())["resumed_from_iteration"] == saved
