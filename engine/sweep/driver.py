"""``tide sweep``: run a scene over a grid of settings × datasets × seeds on Ray, one ``tide run`` per run.

Output folder ``DIR``::

    sweep.json              what was swept (and the settings --resume must match)
    runs/<key>/             an ordinary `tide run` output folder per run (config.json, metrics.json, video, ...)
    logs/<key>.log          that run's stdout and stderr
    results/<key>.json      its record: status, one-line reason, wall time, node, metrics
    summary.csv, summary.md the tables (rewritten after every finished run); summary.png with --plot

Ray is embedded (``--workers`` CPUs, no dashboard) unless ``--ray-address`` joins a cluster. Runs are handed to
Ray in plan order, at most as many at a time as fit the CPUs (and GPUs) the sweep may use, and every run's
outcome depends only on its own settings and seed, so the worker count does not change any metric.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, OutputError
from . import summary as _summary
from .plan import Plan, make_plan, parse_seeds
from .worker import ROOT, execute

__all__ = ["SweepResult", "run_sweep", "add_arguments", "cmd_sweep"]

# Ray's object store only carries small run records here; its minimum is 75 MiB. Keep the shared box's memory.
OBJECT_STORE_BYTES = 100 * 1024 * 1024


@dataclass
class SweepResult:
    """What a finished sweep returns (the same content as summary.csv)."""

    out: Path
    plan: Plan
    records: dict = field(default_factory=dict)
    table: list = field(default_factory=list)
    metrics: list = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [r["run"] for r in self.table if r["status"] != "ok"]


# -- the output folder --------------------------------------------------------------------------------------------
def _signature(plan: Plan, arch: str, precision: str, frames) -> dict:
    """Settings that every run of one sweep folder must share (the grid and seeds may grow on --resume)."""
    return {"scene": plan.scene, "sets": list(plan.sets), "arch": arch, "precision": precision, "frames": frames}


def check_out(out: Path, resume: bool, overwrite: bool, signature: dict) -> None:
    """Refuse an output folder in the way, before anything is written or started."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    marker = out / "sweep.json"
    if out.is_dir() and any(out.iterdir()):
        if resume:
            if not marker.is_file():
                raise OutputError(f"cannot --resume {out}: it is not a tide sweep folder (no sweep.json)")
            try:
                saved = json.loads(marker.read_text()).get("signature")
            except (OSError, ValueError):
                raise OutputError(f"cannot --resume {out}: its sweep.json is unreadable") from None
            if saved != signature:
                diff = [k for k in signature if saved is None or saved.get(k) != signature[k]]
                raise ConfigError(f"cannot --resume {out} with different {', '.join(diff)} than it was started "
                                  f"with ({', '.join(f'{k}={saved.get(k)!r}' for k in diff) if saved else 'none'}); "
                                  "use a new --out")
        elif not overwrite:
            raise OutputError(f"output folder {out} already exists: pass --resume to continue the sweep or "
                              "--overwrite to replace it")
        elif not marker.is_file():
            raise OutputError(f"refusing to --overwrite {out}: it is not a tide sweep folder (no sweep.json)")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to --out {out}: {probe} is not a writable folder")


def _load_records(out: Path, plan: Plan) -> dict:
    records = {}
    for spec in plan.runs:
        path = out / "results" / f"{spec.key}.json"
        if path.is_file():
            try:
                records[spec.key] = json.loads(path.read_text())
            except (OSError, ValueError):
                pass  # a record is written atomically; an unreadable one is treated as missing
    return records


# -- Ray ----------------------------------------------------------------------------------------------------------
def _start_ray(workers: int, address: str | None) -> bool:
    """Connect to Ray; returns True when this call started (and so must stop) it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, **quiet)
    return True


def _capacity(cpus: float, gpus: float, workers: int | None) -> int:
    """How many runs may be in flight: what the cluster's CPUs (and GPUs) hold, capped by --workers CPUs."""
    import ray

    res = ray.cluster_resources()
    cap = int(res.get("CPU", 0) // cpus) if cpus > 0 else 1 << 30
    if gpus > 0:
        cap = min(cap, int(res.get("GPU", 0) // gpus))
    if workers is not None and cpus > 0:
        cap = min(cap, max(1, int(workers // cpus)))
    return cap


# -- the sweep ----------------------------------------------------------------------------------------------------
def run_sweep(plan: Plan, out: str | Path, *, workers: int | None = None, address: str | None = None,
              resume: bool = False, overwrite: bool = False, run_timeout: float | None = None, arch: str = "auto",
              precision: str | None = None, frames: int | None = None, cpus_per_run: float = 1.0,
              gpus_per_run: float | None = None, metrics: list[str] | None = None, plot: bool = False,
              progress: bool = True, echo=print) -> SweepResult:
    """Run every run of ``plan`` into ``out`` and write the summaries. See the module docstring.

    Args:
        workers: CPUs for an embedded Ray (default: all cores); with a cluster, a cap on the CPUs used.
        address: a Ray cluster (``auto``, ``host:port`` or ``ray://host:10001``); None for an embedded Ray.
        run_timeout: seconds after which a run is killed and recorded as failed.
        gpus_per_run: GPUs each run asks Ray for (default 1 with ``arch="cuda"``, else 0).
        precision: ``"f32"`` or ``"f64"`` for every run; None lets each run take its scene's default, as
            ``tide run`` does.
        metrics: metrics of the grouped table (default: every numeric metric of the successful runs).
    """
    out = Path(out)
    if run_timeout is not None and run_timeout <= 0:
        raise ConfigError(f"--run-timeout must be > 0 seconds, got {run_timeout:g}")
    if cpus_per_run <= 0:
        raise ConfigError(f"--cpus-per-run must be > 0, got {cpus_per_run:g}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if frames is not None and frames < 0:
        raise ConfigError(f"--frames must be >= 0, got {frames}")
    gpus = (1.0 if arch == "cuda" else 0.0) if gpus_per_run is None else float(gpus_per_run)
    signature = _signature(plan, arch, precision, frames)
    check_out(out, resume, overwrite, signature)

    if resume and out.is_dir():  # a finished sweep needs no Ray: only its tables are written again
        records = _load_records(out, plan)
        if all(records.get(r.key, {}).get("status") == "ok" for r in plan.runs):
            echo(f"sweep: {len(plan.runs)} of {len(plan.runs)} runs already finished")
            result = SweepResult(out=out, plan=plan, records=records)
            _write_tables(result, metrics, plot=plot)
            return result
    import ray

    started = _start_ray(workers or os.cpu_count() or 1, address)
    try:
        if _capacity(cpus_per_run, gpus, workers) < 1:
            res = ray.cluster_resources()
            raise ConfigError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs; a "
                              f"run needs {cpus_per_run:g} CPUs and {gpus:g} GPUs")
        if overwrite and not resume and out.is_dir():
            shutil.rmtree(out)
        for sub in ("runs", "logs", "results"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        from ..io import write_json

        write_json(out / "sweep.json", {"signature": signature, "columns": plan.columns,
                                        "runs": [r.key for r in plan.runs], "scene_path": str(plan.scene_path)})
        return _execute(plan, out, workers=workers, resume=resume, run_timeout=run_timeout, arch=arch,
                        precision=precision, frames=frames, cpus=cpus_per_run, gpus=gpus, metrics=metrics,
                        plot=plot, progress=progress, echo=echo)
    finally:
        if started:
            ray.shutdown()


def _job(scene: str, spec, out: Path, resume_run: bool, run_timeout, arch, precision, frames, cpus) -> dict:
    run_dir = (out / "runs" / spec.key).resolve()
    args = [scene, "--out", str(run_dir), "--seed", str(spec.seed), "--arch", arch, "--no-progress"]
    if precision is not None:  # None: each run takes the scene's default (e.g. f64 for 3D co-design)
        args += ["--precision", precision]
    if frames is not None:
        args += ["--frames", str(frames)]
    for item in spec.overrides:
        args += ["--set", item]
    if resume_run:
        args.append("--resume")
    threads = str(max(1, int(cpus)))
    # the same thread counts whatever the worker count, so results do not depend on it
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TI_CPU_MAX_NUM_THREADS": threads,
           "PYTHONHASHSEED": "0"}
    env.update({k: v for k, v in os.environ.items() if k in ("TIDE_FAST_COMPILE", "TIDE_TI_LOG")})
    return {"key": spec.key, "args": args, "run_dir": str(run_dir), "log": str((out / "logs" / f"{spec.key}.log")
                                                                                 .resolve()),
            "timeout": run_timeout, "env": env, "fresh": not resume_run}


def _run_remote(job: dict) -> dict:
    """The Ray task: clear a failed run's folder when it starts over, then run it (``worker.execute``)."""
    run_dir = Path(job["run_dir"])
    if job.get("fresh") and run_dir.exists():
        shutil.rmtree(run_dir)  # only ever DIR/runs/<key> of this sweep: a failed run that starts over
    return execute(job)


def _execute(plan, out, *, workers, resume, run_timeout, arch, precision, frames, cpus, gpus, metrics, plot,
             progress, echo) -> SweepResult:
    import ray

    from ..io import write_json

    records = _load_records(out, plan) if resume else {}
    todo = collections.deque()
    for spec in plan.runs:
        rec = records.get(spec.key)
        if rec is not None and rec.get("status") == "ok":
            continue  # finished: skipped
        records.pop(spec.key, None)
        interrupted = rec is None and (out / "runs" / spec.key).is_dir()
        todo.append((spec, interrupted))
    done = len(plan.runs) - len(todo)
    if resume and done:
        echo(f"sweep: {done} of {len(plan.runs)} runs already finished; running the other {len(todo)}")
    remote = ray.remote(_run_remote).options(
        num_cpus=cpus, num_gpus=gpus, max_retries=0, scheduling_strategy="SPREAD",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    result = SweepResult(out=out, plan=plan, records=records)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan.runs), initial=done, desc="sweep", unit="run", dynamic_ncols=True)
        echo = bar.write
    inflight: dict = {}
    n_failed = 0
    last_cap, cap = 0.0, 1
    try:
        while todo or inflight:
            if time.monotonic() - last_cap > 5.0:  # follow a cluster that grows or shrinks
                cap, last_cap = max(1, _capacity(cpus, gpus, workers)), time.monotonic()
            while todo and len(inflight) < cap:
                spec, interrupted = todo.popleft()
                job = _job(plan.scene, spec, out, interrupted, run_timeout, arch, precision, frames, cpus)
                inflight[remote.remote(job)] = spec
            if bar is not None and bar.postfix != (post := f"running={len(inflight)}, failed={n_failed}"):
                bar.set_postfix_str(post)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = inflight.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker or node that died: the run failed, go on
                    first = str(exc).strip().splitlines() or [type(exc).__name__]
                    rec = {"key": spec.key, "status": "failed", "reason": f"ray: {type(exc).__name__}: {first[-1]}",
                           "returncode": None, "run_time_s": None, "node": "", "metrics": {}}
                rec["overrides"] = list(spec.overrides)
                records[spec.key] = rec
                write_json(out / "results" / f"{spec.key}.json", rec)
                done += 1
                n_failed += rec["status"] != "ok"
                echo(_line(done, len(plan.runs), rec, metrics))
                if bar is not None:
                    bar.update(1)
                _write_tables(result, metrics, plot=False)
    except KeyboardInterrupt:
        for ref in inflight:
            ray.cancel(ref, force=True)
        raise
    finally:
        if bar is not None:
            bar.set_postfix_str(f"running=0, failed={n_failed}", refresh=False)
            bar.close()
    _write_tables(result, metrics, plot=plot)
    return result


def _line(done: int, total: int, rec: dict, metrics) -> str:
    t = rec.get("run_time_s")
    where = f"{t:.1f} s" if t is not None else "-"
    if rec.get("node"):
        where += f" on {rec['node']}"
    if rec["status"] == "ok":
        flat = _summary.flatten(rec.get("metrics") or {})
        names = metrics or [k for k, v in flat.items() if _summary._is_number(v)
                            and k not in ("frames", "wall_time_s") and not k.startswith("history_last")][:3]
        detail = "  ".join(f"{k}={flat[k]:.4g}" if _summary._is_number(flat.get(k)) else f"{k}={flat.get(k)}"
                           for k in names if k in flat)
        return f"[{done}/{total}] ok      {rec['key']}  ({where})  {detail}"
    return f"[{done}/{total}] FAILED  {rec['key']}  ({where})  {rec.get('reason', '')}"


def _write_tables(result: SweepResult, metrics, plot: bool) -> None:
    plan, out = result.plan, result.out
    table, metric_cols = _summary.rows(plan, result.records)
    chosen = list(metrics) if metrics else _summary.numeric_metrics(table, metric_cols)
    groups = _summary.grouped(plan, table, chosen)
    n_ok = sum(r["status"] == "ok" for r in table)
    n_failed = sum(r["status"] == "failed" for r in table)
    header = (f"`tide sweep {Path(plan.scene).stem}`: {len(table)} runs, {n_ok} ok, {n_failed} failed"
              + (f", {len(table) - n_ok - n_failed} pending" if len(table) - n_ok - n_failed else ""))
    _summary.write_csv(out / "summary.csv", table, plan, metric_cols)
    _summary.write_markdown(out / "summary.md", plan, table, groups, chosen, header=header)
    if plot:
        _summary.write_plot(out / "summary.png", plan, groups, chosen, title=header.replace("`", ""))
    result.table, result.metrics = table, chosen


# -- the command --------------------------------------------------------------------------------------------------
def add_arguments(sub) -> None:
    """Add the ``sweep`` subcommand to ``tide``'s subparsers."""
    p = sub.add_parser("sweep", help="run a scene over grids of settings, seeds and datasets (on Ray)",
                       description="Run SCENE once per combination of --grid values, --data-dir datasets and "
                                   "--seeds: each an ordinary `tide run` into OUT/runs/<key=value,...,seed=S>/; "
                                   "then OUT/summary.csv and OUT/summary.md.")
    p.add_argument("scene", help="scene script (path, or a name from `tide list`)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="sweep a Config field over values (repeatable: the sweep runs every combination); "
                        "list/tuple fields separate values with ';'")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Config field in every run (repeatable)")
    p.add_argument("--data-dir", default=None, help="one run per subfolder, passed as --set data=<subfolder>")
    p.add_argument("--out", required=True, help="sweep output folder")
    p.add_argument("--workers", type=int, default=None,
                   help="CPUs of the embedded Ray (default: all cores); with --ray-address, a cap on CPUs used")
    p.add_argument("--ray-address", default=None, help="join a Ray cluster: auto, host:port or ray://host:10001")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run asks Ray for (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per run (default 1 with --arch cuda)")
    p.add_argument("--run-timeout", type=float, default=None, help="seconds before a run is killed as failed")
    p.add_argument("--resume", action="store_true",
                   help="skip finished runs, resume interrupted ones from their checkpoints, rerun failed ones")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sweep folder")
    p.add_argument("--metric", action="append", default=[], help="metric of the grouped table (repeatable)")
    p.add_argument("--plot", action="store_true", help="also write summary.png, a bar chart of the grouped table")
    p.add_argument("--frames", type=int, default=None, help="frames per run (default: the scene's)")
    p.add_argument("--arch", default=os.environ.get("TIDE_ARCH", "auto"), choices=["auto", "cpu", "cuda", "vulkan"])
    p.add_argument("--precision", default=os.environ.get("TIDE_PRECISION"), choices=["f32", "f64"],
                   help="float precision of every run (default: each scene's own default, as in tide run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per run still)")


def cmd_sweep(args) -> int:
    """``tide sweep``: exit 0 when every run succeeded, 1 when any failed (bad input raises, exit 2)."""
    plan = make_plan(args.scene, args.grid, parse_seeds(args.seeds), args.overrides, args.data_dir)
    res = run_sweep(plan, args.out, workers=args.workers, address=args.ray_address, resume=args.resume,
                    overwrite=args.overwrite, run_timeout=args.run_timeout, arch=args.arch, precision=args.precision,
                    frames=args.frames, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                    metrics=[m for item in args.metric for m in item.split(",") if m] or None, plot=args.plot,
                    progress=not args.no_progress)
    failed = res.failed
    print(f"tide: sweep of {len(res.table)} runs in {Path(args.out).resolve()}: "
          f"{len(res.table) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
