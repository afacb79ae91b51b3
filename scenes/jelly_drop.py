"""Jelly drop: an elastic block falls on a sticky floor and bounces (MLS-MPM, 2D or 3D)."""
from dataclasses import dataclass
from typing import Annotated

from engine import backend
from engine.physics import Boundary, ModelBuilder, viz
from engine.physics.viz import FRAME_TIME
from engine.scene import Choices, Range


@dataclass
class Config:
    dim: Annotated[int, Choices(2, 3)] = 2
    """Dimension: 2 or 3."""
    res: Annotated[int, Range(ge=16, le=1024)] = 64
    """Grid nodes per axis (the domain is a 1 m cube)."""
    material: Annotated[str, Choices("elastic", "corotated")] = "elastic"
    """Jelly material: elastic (neo-Hookean) or corotated (fixed-corotated)."""
    E: Annotated[float, Range(gt=0)] = 2e4
    """Young's modulus [Pa]."""
    nu: Annotated[float, Range(ge=0, lt=0.5)] = 0.3
    """Poisson ratio."""
    drop_height: Annotated[float, Range(ge=0, lt=0.6)] = 0.4
    """Height of the block's bottom above the floor [m]."""
    frames: Annotated[int, Range(ge=0)] = 60
    """Frames to simulate (1/60 s each)."""
    dt: Annotated[float, Range(gt=0, le=FRAME_TIME)] = 2e-4
    """Substep [s]; 1/60 s per frame is split into as many substeps as fit."""
    image_width: Annotated[int, Range(ge=16, le=4096)] = 512
    """Video width [px]."""
    image_height: Annotated[int, Range(ge=16, le=4096)] = 512
    """Video height [px]."""


class Scene(viz.MPMScene):
    def build(self):
        backend.ensure()
        c = self.cfg
        dx = 1.0 / c.res
        b = ModelBuilder(res=(c.res,) * c.dim, dx=dx, ppc=2)
        lo = [0.35, 3 * dx + c.drop_height] + [0.35] * (c.dim - 2)
        hi = [0.65, lo[1] + 0.2] + [0.65] * (c.dim - 2)
        # centred: the block is symmetric about x = 0.5 (and z = 0.5), a lattice plane of the grid, so it cannot
        # drift sideways (flush with lo, the leftover of 0.3 m / spacing put it up to half a spacing off centre)
        b.add_box(lo, hi, centred=True, material=c.material, E=c.E, nu=c.nu, color=(0.95, 0.35, 0.45))
        # walls and ceiling only push (separate): at low res the block starts within a stencil of the ceiling's
        # wall band, and a slip ceiling (normal velocity removed both ways) held its top layer up there
        self.model = b.finalize(boundary=Boundary(floor="sticky", walls="separate"))
        self.start(self.model)
        self.top0 = float(self.state.x[:, 1].max())

    def view_focus(self):
        """A 3D video frames the jelly's footprint widened by half its size on each side (it lands in place)."""
        xz = self.model.x0.detach().cpu().numpy()[:, [0, 2]]
        lo, hi = xz.min(0), xz.max(0)
        return tuple(lo - 0.5 * (hi - lo)), tuple(hi + 0.5 * (hi - lo))

    def metrics(self):
        x = self.state.x.detach()
        e = self.solver.energy(self.state)
        return {"com_height": float(x[:, 1].mean()), "min_height": float(x[:, 1].min()),
                "kinetic_energy": e["kinetic"], "potential_energy": e["potential"], "mass": e["mass"]}

    def exports(self):
        """particles.ply; the jelly's surface as surface.obj and surface.glb (a 2D jelly is extruded into a thin
        slab, ``viz.surface_mesh``)."""
        mesh = viz.surface_mesh(self.model, self.state)
        return {"particles.ply": viz.point_cloud(self.model, self.state), "surface.obj": mesh, "surface.glb": mesh}
