"""The only place in tide that calls ``ti.init``.

Taichi can be initialised once per process without destroying every field, so tide initialises lazily (on the
first call that needs Taichi), exactly once, and refuses a later request for different settings instead of
silently resetting. Nothing here runs at import time.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Settings", "init", "ensure", "settings", "real", "torch_dtype", "torch_device", "cache_dir", "BackendError",
           "CPU_SPAN"]

ARCHES = ("auto", "cpu", "cuda", "vulkan")
PRECISIONS = ("f32", "f64")

CPU_SPAN = 512
"""Taichi 1.7.4's CPU range-for hands each worker thread a contiguous block of at least this many iterations,
whatever ``ti.loop_config(block_dim=...)`` says (measured: a 2-iteration loop of two equal busy chunks takes twice
one chunk with 2 threads). So a top-level loop over a few chunks or workers, each with its own private copy to
write into, would run them all on one thread. Such loops run ``n * CPU_SPAN`` iterations and let only every
``CPU_SPAN``-th one work (``it % CPU_SPAN == 0``, chunk ``it // CPU_SPAN``); any schedule gives the same result,
and on other arches the loop is still correct. Used by the renderer's private-copy scatters (render/mesh.py,
render/volume.py) and the MPM solver's chunked P2G (physics/kernels.py)."""


HEAP_KEEP = 1 << 30
"""Freed heap memory (bytes) the process keeps instead of handing back to the OS (glibc's trim threshold), and the
size below which allocations come from the heap (its mmap threshold, set to a quarter of this): see
``_keep_heap``."""


def _keep_heap() -> bool:
    """Keep the allocator's freed pages for reuse (Linux with glibc; off with ``TIDE_KEEP_HEAP=0``).

    The renderers and solvers allocate their work buffers (torch tensors, a few to a few tens of MB) on every call.
    glibc's default thresholds adapt as a process runs, and in some states it gives those pages back after each call
    and maps fresh ones on the next: measured on the soft rasterizer at 51k faces / 512^2, ~9,400 minor page faults
    a call and +10 ms (of ~66) in such a process, against ~0 with fixed thresholds. Fixed thresholds make every
    process take the fast state. Returns whether they were set."""
    if not sys.platform.startswith("linux") or not _env_flag("TIDE_KEEP_HEAP", True):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False                       # not glibc (musl etc.)
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, HEAP_KEEP)) and bool(mallopt(m_mmap_threshold, HEAP_KEEP // 4))


class BackendError(RuntimeError):
    """Raised when the requested backend settings are invalid or conflict with the active ones."""


@dataclass(frozen=True)
class Settings:
    arch: str
    """Requested arch: auto|cpu|cuda|vulkan."""
    resolved_arch: str
    """The arch Taichi actually runs on (auto resolves to cuda when a GPU is present, else cpu)."""
    precision: str
    """Default float type for kernels and staged torch tensors: f32|f64."""
    debug: bool
    """Taichi debug mode (bounds checks; slow)."""
    fast_compile: bool
    """Turn off Taichi's advanced optimisation: gradient kernels compile ~3x faster. Default on in f64 only
    (f32 reverse-mode kernels come out wrong without the optimisation in Taichi 1.7.4)."""

    def as_dict(self) -> dict:
        return asdict(self)


_active: Settings | None = None


def cache_dir() -> Path:
    """Where Taichi's offline kernel cache lives. Outside the repo so fresh clones (CI) reuse it."""
    root = os.environ.get("TIDE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tide")
    return Path(root) / "taichi"


def _env_flag(name: str, default: bool) -> bool:
    val = os.environ.get(name)
    if val is None:
        return default
    return val.strip().lower() in ("1", "true", "yes", "on")


def init(arch: str = "auto", precision: str = "f32", debug: bool = False, fast_compile: bool | None = None) -> Settings:
    """Initialise Taichi once and return the active settings.

    Idempotent: calling again with the same settings returns them; calling with different ones raises
    ``BackendError`` (re-initialising would destroy every existing field).

    ``fast_compile`` defaults to the env var ``TIDE_FAST_COMPILE``, else on for f64 and off for f32.
    """
    global _active
    if arch not in ARCHES:
        raise BackendError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHES)}")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if fast_compile is None:
        # Measured (tests/core/test_backend.py): with advanced_optimization off, Taichi 1.7.4's reverse-mode
        # kernels return wrong gradients in f32 (an MPM muscle rollout's adjoint is off by 2-4x), while f64 is
        # exact. So the faster compile is the default only where it is known to be right.
        fast_compile = _env_flag("TIDE_FAST_COMPILE", precision == "f64")
    elif fast_compile and precision == "f32":
        warnings.warn("fast_compile with f32: Taichi 1.7.4 computes some reverse-mode gradients wrongly with "
                      "advanced_optimization off in f32; use f64 for gradients", RuntimeWarning, stacklevel=2)
    if _active is not None:
        same_arch = arch in ("auto", _active.arch, _active.resolved_arch)
        same_rest = (precision, bool(debug), bool(fast_compile)) == (_active.precision, _active.debug, _active.fast_compile)
        if not (same_arch and same_rest):
            raise BackendError(
                f"tide backend already initialised with arch={_active.arch}, precision={_active.precision}, "
                f"debug={_active.debug}, fast_compile={_active.fast_compile}; cannot switch to arch={arch}, "
                f"precision={precision}, debug={debug}, fast_compile={fast_compile} in the same process")
        return _active

    import taichi as ti

    ti_arch = {"auto": None, "cpu": ti.cpu, "cuda": ti.cuda, "vulkan": ti.vulkan}[arch]
    if arch == "auto":
        ti_arch = ti.cuda if _cuda_available() else ti.cpu
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        arch=ti_arch,
        default_fp=ti.f64 if precision == "f64" else ti.f32,
        default_ip=ti.i32,
        debug=bool(debug),
        offline_cache=True,
        offline_cache_file_path=str(cache),
        # "error": Taichi's compile-time precision notes ("Atomic add may lose precision", 64 per silhouette
        # run) are not actionable for users; TIDE_TI_LOG=warn brings them back
        log_level=os.environ.get("TIDE_TI_LOG", "error"),
        random_seed=0,
    )
    if fast_compile:
        kwargs["advanced_optimization"] = False
    if arch != "cpu":
        kwargs["enable_fallback"] = False
    try:
        # ti.init prints "[Taichi] Starting on arch=..." to stdout; tide reports the arch itself (log.txt)
        with contextlib.redirect_stdout(io.StringIO()):
            ti.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Taichi raises plain RuntimeError on missing devices
        raise BackendError(f"could not start Taichi on arch={arch}: {exc}") from exc
    resolved = ti.lang.impl.current_cfg().arch.name
    if resolved in ("x64", "arm64"):
        _keep_heap()
    _active = Settings(arch=arch, resolved_arch=resolved, precision=precision, debug=bool(debug),
                       fast_compile=bool(fast_compile))
    return _active


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def ensure() -> Settings:
    """Return the active settings, initialising with defaults (env ``TIDE_ARCH``/``TIDE_PRECISION``) if needed."""
    if _active is not None:
        return _active
    return init(arch=os.environ.get("TIDE_ARCH", "auto"), precision=os.environ.get("TIDE_PRECISION", "f32"))


def settings() -> Settings | None:
    """The active settings, or None before initialisation."""
    return _active


def real():
    """Taichi float type of the active precision."""
    import taichi as ti

    return ti.f64 if ensure().precision == "f64" else ti.f32


def torch_dtype():
    """torch float dtype of the active precision."""
    import torch

    return torch.float64 if ensure().precision == "f64" else torch.float32


def torch_device():
    """torch device that Taichi kernels read from and write to without a copy."""
    import torch

    return torch.device("cuda") if ensure().resolved_arch == "cuda" else torch.device("cpu")
