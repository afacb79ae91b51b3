"""`tide sweep` under stress: 1 vs 2 workers, failing runs, kill -9 and --resume, datasets, a two-node Ray cluster.
Each starts its own Ray and several `tide run` processes, so all are marked slow."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .helpers import comparable, env, metrics, popen, summary, sweep

SUBSET = ["--grid", "shape=square", "--grid", "scale=0.5,1", "--seeds", "0,1"]  # 4 runs of the reference grid
pytestmark = pytest.mark.slow


def _processes_with(text: str) -> list[int]:
    """Ids of live processes whose command line contains ``text`` (to find a sweep's leftovers)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _wait_gone(text: str, timeout: float = 60.0) -> list[int]:
    end = time.monotonic() + timeout
    while (left := _processes_with(text)) and time.monotonic() < end:
        time.sleep(0.5)
    return left


def _same_rows(out_a, out_b, keys):
    a, b = summary(out_a), summary(out_b)
    return {k: comparable(a[k]) for k in keys} == {k: comparable(b[k]) for k in keys}


def test_one_worker_gives_the_same_metrics_as_two(grid_sweep, tmp_path):
    ref, _ = grid_sweep
    out = tmp_path / "one"
    res = sweep(*SUBSET, "--out", str(out), "--workers", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    keys = list(summary(out))
    assert len(keys) == 4 and _same_rows(out, ref, keys)  # every metric digit for digit (so well within 1e-9)


def test_failing_runs_are_isolated_with_one_line_reasons(tmp_path):
    out = tmp_path / "fail"
    res = sweep("--grid", "mode=ok,raise,blowup,hang", "--out", str(out), "--workers", "2", "--run-timeout", "90")
    assert res.returncode == 1, res.stdout + res.stderr
    rows = summary(out)
    assert [r["status"] for r in rows.values()] == ["ok", "failed", "failed", "failed"]
    assert rows["mode=raise,seed=0"]["reason"] == "RuntimeError: deliberate failure at iteration 3"
    assert rows["mode=blowup,seed=0"]["reason"] == "NaN in particle velocities at substep 31: dt above the CFL limit"
    assert rows["mode=hang,seed=0"]["reason"] == "timed out after 90 s (--run-timeout)"
    assert float(rows["mode=ok,seed=0"]["distance"]) == metrics(out, "mode=ok,seed=0")["distance"]
    md = (out / "summary.md").read_text()
    assert "1 ok, 3 failed" in md and "timed out after 90 s" in md
    assert "| ok | 1/1 | 0.1209 ± 0 |" in md and "| hang | 0/1 | — |" in md  # failed groups: no successful run
    assert not _wait_gone(str(out), timeout=30)  # the hung run was killed, helpers and all


def test_datasets_and_resume_reruns_only_the_failed_run(tmp_path):
    data = tmp_path / "data"
    for name, text in (("a", "0.25 0.75"), ("b", "oops")):
        (data / name).mkdir(parents=True)
        (data / name / "target.txt").write_text(text)
    (data / ".hidden").mkdir()
    out = tmp_path / "ds"
    res = sweep("--data-dir", str(data), "--out", str(out), "--workers", "2")
    assert res.returncode == 1, res.stdout + res.stderr
    rows = summary(out)
    assert list(rows) == ["data=a,seed=0", "data=b,seed=0"] and [r["data"] for r in rows.values()] == ["a", "b"]
    reason = rows["data=b,seed=0"]["reason"]
    assert reason == "the scene rejected its settings: could not convert string to float: 'oops'"
    cfg = json.loads((out / "runs" / "data=a,seed=0" / "config.json").read_text())
    assert cfg["scene"]["data"] == str((data / "a").resolve())  # passed as --set data=<folder>
    done = (out / "results" / "data=a,seed=0.json").read_text()
    (data / "b" / "target.txt").write_text("0.5 0.5")  # fix the dataset, then resume
    res = sweep("--data-dir", str(data), "--out", str(out), "--workers", "2", "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 of 2 runs already finished" in res.stdout
    assert (out / "results" / "data=a,seed=0.json").read_text() == done  # the finished run was skipped
    assert summary(out)["data=b,seed=0"]["status"] == "ok"


def test_kill_9_then_resume_gives_the_same_summary(grid_sweep, tmp_path):
    ref, _ = grid_sweep
    out = tmp_path / "killed"
    args = [*SUBSET, "--out", str(out), "--workers", "2", "--set", "sleep_s=0.4"]
    proc = popen(*args)
    try:
        end = time.monotonic() + 400
        while time.monotonic() < end and proc.poll() is None:  # wait until a run is half-way (has a checkpoint)
            if any((r / "checkpoints" / "ckpt_0000010.pt").is_file() and not (r / "metrics.json").exists()
                   for r in (out / "runs").glob("*")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert not _wait_gone(str(out), timeout=60)  # its runs died with it
    res = sweep(*args, "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    keys = list(summary(out))
    assert _same_rows(out, ref, keys)
    assert any("resumed_from_iteration" in metrics(out, k) for k in keys)  # resumed from a checkpoint, not rerun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and a second node, each `ray start --block` in its own process and temp dir, on loopback only."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    cluster_env = env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    common = ["--block", "--num-cpus", "1", "--object-store-memory", str(80 * 1024 * 1024),
              "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    # short temp dirs: Ray's Unix socket paths inside them must stay under the 107-character limit
    dirs = [tempfile.mkdtemp(prefix="tide-rh-", dir="/tmp"), tempfile.mkdtemp(prefix="tide-rw-", dir="/tmp")]
    procs = []
    log = open(tmp_path / "ray_start.log", "w")  # what went wrong, should a node not come up
    try:
        procs.append(subprocess.Popen([ray_bin, "start", "--head", "--port", str(port), "--include-dashboard",
                                       "false", "--temp-dir", dirs[0], *common], env=cluster_env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_nodes(ray_bin, port, 1, cluster_env, procs)
        procs.append(subprocess.Popen([ray_bin, "start", "--address", f"127.0.0.1:{port}", "--temp-dir", dirs[1],
                                       *common], env=cluster_env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_nodes(ray_bin, port, 2, cluster_env, procs)
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for d in dirs:  # anything of ours that outlived its node
            for pid in _wait_gone(d, timeout=20):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(d, ignore_errors=True)
        log.close()


def _wait_for_nodes(ray_bin, port, n, cluster_env, procs, timeout=240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a `ray start` of the test cluster exited; see ray_start.log in the test's tmp_path")
        res = subprocess.run([ray_bin, "status", "--address", f"127.0.0.1:{port}"], env=cluster_env,
                             capture_output=True, text=True)
        active = res.stdout.split("Active:")[-1].split("Pending:")[0] if "Active:" in res.stdout else ""
        if active.count("node_") >= n:
            return
        time.sleep(2)
    raise TimeoutError(f"the test cluster did not reach {n} nodes")


def test_sweep_on_a_two_node_cluster(two_node_cluster, grid_sweep, tmp_path):
    ref, _ = grid_sweep
    out = tmp_path / "cluster"
    res = sweep(*SUBSET, "--out", str(out), "--ray-address", "auto", RAY_ADDRESS=two_node_cluster,
                RAY_AUTH_MODE="disabled")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = summary(out)
    assert len({r["node"] for r in rows.values()}) == 2  # runs landed on both nodes
    assert _same_rows(out, ref, list(rows))
