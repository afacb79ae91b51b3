"""One sweep run, as executed inside a Ray task: ``tide run`` in a fresh subprocess.

A fresh process per run keeps what Taichi fixes per process (``ti.init``'s arch and precision, its fields and
kernels) and any crash inside one run; the task only launches it, waits (with ``--run-timeout``), and returns a
record: status, one-line reason, wall time, the node, and the run's ``metrics.json``.

The subprocess is ``python -m engine.sweep._child PID run ARGS...``: it asks the kernel to SIGKILL it when the Ray worker
that launched it dies (so a sweep killed with ``kill -9`` leaves no orphan runs behind), then runs
``engine.cli.main(["run", ...])`` in-process: the ordinary ``tide run`` code path.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["execute", "reason_from_output"]

ROOT = Path(__file__).resolve().parents[2]


def _child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           # a nested ray.init inside a run (co-design populations) must start its own instance, not join ours
           if not (k.startswith("RAY_") and not k.startswith("RAY_AUTH"))}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def reason_from_output(text: str, returncode: int | None) -> str:
    """The one line that says why a run failed, from its combined stdout/stderr."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("tide: outputs in ")]
    for ln in reversed(lines):
        if ln.startswith("tide: "):
            return ln.removeprefix("tide: error: ").removeprefix("tide: ")
    if lines:  # a traceback ends with "ExceptionType: message"
        return lines[-1]
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _node() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - outside Ray the host name identifies the node
        pass
    return os.uname().nodename


def execute(job: dict) -> dict:
    """Run ``tide run`` for one sweep run and return its record.

    ``job``: ``key``, ``args`` (the ``tide run`` arguments after ``run``), ``run_dir``, ``log`` (where the run's
    stdout and stderr go), ``timeout`` (seconds or None), ``env`` (extra environment variables).
    """
    from ..io import atomic_path

    run_dir, log = Path(job["run_dir"]), Path(job["log"])
    cmd = [sys.executable, "-m", "engine.sweep._child", str(os.getpid()), "run", *job["args"]]
    t0 = time.perf_counter()
    timed_out = False
    with atomic_path(log) as tmp, open(tmp, "wb") as fh:
        # its own session, so a timeout kills the run's helpers (ffmpeg) with it
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(job.get("env", {})), stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout=job.get("timeout"))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # the task itself was cancelled
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - t0
    metrics = None
    if (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = None
    if timed_out:
        status, reason = "failed", f"timed out after {job['timeout']:g} s (--run-timeout)"
    elif rc == 0 and metrics is not None:
        status, reason = "ok", ""
    elif rc == 0:
        status, reason = "failed", "tide run wrote no metrics.json"
    elif metrics and metrics.get("error"):
        status, reason = "failed", " ".join(str(metrics["error"]).split())
    else:
        status, reason = "failed", reason_from_output(log.read_text(errors="replace"), rc)
    return {"key": job["key"], "status": status, "reason": reason, "returncode": rc, "run_time_s": wall,
            "node": _node(), "metrics": metrics if status == "ok" else (metrics or {})}
