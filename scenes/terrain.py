"""Terrain: a passive soft walker dropped on one of the eight SoftZoo environments (--set env=...), optionally
on Perlin-noise terrain and with a mixed bed (--set pool=water: a pool set into the bed)."""
from dataclasses import dataclass
from typing import Annotated

from engine import backend
from engine.physics import ModelBuilder, environments, materials, terrain, viz
from engine.errors import ConfigError
from engine.physics.robot import add_walker
from engine.physics.viz import FRAME_TIME
from engine.scene import Choices, Range


@dataclass
class Config:
    env: Annotated[str, Choices(*environments.PRESETS)] = "ground"
    """Environment: ground|ice|desert|snow|clay|wetland|shallow_water|ocean."""
    dim: Annotated[int, Choices(2, 3)] = 2
    """Dimension: 2 or 3."""
    res: Annotated[int, Range(ge=16, le=512)] = 96
    """Grid nodes per axis (the domain is a 1 m cube)."""
    roughness: Annotated[float, Range(ge=0, le=0.2)] = 0.03
    """Perlin terrain amplitude [m] (0 = flat, as in every SoftZoo config)."""
    seed: Annotated[int, Range(ge=0, lt=2**31)] = 0
    """Terrain noise seed."""
    pool: Annotated[str, Choices("", *(m for m in materials.NAMES if m != "muscle"))] = ""
    """Mixed bed: material of a pool dug into the terrain and set into the bed (e.g. water; empty = none)."""
    pool_x: Annotated[tuple[float, float], Range(ge=0, le=1)] = (0.62, 0.9)
    """Pool extent along x as fractions of the domain width, "lo,hi"."""
    pool_depth: Annotated[float, Range(ge=0, le=0.3)] = 0.05
    """Depth of the pool's basin below the terrain [m]."""
    robot_E: Annotated[float, Range(gt=0)] = 3e4
    """Robot Young's modulus [Pa]."""
    frames: Annotated[int, Range(ge=0)] = 60
    """Frames of 1/60 s."""
    dt: Annotated[float, Range(gt=0, le=FRAME_TIME)] = 1e-4
    """Substep [s]."""
    image_width: Annotated[int, Range(ge=16, le=4096)] = 512
    """Video width [px]."""
    image_height: Annotated[int, Range(ge=16, le=4096)] = 512
    """Video height [px]."""

    def validate(self):
        if self.pool_x[0] >= self.pool_x[1]:
            raise ConfigError(f"pool_x={self.pool_x[0]:g},{self.pool_x[1]:g}: expected lo,hi with lo < hi")


class Scene(viz.MPMScene):
    def build(self):
        backend.ensure()
        c = self.cfg
        env = environments.get(c.env)
        dx = 1.0 / c.res
        res = (c.res,) * c.dim
        b = ModelBuilder(res=res, dx=dx, ppc=2)
        if c.pool:
            env = env.with_pool(c.pool, pool_x=tuple(c.pool_x), pool_depth=c.pool_depth)
        heights, _ = terrain.heightfield(res, dx, base=0.1, amplitude=c.roughness, seed=c.seed)
        heights, self.beds = environments.lay_bed(env, b, heights)
        normals = terrain.normals_of(heights, dx)
        top = float(heights.max()) + env.bed_thickness + 0.05
        origin = [0.4, top] + [0.4] * (c.dim - 2)
        self.robot = add_walker(b, origin, length=0.2, height=0.1, E=c.robot_E)
        self.model = b.finalize(boundary=env.boundary(), heights=heights, normals=normals, table=env.table)
        self.start(self.model)
        self.is_robot = (self.model.material == materials.MUSCLE).cpu().numpy()

    def metrics(self):
        x = self.state.x.detach().cpu().numpy()[self.is_robot]
        return {"robot_com_x": float(x[:, 0].mean()), "robot_com_y": float(x[:, 1].mean()),
                "robot_min_y": float(x[:, 1].min()), "particles": int(self.model.n)}

    def exports(self):
        """particles.ply (all, coloured); robot.glb: the walker's surface; surface.obj: the bed's (and pool's)
        surface when there is one. 2D scenes export their meshes extruded into a thin slab (``viz.surface_mesh``)."""
        out = {"particles.ply": viz.point_cloud(self.model, self.state),
               "robot.glb": viz.surface_mesh(self.model, self.state, self.is_robot)}
        if (~self.is_robot).any():
            out["surface.obj"] = viz.surface_mesh(self.model, self.state, ~self.is_robot)
        return out
