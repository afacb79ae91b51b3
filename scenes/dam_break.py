"""Dam break: a water column collapses along a dry floor; the front is compared with Ritter's 2·√(g·h0)."""
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from engine import backend
from engine.physics import Boundary, ModelBuilder, viz
from engine.physics.viz import FRAME_TIME
from engine.scene import Choices, Range


@dataclass
class Config:
    dim: Annotated[int, Choices(2, 3)] = 2
    """Dimension: 2 or 3."""
    res: Annotated[int, Range(ge=32, le=1024)] = 96
    """Grid nodes along x (the domain is 1 m long, 0.5 m high[, 0.25 m deep])."""
    column_width: Annotated[float, Range(gt=0, lt=0.9)] = 0.25
    """Initial water column width [m]."""
    column_height: Annotated[float, Range(gt=0, lt=0.45)] = 0.3
    """Initial water column height h0 [m]."""
    bulk_modulus: Annotated[float, Range(gt=0)] = 2e5
    """Water bulk modulus K [Pa] (weakly compressible; sound speed √(K/ρ))."""
    frames: Annotated[int, Range(ge=0)] = 40
    """Frames of 1/60 s."""
    dt: Annotated[float, Range(gt=0, le=FRAME_TIME)] = 1e-4
    """Substep [s]."""
    image_width: Annotated[int, Range(ge=16, le=4096)] = 640
    """Video width [px]."""
    image_height: Annotated[int, Range(ge=16, le=4096)] = 320
    """Video height [px]."""


class Scene(viz.MPMScene):
    def build(self):
        backend.ensure()
        c = self.cfg
        dx = 1.0 / c.res
        res = (c.res, c.res // 2) + ((c.res // 4,) if c.dim == 3 else ())
        b = ModelBuilder(res=res, dx=dx, ppc=2)
        lo = [3 * dx] * c.dim
        hi = [lo[0] + c.column_width, lo[1] + c.column_height] + [(r - 3) * dx for r in res[2:]]
        b.add_box(lo, hi, material="water", E=c.bulk_modulus, rho=1000.0, color=(0.25, 0.5, 0.95))
        self.model = b.finalize(boundary=Boundary(floor="slip", walls="slip"))
        self.start(self.model)
        self.x_wall = lo[0]
        self.fronts = [(0.0, c.column_width)]

    def step(self, frame: int):
        super().step(frame)
        front = float(np.percentile(self.state.x[:, 0].cpu().numpy(), 99.5)) - self.x_wall
        self.fronts.append(((frame + 1) * viz.FRAME_TIME, front))

    def references(self):
        """Ritter's dry-bed front x = x_dam + 2·√(g·h0)·t, drawn as a dashed line that moves with the video."""
        x = self.x_wall + self.cfg.column_width + 2 * np.sqrt(9.81 * self.cfg.column_height) * self.time
        return [{"x": x, "label": "red dashes: Ritter's front, dam + 2·√(g·h0)·t"}]

    def metrics(self):
        t, L = np.asarray(self.fronts).T
        ritter = 2 * np.sqrt(9.81 * self.cfg.column_height)
        # front speed over the early surge, while the front is within 2.5 column widths of the wall
        sel = L < 2.5 * self.cfg.column_width
        speed = float(np.polyfit(t[sel][-6:], L[sel][-6:], 1)[0]) if sel.sum() >= 6 else float("nan")
        return {"front": float(L[-1]), "front_speed": speed, "ritter_speed": float(ritter),
                "speed_over_ritter": float(speed / ritter)}

    def exports(self):
        return {"particles.ply": viz.point_cloud(self.model, self.state)}
