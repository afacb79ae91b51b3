"""Sand column collapse (2D plane strain): Drucker–Prager sand released against a wall; measures the runout."""
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from engine import backend
from engine.physics import Boundary, ModelBuilder, materials, viz
from engine.physics.viz import FRAME_TIME
from engine.scene import Range


@dataclass
class Config:
    aspect: Annotated[float, Range(gt=0, le=20)] = 1.0
    """Column aspect ratio a = H0 / L0."""
    width: Annotated[float, Range(gt=0, le=10)] = 0.08
    """Initial column width L0 [m]."""
    friction_deg: Annotated[float, Range(gt=0, lt=90)] = 33.0
    """Sand internal friction angle φ [degrees] (experiments: about 30–35° for dry sand)."""
    E: Annotated[float, Range(gt=0)] = 1e5
    """Sand Young's modulus [Pa] (only needs to be stiff compared with ρ·g·H0)."""
    cells_per_width: Annotated[int, Range(ge=2, le=400)] = 20
    """Grid cells across the initial width (resolution); 2x2 particles per cell."""
    frames: Annotated[int, Range(ge=0)] = 45
    """Frames of 1/60 s (the collapse settles in about 0.5 s)."""
    dt: Annotated[float, Range(gt=0, le=FRAME_TIME)] = 2e-4
    """Substep [s] (the solver warns above its CFL limit)."""
    image_width: Annotated[int, Range(ge=16, le=4096)] = 640
    """Video width [px]."""
    image_height: Annotated[int, Range(ge=16, le=4096)] = 320
    """Video height [px]."""


class Scene(viz.MPMScene):
    def build(self):
        backend.ensure()
        c = self.cfg
        dx = c.width / c.cells_per_width
        H0 = c.aspect * c.width
        # runout grows roughly like 2·a·L0 at most: leave room for it plus the wall bands
        nx = int(np.ceil((c.width * (3.0 + 2.5 * c.aspect)) / dx)) + 8
        ny = int(np.ceil(H0 * 1.15 / dx)) + 8
        b = ModelBuilder(res=(nx, ny), dx=dx, ppc=2)
        x0 = 3 * dx
        b.add_box((x0, x0), (x0 + c.width, x0 + H0), material="sand", E=c.E, nu=0.3, rho=1600.0,
                  color=(0.85, 0.7, 0.4))
        self.model = b.finalize(boundary=Boundary(floor="sticky", walls="slip"),
                                table=materials.MaterialTable(sand_friction_deg=c.friction_deg))
        self.start(self.model)
        self.x_wall, self.floor, self.H0 = x0, x0, H0

    def references(self):
        """Where the deposit's front should end: ΔL/L0 between Lube et al. 2005 (1.2·a; 1.9·a^(2/3) above
        a = 1.7) and Lajeunesse et al. 2005 (1.6·a; 2.2·a^(2/3) above a = 3)."""
        a, L0 = self.cfg.aspect, self.cfg.width
        lube = 1.2 * a if a < 1.7 else 1.9 * a ** (2 / 3)
        laj = 1.6 * a if a < 3 else 2.2 * a ** (2 / 3)
        lo, hi = sorted((lube, laj))
        return [{"band": (self.x_wall + L0 * (1 + lo), self.x_wall + L0 * (1 + hi)), "y": self.floor,
                 "label": f"red band: final runout in experiments (ΔL/L0 = {lo:.2g}–{hi:.2g})"}]

    def metrics(self):
        x = self.state.x.detach().cpu().numpy()
        # the front: the 99.5th percentile of x, so one stray grain does not define it
        L_inf = float(np.percentile(x[:, 0], 99.5)) - self.x_wall
        height = float(np.percentile(x[:, 1], 99.5)) - self.floor
        e = self.solver.energy(self.state)
        return {"aspect": self.cfg.aspect, "runout_ratio": (L_inf - self.cfg.width) / self.cfg.width,
                "final_height_ratio": height / self.H0, "kinetic_energy": e["kinetic"]}

    def exports(self):
        return {"particles.ply": viz.point_cloud(self.model, self.state)}
