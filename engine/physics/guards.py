"""Stability guards: the time-step limit from the elastic wave speed, and messages that say what went wrong.

Explicit MPM is stable while an elastic wave crosses less than about one cell per substep: dt ≤ cfl·dx/c with
the P-wave speed c = √((λ + 2μ)/ρ) (water: √(K/ρ)). The threshold was measured on a neo-Hookean block dropped on
a sticky floor (2D, E = 2e4 Pa, 0.6 s): stable at dt = 0.9·dx/c, blown up within 150 substeps at 1.0·dx/c. The
solver warns above ``CFL·dx/c`` (a safety factor of about 2) and refuses above ``REFUSE·dx/c``, where a blow-up
is certain (tests/physics/test_guards.py).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import ConfigError, SimulationError
from . import materials

__all__ = ["CFL", "REFUSE", "wave_speed", "dt_limit", "check_dt", "raise_blowup", "StabilityWarning"]

CFL = 0.5
REFUSE = 2.0


class StabilityWarning(UserWarning):
    """dt is above the recommended CFL limit but below the refusal threshold."""


def wave_speed(E, nu, rho, material) -> np.ndarray:
    """P-wave speed [m/s] per particle (numpy arrays in, numpy out)."""
    E, nu, rho = (np.asarray(a, dtype=float) for a in (E, nu, rho))
    mu, la = materials.lame(E, nu)
    c = np.sqrt((la + 2 * mu) / rho)
    water = np.asarray(material) == materials.WATER
    return np.where(water, np.sqrt(E / rho), c)


def dt_limit(model) -> tuple[float, float, float]:
    """(dt_max, E, c): the recommended substep limit CFL·dx/c for the stiffest particle, its E and wave speed."""
    mat = model.material.cpu().numpy()
    E = model.E.detach().cpu().numpy()
    c = wave_speed(E, model.nu.detach().cpu().numpy(), model.rho.detach().cpu().numpy(), mat)
    i = int(np.argmax(c))
    return CFL * model.dx / float(c[i]), float(E[i]), float(c[i])


def check_dt(model, dt: float) -> float:
    """Warn (``StabilityWarning``) when dt > CFL·dx/c, raise ``ConfigError`` when dt > REFUSE·dx/c.
    Returns the recommended limit."""
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive time step [s], got {dt}")
    lim, E, c = dt_limit(model)
    if dt > lim * REFUSE / CFL:
        raise ConfigError(f"dt={dt:g} s is far above the CFL limit for E={E:g} Pa (wave speed {c:.3g} m/s, "
                          f"dx={model.dx:g} m): try dt ≤ {lim:.3g}")
    if dt > lim:
        warnings.warn(f"dt={dt:g} s is above the recommended CFL limit {lim:.3g} s for E={E:g} Pa "
                      f"(wave speed {c:.3g} m/s); the simulation may blow up", StabilityWarning, stacklevel=3)
    return lim


def raise_blowup(model, flag, dt: float, state, substep_range) -> None:
    """Raise ``SimulationError`` for a failed check; ``flag`` = (first bad substep, non-finite?, outside?)."""
    first, nonfinite, outside = (int(f) for f in flag)
    lim, E, c = dt_limit(model)
    what = "a NaN/Inf appeared" if nonfinite else "a particle left the domain"
    if dt > lim:
        cause = (f"dt={dt:g} s is above the CFL limit for E={E:g} Pa (wave speed {c:.3g} m/s): try dt ≤ {lim:.3g}")
    else:
        v = state.v.detach()
        finite = v[torch.isfinite(v).all(dim=1)]
        vmax = float(finite.norm(dim=1).max()) if len(finite) else float("nan")
        if vmax * dt > 0.5 * model.dx:
            cause = (f"particles move {vmax:.3g} m/s, more than half a cell (dx={model.dx:g} m) per substep: "
                     f"reduce dt below {0.5 * model.dx / max(vmax, 1e-12):.3g} or the initial velocities")
        elif nonfinite:
            cause = ("an element inverted or a material parameter is invalid (ν must be < 0.5, E and ρ > 0); "
                     "a smaller dt or a corotated material may help")
        else:
            cause = "bodies pushed through the walls: enlarge the domain or slow the bodies"
    raise SimulationError(f"simulation blew up at substep {first} (checked substeps {substep_range[0]}–"
                          f"{substep_range[1]}): {what}; likely cause: {cause}")

