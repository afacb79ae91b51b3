"""Input checks shared by the renderers: one-line ``ValueError``s naming the argument, before any kernel runs
(a bad index or a short attribute array would otherwise be read out of bounds by a Taichi kernel)."""
import weakref

import numpy as np
import torch

__all__ = ["check_mesh", "check_per", "check_finite"]


def _shape(x) -> str:
    return "x".join(map(str, tuple(x.shape))) if x.dim() else "scalar"


def check_finite(name: str, x: torch.Tensor, fn: str):
    """``x`` has no NaN or infinity. A finite sum proves it (NaN and infinities propagate through a sum) in one
    vectorised read, ~25x cheaper than an elementwise ``isfinite`` mask on a 64^3 x 4 grid (2.3 ms -> 0.08 ms on 2
    cores); only a sum that overflowed or met a bad value takes the elementwise test."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    x = x.detach()
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        # numpy's single-threaded sum: torch's parallel one is an OpenMP region, which on a busy 2-core machine
        # waits for a descheduled thread (~9 ms for 77k floats at load ~7, against ~0.03 ms alone)
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(x.numpy(), axis=None)
        if np.isfinite(total) or bool(torch.isfinite(x).all()):
            return
        raise ValueError(f"{fn}: {name} contains NaN or infinite values")
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{fn}: {name} contains NaN or infinite values")


def check_mesh(verts: torch.Tensor, faces: torch.Tensor, fn: str):
    """verts (V, 3) or (B, V, 3) finite floats; faces (F, 3) integers in [0, V)."""
    if verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(f"{fn}: verts must be (V, 3) or (B, V, 3), got {_shape(verts)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"{fn}: faces must be (F, 3), got {_shape(faces)}")
    if faces.is_floating_point():
        raise ValueError(f"{fn}: faces must be integer vertex indices, got {faces.dtype}")
    V = verts.shape[-2]
    if faces.numel() and not _faces_in_range(faces, V):
        raise ValueError(f"{fn}: face indices must lie in [0, {V}) for {V} vertices, got "
                         f"[{int(faces.min())}, {int(faces.max())}]")
    check_finite("verts", verts, fn)


_FACES_OK: list = []
"""(weak reference, version, V) of the last few face tensors whose indices passed the range check: an optimisation
renders the same faces every step, and two reductions over F x 3 ids per call cost more than the raster on a busy
machine. The same tensor object, unmodified (``_version``), for the same vertex count skips the check."""


def _faces_in_range(faces: torch.Tensor, V: int) -> bool:
    for ref, version, nv in _FACES_OK:
        if ref() is faces and faces._version == version and nv == V:
            return True
    if int(faces.min()) < 0 or int(faces.max()) >= V:
        return False
    _FACES_OK.append((weakref.ref(faces), faces._version, V))
    del _FACES_OK[:-4]
    return True


def check_per(name: str, x, n: int, what: str, fn: str, batch: int, trailing: int = 1):
    """``x`` is per-item: (n, ...) or (Bx, n, ...) with Bx in (1, batch), ``trailing`` dimensions after the item
    axis. Scalars and None pass (broadcast)."""
    if x is None or not isinstance(x, torch.Tensor) or x.dim() == 0:
        return
    item_axis = x.dim() - 1 - trailing
    if item_axis not in (0, 1) or x.shape[item_axis] != n:
        raise ValueError(f"{fn}: {name} must have {n} entries along its {what} axis, shaped "
                         f"([B, ]{what.upper()}{', ...' if trailing else ''}), got {_shape(x)}")
    if item_axis == 1 and x.shape[0] not in (1, batch):
        raise ValueError(f"{fn}: {name} has a batch of {x.shape[0]} for {batch} cameras/meshes")
