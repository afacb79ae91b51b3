"""Analytic signed distance functions, composable, differentiable w.r.t. points and shape parameters.

Each primitive is one small Taichi kernel over a batch of points, reached through ``engine.bridge`` (so gradients
w.r.t. both the points and the parameters come from ``kernel.grad``). Transforms and CSG are cheap element-wise
torch ops on top, so any tree of them is differentiable without compiling a kernel per tree.

Conventions: distances and parameters in world units; negative inside. Primitives are centred at the origin and,
where they have an axis (capsule, cylinder, torus), it is z.

Example::

    shape = (Box([0.5, 0.5, 0.5]) - Sphere(0.6)).rotate(R).translate([0, 0, 0.2])
    d = shape(points)                 # (N,)
    n = normals(shape, points)        # (N, 3), unit
"""
import numpy as np
import taichi as ti
import torch

from .. import bridge

__all__ = ["SDF", "Sphere", "Box", "RoundBox", "Capsule", "Cylinder", "Torus", "Plane", "Superquadric",
           "union", "intersection", "difference", "smooth_union", "smooth_intersection", "smooth_difference",
           "normals", "gradient"]

_TINY = 1e-30  # inside square roots: keeps |0| differentiable (zero gradient) instead of NaN


@ti.func
def _norm(v):
    return ti.sqrt(v.dot(v) + _TINY)


@ti.func
def _box(p, b):
    q = ti.abs(p) - b
    return _norm(ti.max(q, 0.0)) + ti.min(ti.max(q[0], ti.max(q[1], q[2])), 0.0)


@ti.func
def _sphere(p, k: ti.template()):
    return _norm(p) - k[0]


@ti.func
def _box_prim(p, k: ti.template()):
    return _box(p, ti.Vector([k[0], k[1], k[2]]))


@ti.func
def _round_box(p, k: ti.template()):
    r = k[3]
    return _box(p, ti.Vector([k[0] - r, k[1] - r, k[2] - r])) - r


@ti.func
def _capsule(p, k: ti.template()):
    q = ti.Vector([p[0], p[1], p[2] - ti.min(ti.max(p[2], -k[0]), k[0])])
    return _norm(q) - k[1]


@ti.func
def _cylinder(p, k: ti.template()):
    d = ti.Vector([_norm(ti.Vector([p[0], p[1]])) - k[1], ti.abs(p[2]) - k[0]])
    return ti.min(ti.max(d[0], d[1]), 0.0) + _norm(ti.max(d, 0.0))


@ti.func
def _torus(p, k: ti.template()):
    q = ti.Vector([_norm(ti.Vector([p[0], p[1]])) - k[0], p[2]])
    return _norm(q) - k[1]


@ti.func
def _plane(p, k: ti.template()):
    n = ti.Vector([k[0], k[1], k[2]])
    return p.dot(n) / _norm(n) + k[3]


@ti.func
def _superquadric_io(p, k: ti.template()):
    e1, e2 = k[3], k[4]
    ax = ti.abs(p[0] / k[0]) + 1e-12
    ay = ti.abs(p[1] / k[1]) + 1e-12
    az = ti.abs(p[2] / k[2]) + 1e-12
    return (ax ** (2.0 / e2) + ay ** (2.0 / e2)) ** (e2 / e1) + az ** (2.0 / e1)


@ti.func
def _superquadric_radial(p, k: ti.template()):
    # The ray from the centre through p meets the surface at p * F^(-e1/2); d is the distance to that point
    # along the ray (Jaklic et al. 2000, "radial Euclidean distance"): exact for a sphere, an upper bound on |SDF|.
    f = _superquadric_io(p, k)
    return _norm(p) * (1.0 - f ** (-k[3] / 2.0))


@ti.func
def _superquadric_power(p, k: ti.template()):
    # Inside-outside function raised to e1 (so it grows like |p|^2 for every shape): F^e1 - 1, sign-correct only.
    return _superquadric_io(p, k) ** k[3] - 1.0


def _tensor(value):
    """Parameters keep a tensor's dtype (and graph); plain numbers become float64. Evaluation casts them to the
    points' dtype, so building a shape never starts the backend."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)


def _make_kernel(fn):
    @ti.kernel
    def evaluate(points: ti.types.ndarray(), params: ti.types.ndarray(), out: ti.types.ndarray()):
        for i in range(points.shape[0]):
            out[i] = fn(ti.Vector([points[i, 0], points[i, 1], points[i, 2]]), params)

    return evaluate


_KERNELS = {name: _make_kernel(fn) for name, fn in {
    "sphere": _sphere, "box": _box_prim, "round_box": _round_box, "capsule": _capsule, "cylinder": _cylinder,
    "torus": _torus, "plane": _plane, "superquadric_radial": _superquadric_radial,
    "superquadric_power": _superquadric_power}.items()}
_OPS: dict = {}


def _op(name):
    """One bridge op per primitive kind, built lazily (never in ``__init__`` of a shape)."""
    if name not in _OPS:
        _OPS[name] = bridge.KernelOp(_KERNELS[name], outputs=lambda pts, prm: [((pts.shape[0],), pts.dtype)],
                                     name=f"sdf_{name}")
    return _OPS[name]


class SDF:
    """A signed distance function ``(N, 3) points -> (N,) distances``. Combine with ``|`` (union), ``&``
    (intersection), ``-`` (difference) and the ``translate`` / ``rotate`` / ``scale`` methods."""

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def parameters(self):
        """Tensors this shape depends on (for optimisers); primitives store theirs as ``self.params``."""
        return []

    def __or__(self, other):
        return _Combine(self, other, "union")

    def __and__(self, other):
        return _Combine(self, other, "intersection")

    def __sub__(self, other):
        return _Combine(self, other, "difference")

    def translate(self, offset):
        return _Transform(self, offset=offset)

    def rotate(self, matrix):
        """Rotate the shape by the (3, 3) rotation matrix ``matrix`` (world = R @ local)."""
        return _Transform(self, rotation=matrix)

    def scale(self, factor):
        """Uniform scale (a positive scalar); distances scale with it, so the result is still an SDF."""
        return _Transform(self, factor=factor)


class _Primitive(SDF):
    kind = ""

    def __init__(self, *values):
        self.params = torch.cat([_tensor(v).reshape(-1) for v in values])

    def parameters(self):
        return [self.params]

    def __call__(self, points):
        points = torch.as_tensor(points)
        return _op(self.kind)(points, self.params.to(points.dtype))


class Sphere(_Primitive):
    """Sphere of ``radius``. params: [r]."""
    kind = "sphere"

    def __init__(self, radius=1.0):
        super().__init__(radius)


class Box(_Primitive):
    """Axis-aligned box with ``half_extents`` (3,). params: [bx, by, bz]."""
    kind = "box"

    def __init__(self, half_extents=(1.0, 1.0, 1.0)):
        super().__init__(half_extents)


class RoundBox(_Primitive):
    """Box of ``half_extents`` whose edges are rounded with ``radius`` (< min half extent). params: [b, r]."""
    kind = "round_box"

    def __init__(self, half_extents=(1.0, 1.0, 1.0), radius=0.1):
        super().__init__(half_extents, radius)


class Capsule(_Primitive):
    """Segment from z = -half_length to +half_length, thickened by ``radius``. params: [h, r]."""
    kind = "capsule"

    def __init__(self, half_length=0.5, radius=0.25):
        super().__init__(half_length, radius)


class Cylinder(_Primitive):
    """Capped cylinder along z: ``half_height``, ``radius``. params: [h, r]."""
    kind = "cylinder"

    def __init__(self, half_height=0.5, radius=0.5):
        super().__init__(half_height, radius)


class Torus(_Primitive):
    """Torus in the xy plane: ring radius ``major``, tube radius ``minor``. params: [R, r]."""
    kind = "torus"

    def __init__(self, major=0.6, minor=0.2):
        super().__init__(major, minor)


class Plane(_Primitive):
    """Half-space ``n . p + offset <= 0`` (n need not be unit). params: [nx, ny, nz, offset]."""
    kind = "plane"

    def __init__(self, normal=(0.0, 0.0, 1.0), offset=0.0):
        super().__init__(normal, offset)


class Superquadric(_Primitive):
    """Superquadric with half axes ``scale`` (3,) and shape exponents ``eps1`` (latitude), ``eps2`` (longitude).

    Its inside-outside function is ``F = (|x/a1|^(2/e2) + |y/a2|^(2/e2))^(e2/e1) + |z/a3|^(2/e1)`` (F < 1 inside).
    ``mode="radial"`` (default) returns the approximate SDF ``|p| (1 - F^(-e1/2))``: the distance to the surface
    measured along the ray from the centre (exact for spheres, exact sign everywhere, larger than the true
    distance away from the axes of flat shapes). ``mode="power"`` returns ``F^e1 - 1`` (sign only).
    params: [a1, a2, a3, e1, e2].
    """

    def __init__(self, scale=(1.0, 1.0, 1.0), eps1=1.0, eps2=1.0, mode="radial"):
        if mode not in ("radial", "power"):
            raise ValueError(f"mode must be 'radial' or 'power', got {mode!r}")
        self.kind = f"superquadric_{mode}"
        super().__init__(scale, eps1, eps2)


class _Transform(SDF):
    def __init__(self, child, offset=None, rotation=None, factor=None):
        self.child = child
        self.offset = None if offset is None else _tensor(offset)
        self.rotation = None if rotation is None else _tensor(rotation)
        self.factor = None if factor is None else _tensor(factor)

    def parameters(self):
        own = [t for t in (self.offset, self.rotation, self.factor) if t is not None]
        return self.child.parameters() + own

    def __call__(self, points):
        p = torch.as_tensor(points)
        if self.offset is not None:
            p = p - self.offset.to(p)               # dtype and device of the points
        if self.rotation is not None:
            p = p @ self.rotation.to(p)  # local = R^T world, written row-wise
        if self.factor is not None:
            return self.child(p / self.factor.to(p)) * self.factor.to(p)
        return self.child(p)


def _smin(a, b, k):
    # Polynomial smooth minimum (Quilez): blends within distance k; equals min(a, b) when |a - b| >= k.
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


class _Combine(SDF):
    def __init__(self, a, b, how, k=0.0):
        self.a, self.b, self.how, self.k = a, b, how, k

    def parameters(self):
        return self.a.parameters() + self.b.parameters()

    def __call__(self, points):
        da, db = self.a(points), self.b(points)
        if self.how == "union":
            return torch.minimum(da, db) if self.k == 0 else _smin(da, db, self.k)
        if self.how == "intersection":
            return torch.maximum(da, db) if self.k == 0 else -_smin(-da, -db, self.k)
        return torch.maximum(da, -db) if self.k == 0 else -_smin(-da, db, self.k)


def union(a, b):
    return _Combine(a, b, "union")


def intersection(a, b):
    return _Combine(a, b, "intersection")


def difference(a, b):
    """``a`` with ``b`` carved out."""
    return _Combine(a, b, "difference")


def smooth_union(a, b, k=0.1):
    """Union blended over a band of width ``k`` (world units); a bound on the distance, not exact, inside it."""
    return _Combine(a, b, "union", float(k))


def smooth_intersection(a, b, k=0.1):
    return _Combine(a, b, "intersection", float(k))


def smooth_difference(a, b, k=0.1):
    return _Combine(a, b, "difference", float(k))


def gradient(sdf, points, create_graph: bool = False):
    """(N, 3) spatial gradient of ``sdf`` at ``points`` (through the Taichi kernels' gradients).

    ``create_graph`` is only supported for torch-only fields (MLPs); Taichi primitives give first derivatives.
    """
    with torch.enable_grad():
        p = torch.as_tensor(points).detach().clone().requires_grad_(True)
        d = sdf(p)
        (g,) = torch.autograd.grad(d.sum(), p, create_graph=create_graph)
    return g


def normals(sdf, points):
    """(N, 3) unit outward normals ``grad d / |grad d|``."""
    g = gradient(sdf, points)
    return g / torch.linalg.norm(g, dim=1, keepdim=True).clamp_min(1e-12)


def rotation_matrix(axis, angle: float) -> torch.Tensor:
    """(3, 3) rotation about ``axis`` by ``angle`` radians (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    R = np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K
    return torch.as_tensor(R, dtype=torch.float64)


__all__.append("rotation_matrix")
