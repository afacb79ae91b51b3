"""The eight SoftZoo environments as named presets: floor collider, terrain bed material and its parameters.

Values follow SoftZoo's configs (shared/references/softzoo.md) where they are physical; the bed stiffnesses are
set so that the default substep of the terrain scene stays under the CFL limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .materials import MaterialTable
from .model import Boundary

__all__ = ["Environment", "PRESETS", "get"]


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


def get(name: str) -> Environment:
    """The preset called ``name``; raises ValueError listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown environment {name!r}; choose one of {', '.join(PRESETS)}") from None
