"""The ``tide`` command: ``tide run | view | list | sweep``.

Input problems (a missing scene, an unknown option, an output folder in the way, a bad mesh) print one line to
stderr and exit with status 2. A simulation that blows up exits with status 1 after publishing what it had.
"""
from __future__ import annotations

import argparse
import ast
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .errors import ConfigError, OutputError, SceneError, SimulationError, TideError

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
SCENES_DIR = ROOT / "scenes"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with status 2 (no usage dump)."""

    def error(self, message):
        raise ConfigError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_scene(module, cfg):
    """``Scene(cfg)`` and ``build()``. A ``ValueError`` from the engine (a body with no particles, E <= 0, ...)
    is a problem with the input, so it becomes a one-line ``ConfigError``."""
    try:
        scene = module.Scene(cfg)
        scene.build()
    except TideError:
        raise
    except ValueError as exc:
        raise ConfigError(f"the scene rejected its settings: {exc}") from None
    return scene


def _common(p: argparse.ArgumentParser, view: bool = False) -> None:
    p.add_argument("scene", help="scene script (path, or a name from `tide list`)" + (
        "; or a finished run's folder, to replay it" if view else ""))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Config field (repeatable); see `tide run SCENE --help`")
    p.add_argument("--frames", type=int, default=None, metavar="N",
                   help="frames of the video after any optimisation; sets the scene's `frames` option where it has "
                        "one (a turntable makes one turn in N frames). Scenes that optimise put their training "
                        "frames first; co-design shows the initial and the optimised robot for N frames each" + (
                            "; a replayed run: frames to play (default all)" if view else ""))
    p.add_argument("--seed", type=int, default=0, help="seed for python, numpy and torch")
    p.add_argument("--arch", default=os.environ.get("TIDE_ARCH", "auto"), choices=["auto", "cpu", "cuda", "vulkan"])
    p.add_argument("--precision", default=os.environ.get("TIDE_PRECISION"), choices=["f32", "f64"],
                   help="float precision (default f32, or the scene's default_precision(config))")
    p.add_argument("--out", default=None, help="output folder (default: runs/<scene>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--fps", type=_positive_int, default=None,
                   help="video frame rate (> 0); default: the scene's real-time rate (60 for the MPM scenes), else 30")
    p.add_argument("-h", "--help", action="store_true", help="show this help and the scene's options")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tide", description="tide: differentiable simulation and graphics on Taichi")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", add_help=False, help="run a scene headlessly and write its outputs")
    _common(run)
    run.add_argument("--resume", action="store_true", help="continue from the output folder's last checkpoint")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--save-geometry", action="store_true",
                     help="always write geometry.npz (each frame's particles and meshes, for `tide view RUN_DIR`); "
                          "by default it is written when it stays under 32 MB")
    view = sub.add_parser("view", add_help=False, help="open the GGUI viewer on a scene, or replay a finished run")
    _common(view, view=True)
    view.add_argument("--offscreen", action="store_true", help="no window: write frames and an mp4 to --out")
    view.add_argument("--res", default="800x600", help="window size WxH")
    sub.add_parser("list", help="list the scenes in scenes/")
    from .sweep import add_arguments as _add_sweep  # tide sweep lives in engine/sweep

    _add_sweep(sub)
    parser.commands = {"run": run, "view": view}  # for the scene-aware --help of each
    return parser


# -- helpers ------------------------------------------------------------------------------------------------------
def _version() -> str:
    from importlib import metadata

    def v(name, default="?"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return default

    return f"tide {v('tide', '0.1.0')} (taichi {v('taichi')}, torch {v('torch')}, python {sys.version.split()[0]})"


def clean_stale_temp_files(out: Path) -> list[Path]:
    """Remove the ``.tmp-*`` files a killed run leaves (atomic writes that never got renamed), in ``out`` and its
    ``checkpoints/``. Returns what was removed."""
    gone = []
    for folder in (out, out / "checkpoints"):
        if folder.is_dir():
            for p in folder.glob(".tmp-*"):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    gone.append(p)
    return gone


def _first_run_marker(scene: str, settings) -> Path:
    """A marker per (scene, arch, precision) next to Taichi's kernel cache: absent means kernels will compile."""
    from .backend import cache_dir

    return cache_dir().parent / "seen" / f"{scene}-{settings.resolved_arch}-{settings.precision}"


def _resume_command(argv: list[str]) -> str:
    args = [a for a in argv if a not in ("--overwrite", "--resume")]
    return "tide " + " ".join(shlex.quote(a) for a in args) + " --resume"


def _route_warnings(log) -> None:
    """Print warnings (the solver's StabilityWarning, ...) as one tide line above the progress bar, once each,
    and keep them in log.txt."""
    import warnings

    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"{category.__name__}: {message}"
        if text in seen:
            return
        seen.add(text)
        log(f"warning: {text}")
        from tqdm.auto import tqdm

        tqdm.write(f"tide: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def resolve_scene(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for cand in (SCENES_DIR / name, SCENES_DIR / f"{name}.py"):
        if cand.is_file():
            return cand
    raise SceneError(f"scene not found: {name} (try `tide list`)")


def scene_summary(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except SyntaxError:
        return "(unparsable)"
    # the first paragraph, so a summary sentence that wraps onto a second line is not cut
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""


def check_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse an output folder that is in the way, before any work is done (no side effects)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise OutputError(f"output folder {out} already exists: pass --overwrite to replace it or --resume "
                              "to continue it")
        if not (out / "config.json").is_file():
            raise OutputError(f"refusing to --overwrite {out}: it is not a tide output folder (no config.json)")


def prepare_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Create ``out`` (clearing it for --overwrite) and prove it is writable."""
    check_out(out, overwrite, resume)
    if overwrite and not resume and out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".tide-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def _load_config(module, overrides, out: Path | None, resume: bool, frames: int | None = None):
    """The scene's Config from its defaults, a resumed run's saved settings and ``--set``; ``--frames N`` is the
    scene's own ``frames=N`` where it has that option (checked against its range like any ``--set``)."""
    import dataclasses
    import json

    from .scene import apply_overrides

    base = None
    if resume and out is not None and (out / "config.json").is_file():
        saved = json.loads((out / "config.json").read_text())
        base = saved.get("scene", {})
    overrides = list(overrides)
    if frames is not None and "frames" in {f.name for f in dataclasses.fields(module.Config)}:
        if any(o.split("=", 1)[0].strip() == "frames" for o in overrides):
            raise ConfigError("give the number of frames once: --frames or --set frames=, not both")
        overrides.append(f"frames={frames}")
    return apply_overrides(module.Config, overrides, base=base)


def _default_frames(cfg, given):
    if given is not None:
        if given < 0:
            raise ConfigError(f"--frames must be >= 0, got {given}")
        return given
    return int(getattr(cfg, "frames", 60))


class _Log:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        self.lines.append(f"[{time.strftime('%H:%M:%S')}] {msg}")


# -- commands -----------------------------------------------------------------------------------------------------
def cmd_list(_args) -> int:
    scenes = sorted(SCENES_DIR.glob("*.py"))
    width = max((len(p.stem) for p in scenes), default=0)
    for p in scenes:
        if p.stem.startswith("_"):
            continue
        print(f"{p.stem:<{width}}  {scene_summary(p)}")
    return 0


def _print_scene_help(parser, module, path) -> int:
    from .scene import describe_config

    print(parser.format_help())
    print(f"scene {path.stem}: {scene_summary(path)}\n\noptions for --set:")
    print(describe_config(module.Config))
    return 0


def cmd_run(args, parser, argv=None) -> int:
    from . import backend
    from .io import VideoWriter, save_export, write_json, write_text
    from .runner import Run, plot_history, seed_everything
    from .scene import config_to_dict, load_scene

    path = resolve_scene(args.scene)
    module = load_scene(path)
    if args.help:
        return _print_scene_help(parser, module, path)
    out = Path(args.out or Path("runs") / path.stem)
    cfg = _load_config(module, args.overrides, out, args.resume, args.frames)
    frames = _default_frames(cfg, args.frames)
    check_out(out, args.overwrite, args.resume)
    if args.resume and not (out / "config.json").is_file():
        raise OutputError(f"--resume: {out} is not a tide run folder (no config.json); run without --resume to "
                          "start a new run there")
    log = _Log()
    if args.resume and (out / "log.txt").is_file():
        log.lines = (out / "log.txt").read_text().splitlines()
    t0 = time.perf_counter()  # everything from here on counts: Taichi start, compiles, exports
    precision = args.precision or getattr(module, "default_precision", lambda c: "f32")(cfg)
    settings = backend.init(arch=args.arch, precision=precision)
    _route_warnings(log)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a `kill` checkpoints like Ctrl-C does
    marker = _first_run_marker(path.stem, settings)
    seed_everything(args.seed)
    resolved = {"scene": config_to_dict(cfg), "scene_path": str(path), "frames": frames, "seed": args.seed,
                "backend": settings.as_dict(), "fps": args.fps}
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    scene = build_scene(module, cfg)  # before touching --out, so a scene that rejects its input leaves nothing
    phases["build"] = time.perf_counter() - mark
    if args.fps is not None and hasattr(scene, "video_fps"):
        scene.video_fps = args.fps  # the scene writes the playback factor on its frames when not real time
    fps = args.fps or int(getattr(scene, "video_fps", 30))
    resolved["fps"] = fps
    prepare_out(out, args.overwrite, args.resume)
    for stale in clean_stale_temp_files(out):
        log(f"removed stale temp file {stale.name} (left by an interrupted run)")
    if not marker.exists():  # said after build(), so bad input stays a one-line error
        print(f"tide: first run of {path.stem} on {settings.resolved_arch} ({settings.precision}): compiling "
              f"Taichi kernels, which can take a few minutes; they are cached in {backend.cache_dir()} and load "
              "in seconds next time", flush=True)
    write_json(out / "config.json", resolved)
    log(f"scene {path} on {settings.resolved_arch} ({settings.precision}); config {resolved['scene']}")
    metrics: dict = {}
    video = VideoWriter(out / "video.mp4", fps=fps)
    status = 0
    run = recorder = None
    try:
        optimize = getattr(scene, "optimize", None)
        if callable(optimize):
            run = Run(out, resume=args.resume, progress=not args.no_progress, log=log)
            mark = time.perf_counter()
            optimize(run)
            phases["optimise"] = time.perf_counter() - mark
            for f in run.frames:
                video.append(f)
            plot_history(run.history, out / "loss.png", title=f"{path.stem}: optimisation", units=run.units)
            if run.history:
                metrics["history_last"] = run.history[-1]
            if run.resumed_from is not None:
                metrics["resumed_from_iteration"] = run.resumed_from
        mark = time.perf_counter()
        if callable(getattr(scene, "geometry", None)):
            from .viewer.replay import GeometryRecorder

            recorder = GeometryRecorder(limit_bytes=None if args.save_geometry else 32e6)
        _rollout(scene, frames, video, not args.no_progress, recorder)
        phases["simulate"] = time.perf_counter() - mark
    except KeyboardInterrupt:
        video.abort()
        saved = run.interrupted_checkpoint if run is not None else None
        where = f"checkpoint at iteration {saved[0]} saved; " if saved else ""
        log(f"interrupted; {where}resume with: {_resume_command(sys.argv[1:] if argv is None else argv)}")
        write_text(out / "log.txt", "\n".join(log.lines) + "\n")
        print(f"tide: interrupted; {where}continue with:\n  {_resume_command(sys.argv[1:] if argv is None else argv)}",
              file=sys.stderr)
        return 130
    except SimulationError as exc:
        metrics["error"] = str(exc)
        log(f"simulation error: {exc}")
        print(f"tide: {exc}", file=sys.stderr)
        status = 1
    finally:
        if video.count:
            video.close()
        else:
            video.abort()
    metrics = {**metrics, **(scene.metrics() if status == 0 else {})}
    if status == 0 and recorder is not None and recorder.frames:
        if recorder.full:
            log(f"geometry.npz not written: {frames} frames of geometry pass 32 MB (--save-geometry writes it)")
        else:
            recorder.save(out / "geometry.npz")
            log(f"geometry.npz: {recorder.frames} frames for `tide view {out}`")
    exports = getattr(scene, "exports", None)
    if status == 0 and callable(exports):
        mark = time.perf_counter()
        _export(exports, out, log, not args.no_progress)
        phases["export"] = time.perf_counter() - mark
    wall = time.perf_counter() - t0
    metrics.update(wall_time_s=wall, frames=frames, time_s={k: round(v, 3) for k, v in phases.items()})
    write_json(out / "metrics.json", metrics)
    if status == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    breakdown = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    log(f"done in {wall:.1f} s ({breakdown}; the first step of each phase includes compiling its kernels)")
    write_text(out / "log.txt", "\n".join(log.lines) + "\n")
    print(f"tide: done in {wall:.1f} s ({breakdown}); outputs in {out.resolve()}")
    return status


def _export(exports, out: Path, log, progress: bool) -> None:
    """Compute the scene's exports (meshing can take a while) and write them, with a progress bar."""
    from .io import save_export

    if progress:
        print("tide: computing exports ...", file=sys.stderr)
    items = list(exports().items())
    it = items
    if progress and items:
        from tqdm.auto import tqdm

        it = tqdm(items, desc="export", unit="file", dynamic_ncols=True)
    for name, obj in it:
        save_export(out / name, obj)
        log(f"exported {name}")


def _rollout(scene, frames, video, progress, recorder=None) -> None:
    it = range(frames)
    if progress and frames:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="simulate", unit="frame", dynamic_ncols=True)
    for f in it:
        scene.step(f)
        video.append(scene.render())
        if recorder is not None and not recorder.full:
            recorder.append(scene.geometry())


def _window_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--res expects WxH, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"--res expects a positive WxH, got {text!r}")
    return w, h


def _check_display(offscreen: bool) -> None:
    if not offscreen and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("no display to open a window on (DISPLAY is not set); `tide view SCENE --offscreen` "
                          "writes the frames and a video instead")


def cmd_view(args, parser) -> int:
    from . import backend
    from .io import VideoWriter, save_png

    folder = Path(args.scene)
    replay = folder.is_dir()
    if replay:
        if args.help:
            print(parser.format_help())
            return 0
        if args.overrides:
            raise ConfigError("--set does not apply to a replayed run (its settings are in its config.json)")
        from .viewer.replay import load_run

        source = load_run(folder)
        name = folder.resolve().name
    else:
        from .scene import config_to_dict, load_scene

        path = resolve_scene(args.scene)
        module = load_scene(path)
        if args.help:
            return _print_scene_help(parser, module, path)
        cfg = _load_config(module, args.overrides, None, False, args.frames)
        name = path.stem
    w, h = _window_size(args.res)
    _check_display(args.offscreen)
    out = None
    if args.offscreen:
        out = Path(args.out or (folder.parent / f"{name}_view" if replay else Path("runs") / f"{name}_view"))
        check_out(out, args.overwrite, False)
    backend.init(arch=args.arch, precision=args.precision or "f32")
    from .runner import seed_everything
    from .viewer import Viewer

    seed_everything(args.seed)
    if replay:
        frames = len(source.frames) if args.frames is None else _default_frames(None, args.frames)
        first, fresh, title = source, None, f"tide: {name} (replay of {source.source})"
    else:
        def fresh():
            return build_scene(module, cfg)

        first = fresh()  # before --out is created, so a scene that rejects its input leaves nothing behind
        frames = _default_frames(cfg, args.frames)
        title = f"tide: {name}"
    if out is not None:
        from .io import write_json

        prepare_out(out, args.overwrite, False)
        # marks the folder as tide's, so `--overwrite` may replace it next time
        write_json(out / "config.json", {"view": str(folder.resolve()) if replay else str(path),
                                         "frames": frames, "res": [w, h], "seed": args.seed,
                                         **({} if replay else {"scene": config_to_dict(cfg)})})
    viewer = Viewer(first, res=(w, h), offscreen=args.offscreen, title=title, reset=fresh)
    if not args.offscreen:
        viewer.run(frames=args.frames)
        return 0
    with VideoWriter(out / "video.mp4", fps=args.fps or int(getattr(first, "video_fps", 30))) as video:
        def on_frame(i, img):
            save_png(out / "frames" / f"frame_{i:05d}.png", img)
            video.append(img)

        viewer.run(frames=frames, on_frame=on_frame)
    print(f"tide: {frames} frames in {out.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Taichi prints a version banner when imported; keep it out of --help and error messages
    os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(argv) == 2 and argv[0] in ("run", "view") and argv[1] in ("-h", "--help"):
            print(parser.commands[argv[0]].format_help())
            return 0
        args = parser.parse_args(argv)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "sweep":
            from .sweep import cmd_sweep

            return cmd_sweep(args)
        sub = parser.commands[args.command]
        if args.command == "run":
            return cmd_run(args, sub, argv)
        return cmd_view(args, sub)
    except TideError as exc:
        print(f"tide: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tide: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
