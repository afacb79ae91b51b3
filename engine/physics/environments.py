"""The eight SoftZoo environments as named presets: floor collider, terrain bed material and its parameters.

Values follow SoftZoo's configs (shared/references/softzoo.md) where they are physical; the bed stiffnesses are
set so that the default substep of the terrain scene stays under the CFL limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import terrain
from .materials import MaterialTable
from .model import Boundary

__all__ = ["Environment", "PRESETS", "get", "lay_bed"]


@dataclass(frozen=True)
class Environment:
    """A terrain preset: which matter lies on the heightfield and how the floor grips."""

    name: str
    floor: str = "separate"
    """Floor collider kind: sticky|slip|separate."""
    friction: float = 0.5
    """Floor Coulomb friction."""
    bed: str | None = None
    """Bed material name (None: bare ground)."""
    bed_thickness: float = 0.0
    """Bed thickness as a fraction of the domain height."""
    bed_E: float | None = None
    """Bed Young's/bulk modulus [Pa] (None: the material default)."""
    bed_rho: float | None = None
    """Bed density [kg/m^d]."""
    color: tuple = (0.6, 0.6, 0.6)
    """Bed particle colour."""
    table: MaterialTable = field(default_factory=MaterialTable)
    """Plasticity constants for the bed."""
    pool: str | None = None
    """Mixed bed: material of a pool set into the bed (e.g. water in the desert); None for a uniform bed."""
    pool_x: tuple = (0.62, 0.9)
    """Pool extent along x, as fractions of the domain width."""
    pool_depth: float = 0.05
    """Depth of the basin dug into the terrain under the pool, as a fraction of the domain height; the pool fills
    it up to the bed's top."""
    pool_E: float | None = None
    """Pool Young's/bulk modulus [Pa] (None: the material default)."""
    pool_rho: float | None = None
    """Pool density [kg/m^d]."""
    pool_color: tuple = (0.25, 0.45, 0.95)
    """Pool particle colour."""

    def with_pool(self, material: str, **pool_fields) -> "Environment":
        """This preset with a pool of ``material``; keyword arguments set other fields (``pool_x=(0.5, 0.8)``)."""
        return replace(self, pool=material, **pool_fields)

    def boundary(self) -> Boundary:
        return Boundary(floor=self.floor, floor_friction=self.friction, walls="slip")


PRESETS = {
    "ground": Environment("ground", friction=0.5),
    "ice": Environment("ice", floor="slip", friction=0.05, bed="ice", bed_thickness=0.03, color=(0.75, 0.9, 1.0)),
    "desert": Environment("desert", bed="sand", bed_thickness=0.08, color=(0.9, 0.75, 0.45),
                          table=MaterialTable(sand_friction_deg=45.0)),
    "snow": Environment("snow", bed="snow", bed_thickness=0.08, color=(0.95, 0.95, 1.0),
                        table=MaterialTable(snow_hardening=1.0, snow_jp_min=0.9)),
    "clay": Environment("clay", bed="clay", bed_thickness=0.08, color=(0.7, 0.45, 0.35),
                        table=MaterialTable(clay_yield=200.0)),
    "wetland": Environment("wetland", bed="mud", bed_thickness=0.08, color=(0.45, 0.35, 0.25)),
    "shallow_water": Environment("shallow_water", bed="water", bed_thickness=0.05, bed_rho=1e2,
                                 bed_E=2e4, color=(0.3, 0.5, 0.95)),
    "ocean": Environment("ocean", floor="slip", friction=0.0, bed="water", bed_thickness=0.1,
                         color=(0.2, 0.4, 0.9)),
}
"""The eight SoftZoo presets. Mixed beds: ``get("desert").with_pool("water")`` (``--set pool=water`` in the
terrain scene)."""


def get(name: str) -> Environment:
    """The preset called ``name``; raises ValueError listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; choose one of {', '.join(PRESETS)}") from None


def lay_bed(env: Environment, builder, heights) -> tuple[np.ndarray, dict]:
    """Lay ``env``'s bed (and pool) over the terrain ``heights`` in ``builder``.

    A pool digs a basin of ``pool_depth`` into the terrain over ``pool_x`` (smooth walls, a quarter of its width
    each), fills it with ``pool`` material up to the bed's top, and lays the bed around it.
    Returns (heights with the basin, {"bed": body index or None, "pool": body index or None}).
    """
    extent = builder.res[0] * builder.dx
    height = builder.res[1] * builder.dx
    thick = env.bed_thickness * height
    h = np.asarray(heights, dtype=float)
    bodies = {"bed": None, "pool": None}
    bed = dict(material=env.bed, E=env.bed_E, rho=env.bed_rho, color=env.color)
    if env.pool is None:
        if env.bed:
            bodies["bed"] = terrain.add_bed(builder, h, thick, **bed)
        return h, bodies
    lo, hi = (f * extent for f in env.pool_x)
    top = h + thick  # the pool's surface follows the bed's top
    h = terrain.basin(h, builder.dx, (lo, hi), env.pool_depth * height, bound=builder.bound)
    if env.bed:
        ids = [terrain.add_bed(builder, h, thick, x_range=r, **bed) for r in ((0.0, lo), (hi, extent))]
        bodies["bed"] = [i for i in ids if i is not None]
    bodies["pool"] = terrain.add_bed(builder, h, None, material=env.pool, x_range=(lo, hi), E=env.pool_E,
                                     rho=env.pool_rho, color=env.pool_color, top=top)
    return h, bodies
