"""Dense 2D and 3D grids with bilinear / trilinear sampling, differentiable w.r.t. values and points.

A grid of shape (n0, n1[, n2]) holds samples at the nodes of a box ``[lo, hi]``: node i along an axis sits at
``lo + i (hi - lo) / (n - 1)``. Points outside the box are clamped to its boundary (their gradient w.r.t. the
point is then zero along the clamped axis). The sampling kernels run in Taichi behind ``engine.bridge``.
"""
import taichi as ti
import torch

from .. import backend, bridge

__all__ = ["sample_grid", "DenseGrid"]


@ti.func
def _locate(x, lo, hi, n):
    # Continuous node coordinate, clamped; the cell index stays in [0, n - 2] so the upper corner exists.
    g = ti.min(ti.max((x - lo) / (hi - lo) * (n - 1), 0.0), n - 1.0)
    i = ti.min(ti.cast(ti.floor(g), ti.i32), n - 2)
    return i, g - i


@ti.kernel
def _trilinear(values: ti.types.ndarray(), points: ti.types.ndarray(), out: ti.types.ndarray(),
               lx: ti.f64, ly: ti.f64, lz: ti.f64, hx: ti.f64, hy: ti.f64, hz: ti.f64):
    for p in range(points.shape[0]):
        i, fx = _locate(points[p, 0], lx, hx, values.shape[0])
        j, fy = _locate(points[p, 1], ly, hy, values.shape[1])
        k, fz = _locate(points[p, 2], lz, hz, values.shape[2])
        acc = 0.0
        for c in ti.static(range(8)):
            dx, dy, dz = ti.static(c & 1, (c >> 1) & 1, (c >> 2) & 1)
            w = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy) * (fz if dz else 1.0 - fz)
            acc += w * values[i + dx, j + dy, k + dz]
        out[p] = acc


@ti.kernel
def _bilinear(values: ti.types.ndarray(), points: ti.types.ndarray(), out: ti.types.ndarray(),
              lx: ti.f64, ly: ti.f64, hx: ti.f64, hy: ti.f64):
    for p in range(points.shape[0]):
        i, fx = _locate(points[p, 0], lx, hx, values.shape[0])
        j, fy = _locate(points[p, 1], ly, hy, values.shape[1])
        acc = 0.0
        for c in ti.static(range(4)):
            dx, dy = ti.static(c & 1, (c >> 1) & 1)
            acc += (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy) * values[i + dx, j + dy]
        out[p] = acc


def sample_grid(values: torch.Tensor, points: torch.Tensor, lo, hi) -> torch.Tensor:
    """Interpolate a 2D or 3D grid at points.

    Args:
        values: (n0, n1) or (n0, n1, n2) tensor, every n >= 2.
        points: (N, D) tensor, D = values.ndim, world units.
        lo, hi: (D,) box corners.

    Returns:
        (N,) tensor; differentiable w.r.t. ``values`` and ``points``.
    """
    dim = values.ndim
    if dim not in (2, 3) or min(values.shape) < 2:
        raise ValueError(f"sample_grid needs a 2D or 3D grid with >= 2 nodes per axis, got {tuple(values.shape)}")
    if points.ndim != 2 or points.shape[1] != dim:
        raise ValueError(f"points must be (N, {dim}) for a {dim}D grid, got {tuple(points.shape)}")
    kernel = _trilinear if dim == 3 else _bilinear
    statics = tuple(float(x) for x in lo) + tuple(float(x) for x in hi)
    op = bridge.KernelOp(kernel, outputs=lambda v, p: [((p.shape[0],), v.dtype)], statics=statics,
                         name=f"sample_grid_{dim}d")
    return op(values, points.to(values.dtype))


class DenseGrid(torch.nn.Module):
    """A learnable dense grid field ``(N, D) points -> (N,)`` over the box ``[lo, hi]``.

    Args:
        resolution: nodes per axis (D ints).
        lo, hi: box corners (D floats).
        init: optional callable ``(M, D) node positions -> (M,)`` for the initial values (e.g. an SDF).
    """

    def __init__(self, resolution, lo, hi, init=None):
        super().__init__()
        self.lo = tuple(float(x) for x in lo)
        self.hi = tuple(float(x) for x in hi)
        dtype = backend.torch_dtype()
        axes = [torch.linspace(a, b, int(n), dtype=dtype) for a, b, n in zip(self.lo, self.hi, resolution)]
        nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        start = torch.zeros(nodes.shape[:-1], dtype=dtype) if init is None else torch.as_tensor(
            init(nodes.reshape(-1, len(axes))), dtype=dtype).reshape(nodes.shape[:-1]).detach()
        self.values = torch.nn.Parameter(start.clone())

    def nodes(self) -> torch.Tensor:
        """(n0, n1[, n2], D) node positions."""
        axes = [torch.linspace(a, b, n, dtype=self.values.dtype, device=self.values.device)
                for a, b, n in zip(self.lo, self.hi, self.values.shape)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)

    def spacing(self) -> tuple:
        return tuple((b - a) / (n - 1) for a, b, n in zip(self.lo, self.hi, self.values.shape))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return sample_grid(self.values, points, self.lo, self.hi)
