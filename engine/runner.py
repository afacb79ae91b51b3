"""What a learning scene's ``optimize(run)`` talks to: iteration loop with progress, checkpoints and resume,
logged scalars (-> loss.png) and video frames. Scenes never write files; this object does, atomically."""
from __future__ import annotations

import io as _io
import random
import time
from pathlib import Path

import numpy as np

from .io import atomic_path, to_uint8

__all__ = ["Run", "seed_everything", "plot_history"]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Run:
    """Handle given to ``Scene.optimize``.

    Args:
        out: output folder (``checkpoints/`` lives under it).
        resume: continue from the newest checkpoint if there is one.
        progress: show a tqdm bar.
        checkpoint_every: iterations between checkpoints (the last iteration is always saved).
    """

    def __init__(self, out: str | Path, resume: bool = False, progress: bool = True, checkpoint_every: int = 10,
                 log=None):
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.history: list[dict] = []
        self.frames: list[np.ndarray] = []
        self.iteration = 0
        self.resumed_from: int | None = None
        self._log = log or (lambda msg: None)
        self._bar = None
        self.units: dict[str, str] = {}
        """{scalar name: unit} for loss.png's axes; scenes fill it (``run.units["distance"] = "m"``)."""
        self.interrupted_checkpoint: tuple[int, Path] | None = None
        """(iteration, path) of the checkpoint saved when Ctrl-C / SIGTERM stopped the loop."""

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    # -- scalars and frames -------------------------------------------------------------------------------------
    def log(self, **scalars) -> None:
        """Record scalars (floats) for the current iteration; ``loss`` is plotted into loss.png."""
        row = {"iteration": self.iteration, **{k: float(v) for k, v in scalars.items()}}
        self.history.append(row)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)

    def frame(self, img) -> None:
        """Append a (H, W, 3) frame to the run's video (optimisation progress comes before the rollout)."""
        self.frames.append(to_uint8(img))

    # -- the loop ------------------------------------------------------------------------------------------------
    def loop(self, iterations: int, state=None, load=None, desc: str = "optimise"):
        """Yield iteration numbers ``start..iterations-1``, checkpointing ``state()`` as it goes.

        Args:
            iterations: total number of iterations of the whole optimisation (not of this call).
            state: ``() -> dict`` of everything needed to continue (torch tensors, optimiser state dicts, ...).
            load: ``(dict) -> None`` restores what ``state`` returned.
        """
        if iterations < 0:
            from .errors import ConfigError

            raise ConfigError(f"iterations must be >= 0, got {iterations}")
        start = 0
        if self.resume:
            ckpt = self.latest_checkpoint()
            if ckpt is not None:
                blob = _load(ckpt)
                start = int(blob["iteration"])
                self.history = list(blob["history"])
                self.frames = [np.asarray(f) for f in blob.get("frames", [])]
                _set_rng(blob.get("rng"))
                if load is not None:
                    load(blob["state"])
                self.resumed_from = start
                self._log(f"resumed from {ckpt.name} at iteration {start}")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=iterations, initial=start, desc=desc, unit="it", dynamic_ncols=True)
        self._bar = bar
        stop = _StopRequest(bar) if state is not None else None
        try:
            for it in range(start, iterations):
                self.iteration = it
                yield it
                if bar is not None:
                    bar.update(1)
                done = it + 1
                if stop is not None and stop.requested:
                    # Ctrl-C / SIGTERM arrived during this iteration: it has finished, so state() is exact
                    self.interrupted_checkpoint = (done, self.save_checkpoint(done, state()))
                    self._log(f"interrupted: saved checkpoint at iteration {done}")
                    raise KeyboardInterrupt
                if state is not None and (done % self.checkpoint_every == 0 or done == iterations):
                    self.save_checkpoint(done, state())
        finally:
            if stop is not None:
                stop.restore()
            if bar is not None:
                bar.close()
            self._bar = None

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        files = sorted(self.checkpoint_dir.glob("ckpt_*.pt"))
        return files[-1] if files else None

    def save_checkpoint(self, iteration: int, state: dict, keep: int = 2) -> Path:
        import torch

        path = self.checkpoint_dir / f"ckpt_{iteration:07d}.pt"
        blob = {"iteration": iteration, "state": state, "history": self.history, "frames": self.frames,
                "rng": _get_rng(), "time": time.time()}
        buf = _io.BytesIO()
        torch.save(blob, buf)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
        for old in sorted(self.checkpoint_dir.glob("ckpt_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
        return path


class _StopRequest:
    """While a loop runs: the first Ctrl-C (or SIGTERM) asks it to stop after the current iteration, which is then
    checkpointed; a second one stops at once. Signal handlers can only be set from the main thread."""

    def __init__(self, bar=None):
        import signal
        import threading

        self.requested = False
        self._bar = bar
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        import sys

        msg = "tide: stopping after this iteration to save a checkpoint (press Ctrl-C again to stop now)"
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def restore(self):
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _get_rng():
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng(state) -> None:
    if not state:
        return
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def plot_history(history: list[dict], path: str | Path, key: str = "loss", title: str = "optimisation",
                 units: dict | None = None) -> Path | None:
    """Plot every logged scalar against iteration into one PNG (atomic): one panel per term, each with its own
    y axis (log when it spans more than 50x), the total ``key`` first. Returns None when ``key`` was never logged.

    Args:
        units: {name: unit text} for the y labels, e.g. ``{"distance": "m"}``; default "unitless".
    """
    rows = [r for r in history if key in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [key] + sorted({k for r in history for k in r} - {key, "iteration"})
    units = units or {}
    fig, axes = plt.subplots(len(names), 1, figsize=(6.4, 1.2 + 1.9 * len(names)), dpi=100, sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        pts = [(r["iteration"], r[name]) for r in history if name in r and np.isfinite(r[name])]
        if not pts:
            continue
        its, vals = zip(*pts)
        ax.plot(its, vals, lw=1.5, marker="o" if len(pts) < 30 else None, ms=3)
        if min(vals) > 0 and max(vals) / max(min(vals), 1e-300) > 50:
            ax.set_yscale("log")
        ax.set_ylabel(f"{name}\n[{units.get(name, 'unitless')}]")
        ax.set_title(f"{name}: last {vals[-1]:.4g}", fontsize=9, loc="right")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
