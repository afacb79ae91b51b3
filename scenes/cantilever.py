"""Elastic cantilever under its own weight (2D plane strain), compared with Euler–Bernoulli beam theory."""
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from engine import backend
from engine.errors import ConfigError
from engine.physics import Boundary, ModelBuilder, viz
from engine.physics.viz import FRAME_TIME
from engine.scene import Choices, Range


@dataclass
class Config:
    length: Annotated[float, Range(gt=0, le=10)] = 0.4
    """Free beam length L [m] (from the clamp face to the tip)."""
    thickness: Annotated[float, Range(gt=0, le=1)] = 0.05
    """Beam thickness h [m]."""
    E: Annotated[float, Range(gt=0)] = 7e6
    """Young's modulus [Pa]; with the defaults the Euler–Bernoulli deflection is about 5% of L."""
    nu: Annotated[float, Range(ge=0, lt=0.5)] = 0.3
    """Poisson ratio (plane strain: E' = E / (1 − ν²))."""
    rho: Annotated[float, Range(gt=0)] = 1000.0
    """Density [kg/m²·m]."""
    material: Annotated[str, Choices("elastic", "corotated")] = "elastic"
    """elastic (neo-Hookean) or corotated."""
    cells_per_thickness: Annotated[int, Range(ge=1, le=64)] = 4
    """Grid cells across h (2x2 particles per cell)."""
    frames: Annotated[int, Range(ge=0)] = 30
    """Frames of 1/60 s; the static deflection is the midpoint of the tip's oscillation, so run at least one
    period of the first mode (about 0.23 s with the defaults)."""
    dt: Annotated[float, Range(gt=0, le=FRAME_TIME)] = 6e-5
    """Substep [s]."""
    image_width: Annotated[int, Range(ge=16, le=4096)] = 640
    """Video width [px]."""
    image_height: Annotated[int, Range(ge=16, le=4096)] = 320
    """Video height [px]."""

    def validate(self):
        if self.thickness >= self.length:
            raise ConfigError(f"thickness={self.thickness:g} must be smaller than length={self.length:g} (a beam)")


class Scene(viz.MPMScene):
    def build(self):
        backend.ensure()
        c = self.cfg
        dx = c.thickness / c.cells_per_thickness
        root = 4 * dx
        nx = int(np.ceil((c.length + root) / dx)) + 10
        ny = int(np.ceil(0.25 * c.length / dx + 4 * c.cells_per_thickness)) + 8
        b = ModelBuilder(res=(nx, ny), dx=dx, ppc=2)
        x_face = 3 * dx + root
        y0 = (ny - 4 - c.cells_per_thickness) * dx - 0.02 * c.length
        b.add_box((3 * dx, y0), (x_face + c.length, y0 + c.thickness), material=c.material, E=c.E, nu=c.nu,
                  rho=c.rho, color=(0.3, 0.6, 0.9))
        # clamp: hold every node up to the clamp face (nodes at the face included)
        clamp = ((0.0, 0.0), (x_face + 1e-9, ny * dx))
        self.model = b.finalize(boundary=Boundary(floor="sticky", walls="slip", clamp=clamp))
        self.start(self.model)
        x = self.model.x0.cpu().numpy()
        self.x_face, self.y_mid = x_face, y0 + c.thickness / 2  # the clamp face and the beam's rest centreline
        self.tip = x[:, 0] > x_face + c.length - dx / 2
        self.y_tip0 = float(x[self.tip, 1].mean())
        self.history = [0.0]

    def step(self, frame: int):
        for _ in range(self.substeps):  # one at a time: the tip history samples every substep
            self.solver.advance(self.state, 1, self.substep_dt)
            self.history.append(self.y_tip0 - float(self.state.x[self.tip, 1].mean()))

    def euler_bernoulli(self) -> float:
        """δ = q·L⁴ / (8·E'·I) with q = ρ·g·h, I = h³/12 per unit width, E' = E / (1 − ν²)."""
        c = self.cfg
        E_plane = c.E / (1 - c.nu ** 2)
        return c.rho * 9.81 * c.thickness * c.length ** 4 / (8 * E_plane * c.thickness ** 3 / 12)

    def references(self):
        """The Euler–Bernoulli static centreline w(s) = q·s²·(6L² − 4L·s + s²) / (24·E'·I), s from the clamp."""
        c = self.cfg
        s = np.linspace(0.0, c.length, 40)
        w = self.euler_bernoulli() * s ** 2 * (6 * c.length ** 2 - 4 * c.length * s + s ** 2) / (3 * c.length ** 4)
        return [{"polyline": np.stack([self.x_face + s, self.y_mid - w], 1),
                 "label": "red dashes: Euler–Bernoulli static deflection (the beam oscillates about it)"},
                {"x": self.x_face, "label": "red line at left: clamp face"}]

    def metrics(self):
        h = np.asarray(self.history)
        tip = 0.5 * (h.max() + h.min())  # midpoint of the undamped oscillation = static deflection
        eb = self.euler_bernoulli()
        return {"tip_deflection": float(tip), "euler_bernoulli": float(eb),
                "relative_error": float(abs(tip - eb) / eb), "deflection_over_length": float(eb / self.cfg.length)}

    def exports(self):
        return {"particles.ply": viz.point_cloud(self.model, self.state)}
