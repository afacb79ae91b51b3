"""Newton-style data for MLS-MPM: ``Model`` (static description), ``State`` (what changes) and ``Control``.

All arrays are torch tensors on the backend's device (so Taichi kernels read them without copies and the bridge
can hand them to torch). Shapes use N = particles, d = dimension (2 or 3), G = actuation channels.
Units are SI: metres, seconds, kilograms, pascals; the domain spans [0, res·dx] on every axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from .. import backend
from . import materials

__all__ = ["TensorBundle", "Boundary", "Model", "State", "Control", "ModelBuilder", "STICKY", "SLIP", "SEPARATE", "BOUNDARY_KINDS",
           "MATERIAL_DEFAULTS"]

STICKY, SLIP, SEPARATE = 0, 1, 2
BOUNDARY_KINDS = {"sticky": STICKY, "slip": SLIP, "separate": SEPARATE}

# (E [Pa], ν, ρ [kg/m^d]) used when a body does not give its own.
MATERIAL_DEFAULTS = {
    "elastic": (3e4, 0.3, 1e3), "corotated": (3e4, 0.3, 1e3), "muscle": (3e4, 0.3, 1e3),
    "sand": (2e5, 0.3, 1.6e3), "snow": (1.4e5, 0.2, 4e2), "clay": (5e4, 0.3, 1.2e3),
    "water": (2e5, 0.0, 1e3), "mud": (5e4, 0.3, 1.5e3), "ice": (5e5, 0.3, 9e2),
}


@dataclass
class Boundary:
    """Grid-node colliders: the terrain/floor heightfield and the domain walls.

    Kinds: sticky (v = 0), slip (normal velocity removed), separate (normal velocity removed only when moving
    into the collider). Slip and separate apply Coulomb friction μ·|v_n| to the tangential velocity.
    """

    floor: str = "sticky"
    """Floor/terrain collider kind: sticky|slip|separate."""
    floor_friction: float = 0.5
    """Coulomb friction coefficient of the floor (slip/separate)."""
    walls: str = "slip"
    """Kind of the other domain walls (and the ceiling)."""
    wall_friction: float = 0.0
    """Coulomb friction coefficient of the walls."""
    clamp: tuple | None = None
    """Optional ((lo…), (hi…)) box [m]: grid nodes inside it are held still (clamps, e.g. a cantilever root)."""

    def clamp_box(self, dim: int) -> tuple[tuple, tuple]:
        if self.clamp is None:
            return (1e30,) * dim, (-1e30,) * dim
        lo, hi = self.clamp
        return tuple(float(v) for v in lo), tuple(float(v) for v in hi)

    def kinds(self) -> tuple[int, int]:
        for k in (self.floor, self.walls):
            if k not in BOUNDARY_KINDS:
                raise ValueError(f"unknown boundary kind {k!r}; choose sticky, slip or separate")
        return BOUNDARY_KINDS[self.floor], BOUNDARY_KINDS[self.walls]


@dataclass
class Model:
    """Static description of an MPM scene.

    Per-particle tensors (float = backend precision): x0, v0 (N, d) [m, m/s]; vol (N,) [m^d]; rho (N,) [kg/m^d];
    E (N,) [Pa]; nu (N,); material (N,) int32 (ids in ``materials``); fibre (N, d) unit muscle direction;
    muscle (N, G) weight of each actuation channel (0 for passive particles).
    Grid: ``res`` nodes per axis, spacing ``dx``; ``bound`` nodes at each side act as walls.
    Terrain: ``heights`` (res[0],) in 2D or (res[0], res[2]) in 3D is the floor height [m] of each node column,
    ``normals`` the matching (…, d) outward unit normals.
    """

    dim: int
    x0: torch.Tensor
    v0: torch.Tensor
    vol: torch.Tensor
    rho: torch.Tensor
    E: torch.Tensor
    nu: torch.Tensor
    material: torch.Tensor
    fibre: torch.Tensor
    muscle: torch.Tensor
    res: tuple
    dx: float
    bound: int
    gravity: tuple
    boundary: Boundary
    heights: torch.Tensor
    normals: torch.Tensor
    table: torch.Tensor
    colors: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.x0.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.muscle.shape[1])

    @property
    def domain(self) -> np.ndarray:
        """(d,) extent of the grid in metres."""
        return np.asarray(self.res, dtype=float) * self.dx

    def state(self) -> State:
        """A fresh initial state: x0, v0, C = 0, F = I, Jp = 1."""
        return State.initial(self.x0, self.v0)

    def with_params(self, **tensors) -> Model:
        """A copy sharing everything but the given tensors (e.g. E=…, rho=… for gradients)."""
        return replace(self, **tensors)


class TensorBundle:
    """Shared helpers for dataclasses whose fields are tensors (``State``, the solver's ``Scratch``)."""

    def tensors(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]

    def requires_grad_(self):
        """Allocate zeroed ``.grad`` buffers (Taichi's backward kernels accumulate into them)."""
        for t in self.tensors():
            t.requires_grad_(True)
            t.grad = torch.zeros_like(t)
        return self

    def zero_grad_(self):
        for t in self.tensors():
            if t.grad is not None:
                t.grad.zero_()
        return self

    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self.tensors())


@dataclass
class State(TensorBundle):
    """What changes: x, v (N, d); C (N, d, d) APIC affine velocity [1/s]; F (N, d, d) deformation gradient;
    Jp (N,) plastic volume ratio (snow hardening)."""

    x: torch.Tensor
    v: torch.Tensor
    C: torch.Tensor
    F: torch.Tensor
    Jp: torch.Tensor

    NAMES = ("x", "v", "C", "F", "Jp")

    @classmethod
    def initial(cls, x: torch.Tensor, v: torch.Tensor) -> State:
        n, d = x.shape
        eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(n, d, d).contiguous()
        return cls(x.detach().clone().contiguous(), v.detach().clone().contiguous(),
                   torch.zeros(n, d, d, dtype=x.dtype, device=x.device), eye,
                   torch.ones(n, dtype=x.dtype, device=x.device))

    def empty_like(self) -> State:
        return State(*[torch.empty_like(t) for t in self.tensors()])

    def clone(self) -> State:
        return State(*[t.detach().clone() for t in self.tensors()])

    def copy_(self, other: State) -> State:
        for a, b in zip(self.tensors(), other.tensors()):
            a.data.copy_(b.data)
        return self



@dataclass
class Control:
    """Muscle activations for one substep: act (G,), dimensionless, as a fraction of each particle's E."""

    act: torch.Tensor


def _real_tensor(a, shape=None):
    t = torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=backend.torch_dtype(), device=backend.torch_device())
    return t.reshape(shape).contiguous() if shape is not None else t.contiguous()


def check_material_parameters(E=None, nu=None, rho=None) -> None:
    """ValueError unless E > 0 [Pa], 0 <= nu < 0.5 and rho > 0 [kg/m^d] (None: the material's default)."""
    if E is not None and not (np.isfinite(E) and E > 0):
        raise ValueError(f"Young's modulus E must be > 0 Pa, got {E}")
    if nu is not None and not (np.isfinite(nu) and 0 <= nu < 0.5):
        raise ValueError(f"Poisson ratio nu must be in [0, 0.5) (0.5 is incompressible, which explicit MPM cannot "
                         f"step), got {nu}")
    if rho is not None and not (np.isfinite(rho) and rho > 0):
        raise ValueError(f"density rho must be > 0, got {rho}")


@dataclass
class _Body:
    points: np.ndarray
    vol: float
    material: int
    E: float
    nu: float
    rho: float
    velocity: np.ndarray
    group: int | None
    fibre: np.ndarray
    color: np.ndarray


@dataclass
class ModelBuilder:
    """Collects particle bodies, then ``finalize()`` packs them into a ``Model``.

    ``res`` nodes per axis with spacing ``dx`` [m]; ``ppc`` particles per cell per axis on a regular lattice
    (2 → 4 per cell in 2D, 8 in 3D; each particle then has volume (dx/ppc)^d).
    """

    res: tuple
    dx: float
    ppc: int = 2
    bound: int = 3
    bodies: list = field(default_factory=list)

    def __post_init__(self):
        if len(self.res) not in (2, 3):
            raise ValueError(f"res must have 2 or 3 entries (the dimension), got {len(self.res)}: {tuple(self.res)}")
        if min(int(r) for r in self.res) < 2 * self.bound + 1:
            raise ValueError(f"res={tuple(self.res)} leaves no room inside the {self.bound}-cell wall bands")
        if not (np.isfinite(self.dx) and self.dx > 0):
            raise ValueError(f"dx must be a positive length [m], got {self.dx}")
        if int(self.ppc) < 1:
            raise ValueError(f"ppc (particles per cell per axis) must be >= 1, got {self.ppc}")

    @property
    def dim(self) -> int:
        return len(self.res)

    def lattice(self, lo, hi, centred: bool = False) -> np.ndarray:
        """(M, d) lattice points with spacing h = dx/ppc in the box [lo, hi): on every axis as many as fit from
        lo + h/2 in steps of h. By default they start at lo + h/2 (flush with lo, e.g. a bed on the floor), so
        when the box's length is not a whole number of steps the leftover is all at the hi end; ``centred`` splits
        it evenly between both ends instead, so a box symmetric about a plane gives a body symmetric about it."""
        h = self.dx / self.ppc
        axes = []
        for l, u in zip(lo, hi):
            a = np.arange(l + h / 2, u, h)
            axes.append((l + u) / 2 + (np.arange(len(a)) - (len(a) - 1) / 2) * h if centred else a)
        grid = np.meshgrid(*axes, indexing="ij")
        return np.stack([g.ravel() for g in grid], axis=1)

    def add_points(self, points, material="elastic", E=None, nu=None, rho=None, velocity=None, group=None,
                   fibre=None, color=(0.8, 0.5, 0.3), vol=None) -> int:
        """Add a body from (M, d) points [m]. Returns its index. ``group``: actuation channel (muscle only)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, self.dim)
        if len(pts) == 0:
            raise ValueError("body has no particles: make it larger than one lattice spacing dx/ppc")
        check_material_parameters(E, nu, rho)
        name = material if isinstance(material, str) else [k for k, v in materials.NAMES.items() if v == material][0]
        mid = materials.ids(material)
        dE, dnu, drho = MATERIAL_DEFAULTS[name]
        d = self.dim
        fib = np.zeros(d) if fibre is None else np.asarray(fibre, dtype=float)
        if fibre is None:
            fib[0] = 1.0
        fib = fib / max(np.linalg.norm(fib), 1e-12)
        self.bodies.append(_Body(pts, vol if vol is not None else (self.dx / self.ppc) ** d, mid,
                                 dE if E is None else float(E), dnu if nu is None else float(nu),
                                 drho if rho is None else float(rho),
                                 np.zeros(d) if velocity is None else np.asarray(velocity, dtype=float),
                                 group, fib, np.asarray(color, dtype=float)))
        return len(self.bodies) - 1

    def add_box(self, lo, hi, centred: bool = False, **kw) -> int:
        """A box [lo, hi) [m] of lattice particles, flush with lo (a body standing on the floor or against a wall)
        or ``centred`` in the box (a free body symmetric about the box's centre; see ``lattice``); keyword
        arguments as ``add_points``."""
        return self.add_points(self.lattice(lo, hi, centred=centred), **kw)

    def add_ellipsoid(self, center, radii, **kw) -> int:
        """An ellipse (2D) / ellipsoid (3D) of lattice particles, the lattice centred on ``center``."""
        c, r = np.asarray(center, float), np.asarray(radii, float) * np.ones(self.dim)
        pts = self.lattice(c - r, c + r, centred=True)
        return self.add_points(pts[(((pts - c) / r) ** 2).sum(1) <= 1.0], **kw)

    def finalize(self, gravity=None, boundary: Boundary | None = None, heights=None, normals=None,
                 table: materials.MaterialTable | None = None) -> Model:
        """Pack the bodies. ``heights``/``normals``: terrain (see ``Model``); default a flat floor at the
        wall band (``bound·dx``)."""
        if not self.bodies:
            raise ValueError("no bodies: add at least one with add_box/add_ellipsoid/add_points")
        d = self.dim
        cat = lambda f: np.concatenate([f(b) for b in self.bodies])  # noqa: E731
        counts = [len(b.points) for b in self.bodies]
        per = lambda val: np.concatenate([np.full(c, val(b)) for b, c in zip(self.bodies, counts)])  # noqa: E731
        groups = [b.group for b in self.bodies if b.group is not None]
        G = max(groups) + 1 if groups else 1
        muscle = np.zeros((sum(counts), G))
        start = 0
        for b, c in zip(self.bodies, counts):
            if b.group is not None:
                muscle[start:start + c, b.group] = 1.0
            start += c
        if gravity is None:
            gravity = (0.0, -9.81) + (0.0,) * (d - 2)
        col_shape = (self.res[0],) if d == 2 else (self.res[0], self.res[2])
        if heights is None:
            heights = np.full(col_shape, self.bound * self.dx)
        if normals is None:
            normals = np.zeros(col_shape + (d,))
            normals[..., 1] = 1.0
        heights = np.asarray(heights, float)
        if heights.shape != col_shape:
            raise ValueError(f"terrain heights must have shape {col_shape} (one per grid column), got {heights.shape}")
        x0 = cat(lambda b: b.points)
        lo, hi = self.bound * self.dx, (np.asarray(self.res) - self.bound) * self.dx
        if (x0 < lo).any() or (x0 >= hi).any():
            raise ValueError(f"particles outside the simulation domain [{lo:g}, {hi}) m (walls are {self.bound} "
                             f"cells thick): move the bodies or enlarge res/dx")
        return Model(
            dim=d, x0=_real_tensor(x0), v0=_real_tensor(cat(lambda b: np.tile(b.velocity, (len(b.points), 1)))),
            vol=_real_tensor(per(lambda b: b.vol)), rho=_real_tensor(per(lambda b: b.rho)),
            E=_real_tensor(per(lambda b: b.E)), nu=_real_tensor(per(lambda b: b.nu)),
            material=torch.as_tensor(per(lambda b: b.material).astype(np.int32), device=backend.torch_device()),
            fibre=_real_tensor(cat(lambda b: np.tile(b.fibre, (len(b.points), 1)))), muscle=_real_tensor(muscle),
            res=tuple(int(r) for r in self.res), dx=float(self.dx), bound=int(self.bound),
            gravity=tuple(float(g) for g in gravity), boundary=boundary or Boundary(),
            heights=_real_tensor(heights), normals=_real_tensor(normals),
            table=_real_tensor((table or materials.MaterialTable()).array()),
            colors=cat(lambda b: np.tile(b.color, (len(b.points), 1))))
