"""Soft-robot co-design: body and muscles optimised together through the MPM simulation (SoftZoo-style)."""
import copy
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch

from engine import backend
from engine.errors import ConfigError
from tasks.codesign import (ALGORITHMS, CMAES, ENVIRONMENTS, Diffsim, Population, Problem, ProblemSpec,
                            RandomSearch, WorldSpec, check_budget)
from engine.scene import Choices, Range
from tasks.codesign import CONTROLLERS, REPRESENTATIONS, TASKS
from tasks.codesign.rollout import Stepper

# muscle-group colours (soft assignments blend them)
PALETTE = np.array([[0.90, 0.30, 0.25], [0.20, 0.55, 0.90], [0.95, 0.75, 0.15], [0.35, 0.75, 0.35],
                    [0.65, 0.35, 0.80], [0.95, 0.50, 0.70], [0.30, 0.80, 0.80], [0.55, 0.45, 0.30]])
TERRAIN = np.array([0.72, 0.68, 0.58])
# 3D floor colour per environment (bed colours as in engine.physics.environments)
ENV_COLOURS = {"ground": (0.78, 0.76, 0.72), "ice": (0.80, 0.90, 1.0), "desert": (0.90, 0.75, 0.45),
               "snow": (0.95, 0.95, 1.0), "clay": (0.70, 0.45, 0.35), "wetland": (0.45, 0.35, 0.25),
               "shallow_water": (0.45, 0.6, 0.95), "ocean": (0.35, 0.5, 0.9)}


@dataclass
class Config:
    env: Annotated[str, Choices(*ENVIRONMENTS)] = "ground"
    """Environment preset: ground, ice, desert, snow, clay, wetland, shallow_water or ocean."""
    dim: Annotated[int, Choices(2, 3)] = 2
    """2 (default, seconds on 2 CPU cores) or 3 (minutes: a 5,684-particle body on a 48x24x24 grid)."""
    res: Annotated[int, Range(ge=16, le=256)] = 48
    """Grid nodes per axis over the 1 m domain (3D: half as many across its height and depth)."""
    ppc: Annotated[int, Range(ge=0, le=4)] = 0
    """Particles per cell per axis (0: 2 in 2D, 3 in 3D)."""
    representation: Annotated[str, Choices(*REPRESENTATIONS)] = "sdf_basis"
    """Design space: particle, voxel, implicit or sdf_basis."""
    controller: Annotated[str, Choices(*CONTROLLERS)] = "sine"
    """Controller: sine (open loop), pure_sine or mlp (closed loop)."""
    task: Annotated[str, Choices(*TASKS)] = "locomotion"
    """Task: locomotion (distance along +x), turning, waypoints or velocity."""
    optimiser: Annotated[str, Choices(*ALGORITHMS)] = "diffsim"
    """diffsim (Adam on simulation gradients), cmaes or random (gradient-free, populations on Ray)."""
    optimise: Annotated[str, Choices("both", "control", "design")] = "both"
    """Parameters trained: both (co-design), control or design."""
    iterations: Annotated[int, Range(ge=0)] = 20
    """Optimiser iterations (generations for cmaes/random)."""
    lr: Annotated[float, Range(gt=0)] = 0.05
    """Adam learning rate (diffsim)."""
    popsize: Annotated[int, Range(ge=1)] = 8
    """Population per generation (cmaes/random)."""
    sigma: Annotated[float, Range(gt=0)] = 0.3
    """Initial step size (cmaes) / perturbation scale (random)."""
    workers: Annotated[int, Range(ge=0, le=256)] = 2
    """Ray workers for gradient-free populations (0: evaluate in this process)."""
    ray_address: str = ""
    """Ray cluster to join (empty: an embedded local instance)."""
    body: str = ""
    """3D: a closed mesh file (.obj/.stl/.ply) voxelised into the body's candidate particles, scaled to the robot
    box; the design space then assigns occupancy and muscles over it. Empty: the robot box."""
    n_groups: Annotated[int, Range(ge=1, le=64)] = 4
    """Muscle groups."""
    steps: Annotated[int, Range(ge=1)] = 50
    """Control steps per training episode."""
    substeps: Annotated[int, Range(ge=0)] = 0
    """MPM substeps per control step (0: 10 in 2D, 5 in 3D)."""
    dt: Annotated[float, Range(ge=0, le=0.01)] = 0.0
    """MPM substep [s] (0: 1 ms in 2D, 2 ms in 3D; a control step is 10 ms in both)."""
    robot_width: Annotated[float, Range(gt=0, lt=0.9)] = 0.2
    """Robot bounding-box width [m]."""
    robot_height: Annotated[float, Range(gt=0, lt=0.9)] = 0.1
    """Robot bounding-box height [m]."""
    seed: Annotated[int, Range(ge=0, lt=2**31)] = 0
    """Seed of the initial design and controller."""
    frames: Annotated[int, Range(ge=0)] = 100
    """Video: control steps shown for the initial robot, then as many for the optimised one (--frames sets it)."""
    width: Annotated[int, Range(ge=16, le=4096)] = 640
    """Video width [px]."""
    height: Annotated[int, Range(ge=16, le=4096)] = 240
    """Video height [px]."""

    def spec(self) -> ProblemSpec:
        size = (self.robot_width, self.robot_height) + ((self.robot_height,) if self.dim == 3 else ())
        ppc = self.ppc or (3 if self.dim == 3 else 2)
        substeps = self.substeps or (5 if self.dim == 3 else 10)
        dt = self.dt or (2e-3 if self.dim == 3 else 1e-3)
        return ProblemSpec(world=WorldSpec(env=self.env, dim=self.dim, res=self.res, ppc=ppc, robot_size=size,
                                           body=self.body),
                           representation=self.representation, controller=self.controller, task=self.task,
                           n_groups=self.n_groups, steps=self.steps, substeps=substeps, dt=dt,
                           optimise=self.optimise, seed=self.seed)

    def validate(self) -> None:
        check_budget(self.iterations, self.popsize)
        self.spec().validate()  # the task package's own checks (robot_size against dim, ...)


def default_precision(config: Config) -> str:
    """What ``tide run`` uses without --precision: f64 in 3D (SoftZoo's precision; its gradient kernels compile in
    about 40 s cold here, against over 2 min in f32, where Taichi's advanced optimisation must stay on for correct
    reverse-mode kernels), f32 in 2D."""
    return "f64" if config.dim == 3 else "f32"


def design_mesh(points: np.ndarray, spacing: float):
    """Surface mesh of lattice particles (N, 3) [m] with lattice ``spacing`` [m]: occupancy voxels, a Gaussian
    blur, marching cubes (scikit-image) at half density.

    Not ``engine.fields.mesh.particles_to_mesh``: that compiles Taichi kernels on first use, and cold in f32
    (advanced optimisation on) the compile took about 2.5 min here, longer than the whole co-design run.
    """
    import trimesh
    from scipy.ndimage import gaussian_filter
    from skimage.measure import marching_cubes

    pad = 3
    origin = points.min(0) - pad * spacing
    idx = np.round((points - origin) / spacing).astype(int)
    grid = np.zeros(idx.max(0) + pad + 1)
    grid[tuple(idx.T)] = 1.0
    grid = gaussian_filter(grid, sigma=0.8)
    verts, faces, _, _ = marching_cubes(grid, level=0.5, spacing=(spacing,) * 3)
    return trimesh.Trimesh(verts + origin, faces)


def _finite(v):
    """JSON has no infinity: a robot that did not move forward has no cost of transport (None)."""
    return float(v) if np.isfinite(v) else None


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    # ------------------------------------------------------------------------------------------------ set-up
    def build(self):
        self.cfg.validate()
        s = backend.ensure()
        if s.precision == "f32" and s.fast_compile and self.cfg.optimiser == "diffsim":
            # measured: in f32 with Taichi's advanced_optimization off, reverse-mode kernels return wrong
            # gradients (NaN after a few hundred MPM substeps); f64, or f32 with the optimisation on, are right
            raise ConfigError("diffsim co-design needs correct gradients: run with --precision f64, or keep f32 "
                              "with TIDE_FAST_COMPILE=0")
        # torch here only touches per-particle tensors between Taichi launches; its OpenMP threads spin against
        # Taichi's: measured in 3D (5,684 particles) zeroing a state's grads took 9 ms with 2 torch threads on the
        # loaded 2-core box and 0.05 ms with one, a 6x slower backward pass
        torch.set_num_threads(1)
        self.problem = Problem(self.cfg.spec())
        self.initial = copy.deepcopy(self.problem.state_dict())
        self.before = self.after = None
        self.opt_time = 0.0
        self.iterations_done = 0
        self.final_loss = None
        self._reset_video(label="optimised")

    def _reset_video(self, label: str):
        p = self.problem
        with torch.no_grad():
            fields = p.fields()
            self.stepper = Stepper(p.world, fields, p.controller, p.spec.substeps, p.spec.dt, p.segment)
        self.colors = self._colors(fields)
        self.visible = np.ones(p.world.model.n, bool)
        self.visible[:p.world.n_robot] = fields.occupancy.detach().cpu().numpy() > 0.5
        self.label = label
        self.start_x = float(self.stepper.x[:p.world.n_robot][self.visible[:p.world.n_robot]][:, 0].mean())

    def _colors(self, fields):
        n = self.problem.world.model.n
        col = np.tile(TERRAIN, (n, 1))
        w = fields.muscle.detach().cpu().numpy()
        col[:len(w)] = w @ PALETTE[np.arange(w.shape[1]) % len(PALETTE)]
        if self.problem.world.spec.dim == 3 and self.problem.world.model.colors is not None:
            col[len(w):] = self.problem.world.model.colors[len(w):]  # the bed in its environment's colour
        return col

    # ------------------------------------------------------------------------------------------------ learning
    def optimize(self, run):
        c, p = self.cfg, self.problem
        t0 = time.perf_counter()
        run.units.update(distance="m", population_mean="loss, unitless")
        if c.optimiser == "diffsim":
            opt = Diffsim(p, lr=c.lr)
            best = {"loss": float("inf"), "params": copy.deepcopy(p.state_dict())}

            def state():
                return {"problem": p.state_dict(), "opt": opt.state_dict(), "best": best}

            def load(s):
                p.load_state_dict(s["problem"])
                opt.load_state_dict(s["opt"])
                best.update(s["best"])

            for it in run.loop(c.iterations, state=state, load=load, desc="co-design (diffsim)"):
                params = copy.deepcopy(p.state_dict())  # the loss of step `it` belongs to these parameters
                step = opt.step(it)
                if step.loss < best["loss"]:
                    best.update(loss=step.loss, params=params)
                run.log(loss=step.loss, distance=p.summary(opt.last_traj)["distance"])
            if best["params"] is not None and np.isfinite(best["loss"]):
                p.load_state_dict(best["params"])
        else:
            pop = Population(p.spec, workers=c.workers, address=c.ray_address or None,
                             precision=backend.ensure().precision, problem=p)
            try:
                x0 = p.vector()
                opt = (CMAES(x0, pop, sigma0=c.sigma, popsize=c.popsize, seed=c.seed) if c.optimiser == "cmaes"
                       else RandomSearch(x0, pop, sigma=c.sigma, popsize=c.popsize, seed=c.seed))

                def state():  # everything but the evaluator (Ray actors do not pickle)
                    return {k: v for k, v in opt.__dict__.items() if k != "evaluate"}

                def load(s):
                    opt.__dict__.update(s)

                for it in run.loop(c.iterations, state=state, load=load, desc=f"co-design ({c.optimiser})"):
                    step = opt.step(it)
                    run.log(loss=step.best, population_mean=step.loss)
                if np.isfinite(opt.best):
                    p.set_vector(opt.best_x)
            finally:
                pop.close()
        self.opt_time = time.perf_counter() - t0
        self.iterations_done = c.iterations
        self._compare(run)

    def _compare(self, run):
        """Score the initial and optimised parameters on the training episode; play the initial one into the
        video (the runner then plays the optimised one through step/render)."""
        p = self.problem
        final = copy.deepcopy(p.state_dict())
        p.load_state_dict(self.initial)
        with torch.no_grad():
            self.before = p.summary(p.rollout())
            self._reset_video(label="initial")
            for _ in range(self.cfg.frames):  # as many frames as the optimised part, drawn the same way
                self.stepper.step()
                run.frame(self.render())
        p.load_state_dict(final)
        with torch.no_grad():
            self.after = p.summary(p.rollout())
        self.final_loss = self.after["loss"]
        self._reset_video(label="optimised")

    # ------------------------------------------------------------------------------------------------ playback
    def step(self, frame: int):
        with torch.no_grad():
            self.stepper.step()

    def geometry(self):
        """The robot's particles coloured by muscle group and the bed in its colour, on the floor, in the MPM
        domain (a 2D world as a slab at z = 0)."""
        from engine.physics.viz import mpm_geometry

        return mpm_geometry(self.problem.world.model, self.stepper.x, colors=self.colors, mask=self.visible)

    def render(self):
        if self.problem.world.spec.dim == 3:
            return self._render3d()
        from PIL import Image, ImageDraw

        from engine.render.points import render_points

        w = self.problem.world
        W, H = self.cfg.width, self.cfg.height
        x = self.stepper.x.detach().cpu().numpy()[self.visible]
        floor = 3.0 / w.spec.res
        lo = (0.05, floor - 0.03)
        scale = W / 0.9  # pixels per metre: 0.9 m of track across the frame
        cam = {"lo": lo, "hi": (lo[0] + W / scale, lo[1] + H / scale)}
        spacing = 1.0 / (w.spec.res * w.spec.ppc)
        img = render_points(x[:, :2] if w.spec.dim == 3 else x, self.colors[self.visible], width=W, height=H,
                            radius=1.0 * spacing, camera=cam)
        img = np.array(img)
        fy = int(round(H - (floor - lo[1]) * scale))
        img[max(fy, 0):] = (img[max(fy, 0):] * 0.6 + np.array([90, 80, 70]) * 0.4).astype(np.uint8)  # the floor
        # a dashed line where the robot started, so the distance travelled is visible
        px = int(round((self.start_x - lo[0]) * scale))
        if 0 <= px < W:
            img[:fy:8, px] = (40, 40, 40)
            img[1:fy:8, px] = (40, 40, 40)
        im = Image.fromarray(img)
        dist = float(self.stepper.x[:w.n_robot][torch.as_tensor(self.visible[:w.n_robot])][:, 0].mean()) - self.start_x
        ImageDraw.Draw(im).text((10, 8), f"{self.label} robot   t = {self.stepper.t:.2f} s   "
                                         f"distance {dist * 100:+.1f} cm", fill=(20, 20, 20))
        return np.asarray(im)

    def _distance(self) -> float:
        """CoM displacement along +x [m] of the visible robot particles since the video's episode started."""
        n = self.problem.world.n_robot
        return float(self.stepper.x[:n][torch.as_tensor(self.visible[:n])][:, 0].mean()) - self.start_x

    def _camera3d(self):
        """A camera in front of and above the track, following the robot once it is 0.14 m past its start (until
        then the start line and the robot are both in view)."""
        w = self.problem.world
        floor = w.top
        zc = (w.box[0][2] + w.box[1][2]) / 2
        x = max(self.start_x + self._distance(), self.start_x + 0.14)
        target = np.array([x, floor + 0.04, zc])
        eye = target + np.array([-0.05, 0.36, 0.85])
        return {"eye": tuple(eye), "target": tuple(target), "fov": 22.0}, floor

    def _render3d(self):
        """The robot as shaded particle spheres (tide's point renderer, perspective) over a checkered floor with
        the robot's soft shadow and a line where it started; bed particles are drawn like the robot's."""
        from PIL import Image, ImageDraw
        from scipy.ndimage import gaussian_filter

        from engine.render.points import _project, render_points

        w = self.problem.world
        W, H = self.cfg.width, self.cfg.height
        cam, _ = self._camera3d()
        floor_y = w.floor  # bed particles, when there are any, are drawn on top of it
        x = self.stepper.x.detach().cpu().numpy()[self.visible]
        bg = np.array([1.0, 0.0, 1.0])  # a sentinel no shaded particle takes: where it remains, the floor shows
        spacing = 1.0 / (w.spec.res * w.spec.ppc)
        img = render_points(x, self.colors[self.visible], width=W, height=H, radius=0.75 * spacing, camera=cam,
                            background=tuple(bg)).astype(np.float32) / 255.0
        empty = (np.abs(img - bg).sum(-1) < 1e-3)
        # floor: per-pixel ray against the plane y = floor (the terrain under the bed in bed environments)
        eye, tgt = np.asarray(cam["eye"], float), np.asarray(cam["target"], float)
        f = (tgt - eye) / np.linalg.norm(tgt - eye)
        sx = np.cross(f, (0.0, 1.0, 0.0))
        sx /= np.linalg.norm(sx)
        u = np.cross(sx, f)
        focal = 0.5 * H / np.tan(np.radians(cam["fov"]) / 2)
        py, px = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
        d = f[None, None] + ((px - W / 2) / focal)[..., None] * sx + (-(py - H / 2) / focal)[..., None] * u
        t = (floor_y - eye[1]) / np.where(np.abs(d[..., 1]) > 1e-9, d[..., 1], -1e-9)
        hit = eye + t[..., None] * d
        check = ((np.floor(hit[..., 0] / 0.05) + np.floor(hit[..., 2] / 0.05)) % 2 == 0)
        base = np.array(ENV_COLOURS.get(self.cfg.env, (0.78, 0.76, 0.72)))
        floor = base[None, None] * np.where(check, 1.0, 0.86)[..., None]
        fog = np.clip((t - 0.6) / 2.0, 0.0, 1.0)[..., None]
        floor = floor * (1 - fog) + np.array([0.93, 0.94, 0.96]) * fog
        sky = np.linspace(0.97, 0.86, H)[:, None, None] * np.array([0.92, 0.95, 1.0])
        floor = np.where((t > 0)[..., None], floor, sky)
        # the start line across the track
        zc = (w.box[0][2] + w.box[1][2]) / 2
        floor[(np.abs(hit[..., 0] - self.start_x) < 0.0015) & (np.abs(hit[..., 2] - zc) < 0.12) & (t > 0)] = 0.2
        # soft shadow: robot particles dropped onto the floor, splatted and blurred
        n = w.n_robot
        rob = x[:int(self.visible[:n].sum())].copy()
        rob[:, 1] = w.top
        sp, _, _ = _project(rob, W, H, cam)
        acc = np.zeros((H, W))
        ij = np.round(sp).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < W) & (ij[:, 1] >= 0) & (ij[:, 1] < H)
        np.add.at(acc, (ij[ok, 1], ij[ok, 0]), 1.0)
        acc = gaussian_filter(acc, 2.5)
        shade = 1.0 - 0.55 * np.clip(acc / max(acc.max(), 1e-9) * 3.0, 0.0, 1.0)
        floor = floor * shade[..., None]
        out = np.where(empty[..., None], floor, img)
        im = Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
        ImageDraw.Draw(im).text((10, 8), f"{self.label} robot (3D, {self.cfg.env})   t = {self.stepper.t:.2f} s   "
                                         f"distance {self._distance() * 100:+.1f} cm", fill=(20, 20, 20))
        return np.asarray(im)

    def metrics(self):
        m = {"optimiser": self.cfg.optimiser, "env": self.cfg.env, "iterations": self.iterations_done,
             "optimisation_time_s": self.opt_time, "robot_particles": self.problem.world.n_robot}
        if self.before is not None:
            m.update(initial_distance=self.before["distance"], distance=self.after["distance"],
                     initial_loss=self.before["loss"], final_loss=self.final_loss,
                     cost_of_transport=_finite(self.after["cost_of_transport"]),
                     initial_cost_of_transport=_finite(self.before["cost_of_transport"]), robot_mass=self.after["mass"])
        return m

    def exports(self):
        from engine.io import PointCloud

        p = self.problem
        with torch.no_grad():
            fields = p.fields()
        keep = fields.occupancy.detach().cpu().numpy() > 0.5
        pts = p.world.x0_robot.cpu().numpy()[keep]
        cols = self._colors(fields)[:p.world.n_robot][keep]
        if pts.shape[1] == 2:  # a 2D design is exported as a thin slab, one particle layer per dx/ppc
            h = 1.0 / (p.world.spec.res * p.world.spec.ppc)
            layers = np.arange(6) * h
            pts = np.concatenate([np.c_[pts, np.full(len(pts), z)] for z in layers])
            cols = np.tile(cols, (len(layers), 1))
        out = {"design.ply": PointCloud(points=pts, colors=cols)}
        out["design_mesh.obj"] = design_mesh(pts, 1.0 / (p.world.spec.res * p.world.spec.ppc))
        return out
