"""The co-design world: an environment preset (floor and terrain bed) plus the robot's candidate particles.

The robot is a box of lattice particles (muscle material); the design decides how much of each particle is robot,
how stiff it is, which muscle group drives it and along which fibre. Terrain particles (sand, snow, ...) are
passive and fixed. Robot particles come first in the model, so ``model.x0[:n_robot]`` are the robot's.

Environments are the physics' eight SoftZoo presets (``engine.physics.environments``): floor collider and
friction, bed material, thickness, density and plasticity table. One adaptation: a bed whose elastic wave speed
exceeds ``BED_SPEED_CAP`` times the robot's gets its modulus scaled down to that speed, so a single substep size
serves every environment (the stiff defaults, e.g. ice at 5e5 Pa, would need a ~5x smaller substep, and
co-design cost scales with the substep count).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine import backend
from engine.errors import ConfigError
from engine.physics import ModelBuilder, Solver, environments, terrain
from engine.physics.guards import wave_speed
from engine.physics.model import MATERIAL_DEFAULTS

from .designs import DesignFields, normalise_coords

__all__ = ["ENVIRONMENTS", "BED_SPEED_CAP", "DEPTH_FRACTION", "WorldSpec", "World", "bed_modulus", "grid_res"]

ENVIRONMENTS = tuple(environments.PRESETS)
"""Names of the environment presets: ground, ice, desert, snow, clay, wetland, shallow_water, ocean."""

BED_SPEED_CAP = 1.5
"""Largest bed wave speed, as a multiple of the robot's (see the module docstring)."""


def bed_modulus(env, robot_speed: float) -> tuple[float, float]:
    """(E [Pa], rho [kg/m^d]) of an environment's bed: the preset's values (or the material defaults), with E
    scaled down so the bed's wave speed is at most ``BED_SPEED_CAP · robot_speed``."""
    from engine.physics import materials

    E0, nu, rho0 = MATERIAL_DEFAULTS[env.bed]
    E = env.bed_E if env.bed_E is not None else E0
    rho = env.bed_rho if env.bed_rho is not None else rho0
    c = float(wave_speed([E], [nu], [rho], [materials.ids(env.bed)])[0])
    cap = BED_SPEED_CAP * robot_speed
    return (E * (cap / c) ** 2 if c > cap else E), rho


@dataclass
class WorldSpec:
    """Geometry and physics of a co-design world: a 1 m square in 2D; in 3D 1 m long and ``DEPTH_FRACTION`` of that
    high and deep (``grid_res``)."""

    env: str = "ground"
    """Environment preset: one of ENVIRONMENTS."""
    dim: int = 2
    """2 or 3."""
    res: int = 64
    """Grid nodes per axis; dx = 1/res m (a 1 m domain)."""
    ppc: int = 2
    """Particles per cell per axis on the rest lattice."""
    robot_size: tuple = (0.2, 0.1)
    """Robot bounding box (width, height[, depth]) [m]."""
    robot_x: float = 0.2
    """Left edge of the robot box [m]."""
    E: float = 1e4
    """Robot Young's modulus at full softness [Pa]."""
    nu: float = 0.3
    """Robot Poisson ratio."""
    rho: float = 1e3
    """Robot density at full occupancy [kg/m^d]."""
    gravity: float = 9.81
    """|g| [m/s²], pointing down (−y)."""
    body: str = ""
    """3D only: a closed mesh file (.obj, .stl, .ply, ...) voxelised into the robot's candidate particles, scaled to
    fit ``robot_size``; empty: the robot box."""

    def validate(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise ConfigError(f"unknown environment {self.env!r}; choose one of {', '.join(ENVIRONMENTS)}")
        if self.dim not in (2, 3):
            raise ConfigError(f"dim must be 2 or 3, got {self.dim}")
        if self.res < 16:
            raise ConfigError(f"res must be >= 16, got {self.res}")
        if len(self.robot_size) != self.dim:
            raise ConfigError(f"robot_size needs {self.dim} values, got {len(self.robot_size)}")
        if min(self.robot_size) <= 0 or self.E <= 0 or self.rho <= 0:
            raise ConfigError("robot_size, E and rho must be positive")
        if self.body:
            import os

            if self.dim != 3:
                raise ConfigError("body=PATH (a mesh) needs dim=3")
            if not os.path.isfile(self.body):
                raise ConfigError(f"body mesh {self.body!r} not found")


def mesh_points(path: str, lo, size, spacing: float) -> np.ndarray:
    """(M, 3) lattice points [m] inside a closed mesh, scaled uniformly to fit the box ``size`` with its corner at
    ``lo`` (bottom at ``lo``'s height, centred in x and z). Points of the lattice of ``spacing`` over the mesh's
    bounds are kept where ``trimesh``'s ray-parity test says they are inside."""
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh")
    except Exception as exc:  # noqa: BLE001 - trimesh raises many kinds on bad files
        raise ConfigError(f"cannot read body mesh {path!r}: {exc}") from exc
    if len(mesh.faces) == 0:
        raise ConfigError(f"body mesh {path!r} has no faces")
    if not mesh.is_watertight:
        raise ConfigError(f"body mesh {path!r} is not closed (watertight): its inside is undefined")
    size = np.asarray(size, float)
    mesh.apply_translation(-mesh.bounds[0])
    mesh.apply_scale(float(np.min(size / mesh.extents)))
    axes = [np.arange(spacing / 2, e, spacing) for e in mesh.extents]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    pts = grid[mesh.contains(grid)]
    if len(pts) == 0:
        raise ConfigError(f"body mesh {path!r} is thinner than one particle spacing ({spacing:.4f} m)")
    shift = np.asarray(lo, float).copy()
    shift[[0, 2]] += (size[[0, 2]] - mesh.extents[[0, 2]]) / 2
    return pts + shift


DEPTH_FRACTION = 0.5
"""3D: the domain's height and depth as a fraction of its length (1 m along x). The robot walks along x; half a
metre of height and depth holds the bed, the robot and its jumps, and a turning robot, with a quarter of the grid
nodes of a cube (and grid work, which dominates a small robot's substep)."""


def grid_res(spec: WorldSpec) -> tuple:
    """Grid nodes per axis: (res, res) in 2D; (res, h, h) with h = max(16, ceil(DEPTH_FRACTION·res)) in 3D."""
    if spec.dim == 2:
        return (spec.res, spec.res)
    h = max(16, -(-spec.res * int(DEPTH_FRACTION * 100) // 100))
    return (spec.res, h, h)


class World:
    """Builds the model once; ``material(fields)`` maps design fields to full per-particle tensors.

    Attributes:
        model: ``engine.physics.Model`` with every float tensor carrying a ``.grad`` buffer (Taichi keys kernels
            on which arguments need gradients, so one fixed pattern means one compile).
        solver: ``Solver`` on it.
        n_robot: robot particles (the first ``n_robot`` of the model).
        u0: (n_robot, d) robot rest positions normalised to [-1, 1]^d (what design representations read).
        vol: (n_robot,) particle volume [m^d].
    """

    def __init__(self, spec: WorldSpec, n_groups: int):
        spec.validate()
        backend.ensure()
        self.spec, self.n_groups = spec, n_groups
        env = environments.get(spec.env)
        d, dx = spec.dim, 1.0 / spec.res
        b = ModelBuilder(res=grid_res(spec), dx=dx, ppc=spec.ppc)
        heights, normals = terrain.heightfield(b.res, dx, base=b.bound * dx, bound=b.bound)
        top = float(heights.max()) + (env.bed_thickness if env.bed else 0.0)
        size = np.asarray(spec.robot_size, float)
        # 3D: the robot is centred across the (shallower) domain's depth
        lo = np.array([spec.robot_x, top + 0.5 * dx] + ([b.res[2] * dx / 2 - size[-1] / 2] if d == 3 else []))
        self.top = top  # the bed's top (the floor's height without a bed) [m]
        self.floor = float(heights.max())  # the terrain under the bed [m]
        # one muscle body whose group gives the model G actuation columns; the design overrides the weights
        pts = b.lattice(lo, lo + size) if not spec.body else mesh_points(spec.body, lo, size, dx / spec.ppc)
        self.box = (lo, lo + size) if not spec.body else (pts.min(0) - 0.5 * dx / spec.ppc,
                                                          pts.max(0) + 0.5 * dx / spec.ppc)
        b.add_points(pts, material="muscle", E=spec.E, nu=spec.nu, rho=spec.rho, group=n_groups - 1,
                     color=(0.9, 0.45, 0.3))
        if env.bed:
            robot_c = float(wave_speed([spec.E], [spec.nu], [spec.rho], [0])[0])
            E_bed, rho_bed = bed_modulus(env, robot_c)
            terrain.add_bed(b, heights, env.bed_thickness, material=env.bed, E=E_bed, rho=rho_bed,
                            color=env.color)
        g = (0.0, -spec.gravity) + (0.0,) * (d - 2)
        model = b.finalize(gravity=g, boundary=env.boundary(), heights=heights, normals=normals, table=env.table)
        self.n_robot = len(b.bodies[0].points)
        self.model = model.with_params(**{k: _with_grad(getattr(model, k)) for k in _FLOAT_FIELDS})
        self.solver = Solver(self.model)
        self.u0 = normalise_coords(self.model.x0[:self.n_robot].detach(), *self.box)
        self.vol = self.model.vol[:self.n_robot].detach()

    @property
    def dtype(self):
        return self.model.x0.dtype

    @property
    def x0_robot(self) -> torch.Tensor:
        return self.model.x0[:self.n_robot].detach()

    def material(self, fields: DesignFields):
        """Full per-particle (E (N,), rho (N,), muscle (N, G), fibre (N, d)) with the robot rows from ``fields``
        (differentiable) and the terrain rows fixed."""
        m, n = self.model, self.n_robot
        E_r, rho_r = fields.material(self.spec.E, self.spec.rho)
        rest = slice(n, None)
        E = torch.cat([E_r, m.E[rest].detach()])
        rho = torch.cat([rho_r, m.rho[rest].detach()])
        muscle = torch.cat([fields.muscle, m.muscle[rest].detach() * 0])
        fibre = torch.cat([fields.fibre, m.fibre[rest].detach()])
        return E, rho, muscle, fibre

    def robot_mass(self, fields: DesignFields) -> torch.Tensor:
        """(n_robot,) particle masses [kg] (2D: kg per metre of depth)."""
        return self.vol * fields.material(self.spec.E, self.spec.rho)[1]

    def dt_limit(self) -> float:
        """Recommended substep [s] from the stiffest particle's wave speed (see engine.physics.guards)."""
        from engine.physics import guards

        return guards.dt_limit(self.model)[0]


_FLOAT_FIELDS = ("x0", "v0", "vol", "rho", "E", "nu", "fibre", "muscle", "heights", "normals", "table")


def _with_grad(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone().contiguous()
    if t.is_floating_point():
        t.requires_grad_(True)
        t.grad = torch.zeros_like(t)
    return t
