"""Looking at MPM particles: render a state, export it as a coloured point cloud (used by the MPM scenes)."""
from __future__ import annotations

import numpy as np

__all__ = ["render_state", "point_cloud", "camera_for", "surface_mesh", "mpm_geometry", "MPMScene", "FRAME_TIME"]

FRAME_TIME = 1 / 60
"""Simulated seconds per video frame in the MPM scenes."""


def camera_for(model, width: int = 512, height: int = 512, focus=None) -> dict:
    """A camera framing the scene: a 2D window of the whole domain; in 3D a view from the front and 20° above,
    fitted to a ``width`` × ``height`` picture so that the floor region ``focus`` = ((x0, z0), (x1, z1)) [m]
    (default the floor between the walls), from the floor up to a little above the bodies' initial top, fills it.
    Room is left at the top for the time stamp and at the bottom for the scale bar's label
    (``engine.viewer.overlay.annotate_3d``); the camera stays fixed over a video."""
    ext = model.domain
    if model.dim == 2:
        return {"lo": (0.0, 0.0), "hi": (float(ext[0]), float(ext[1]))}
    b = model.bound * model.dx
    heights = model.heights.detach().cpu().numpy()
    x0 = model.x0.detach().cpu().numpy()
    floor, ground_top = float(np.min(heights)), float(np.max(heights))
    high = max(float(x0[:, 1].max()), ground_top)
    top = high + 0.05 * (high - floor)
    top = min(max(top, floor + 0.1 * float(ext[1])), float(ext[1]))
    (fx0, fz0), (fx1, fz1) = focus if focus is not None else ((b, b), (ext[0] - b, ext[2] - b))
    box = np.array([[x, y, z] for x in (fx0, fx1) for y in (floor, top) for z in (fz0, fz1)], float)
    margins = (8.0, 8.0, min(30.0, 0.15 * height), min(30.0, 0.15 * height))  # left, right, top, bottom [px]
    return _fit_view(box, np.radians(20.0), 40.0, width, height, margins)


def _fit_view(box: np.ndarray, elevation: float, fov: float, W: int, H: int, margins) -> dict:
    """Eye and target of a camera looking along -z tilted down by ``elevation`` [rad] whose picture holds the points
    ``box`` (n, 3) inside the margins (left, right, top, bottom) [px] and fills them in width or height: a few
    fixed-point steps of moving the camera across the view (to centre the points) and along it (to scale them)."""
    f = np.array([0.0, -np.sin(elevation), -np.cos(elevation)])
    s = np.cross(f, [0.0, 1.0, 0.0])
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    focal = 0.5 * H / np.tan(np.radians(fov) / 2)
    ml, mr, mt, mb = margins
    want = np.array([(ml + W - mr) / 2, (mt + H - mb) / 2]), np.array([W - ml - mr, H - mt - mb])
    c = box.mean(0)
    dist = 3.0 * float(np.ptp(box, axis=0).max())
    for _ in range(60):
        rel = box - (c - dist * f)
        zc = rel @ f
        px = np.stack([W / 2 + focal * (rel @ s) / zc, H / 2 - focal * (rel @ u) / zc], 1)
        lo, hi = px.min(0), px.max(0)
        off = (lo + hi) / 2 - want[0]
        c = c + (off[0] * s - off[1] * u) * dist / focal
        dist *= float(np.max((hi - lo) / want[1])) ** 0.7
    return {"eye": tuple(float(v) for v in c - dist * f), "target": tuple(float(v) for v in c), "fov": fov}


def render_state(model, state, width: int = 512, height: int = 512, camera: dict | None = None) -> np.ndarray:
    """(height, width, 3) uint8 image of the particles in ``state`` with the model's body colours."""
    from ..render.points import render_points

    x = state.x.detach().cpu().numpy()
    spacing = float(model.vol[0].detach()) ** (1 / model.dim)
    radius = 0.5 * model.dx * (1.2 if model.dim == 2 else 1.0) * (spacing / model.dx)
    return render_points(x, model.colors, width=width, height=height, radius=max(radius, 0.3 * model.dx),
                         camera=camera or camera_for(model, width, height))


def point_cloud(model, state):
    """An ``engine.io.PointCloud`` of the particles (2D states get z = 0)."""
    from ..io import PointCloud

    x = state.x.detach().cpu().numpy()
    if x.shape[1] == 2:
        x = np.concatenate([x, np.zeros((len(x), 1))], axis=1)
    return PointCloud(points=x, colors=None if model.colors is None else np.clip(model.colors, 0, 1))


def surface_mesh(model, state, mask=None, slab: float | None = None, smooth_iterations: int = 2):
    """A ``trimesh.Trimesh`` of the surface of some particles (a robot, a jelly, a bed), for glb/obj exports.

    The particles are splatted into a density volume with voxels of the particle spacing and meshed by marching
    cubes (``engine.fields.mesh.particles_to_mesh``). A 2D body is first extruded into a slab: its particles are
    repeated at z = 0, h, 2h, … (h the particle spacing) over ``slab`` metres (default 8 spacings), so the export is
    a closed 3D prism of the 2D shape with its cross-section in the xy plane.

    Args:
        mask: optional (N,) bool (numpy or tensor) selecting the particles; default all.
    """
    from ..fields.mesh import particles_to_mesh

    x = state.x.detach().cpu().numpy()
    if mask is not None:
        x = x[np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask, dtype=bool)]
    vol = model.vol.detach().cpu().numpy()
    h = float(np.median(vol)) ** (1.0 / model.dim)
    if model.dim == 2:
        layers = max(2, int(round((slab if slab is not None else 8 * h) / h)))
        z = (np.arange(layers) - (layers - 1) / 2) * h
        x = np.concatenate([np.column_stack([x, np.full(len(x), zi)]) for zi in z])
    return particles_to_mesh(x, voxel_size=h, radius=2.0 * h, smooth_iterations=smooth_iterations)


def mpm_geometry(model, x, colors=None, mask=None) -> dict:
    """What the GGUI viewer draws for an MPM model with particle positions ``x`` (N, dim): the particles in
    ``colors`` (default the bodies' colours; a 2D scene as a slab at z = 0), the floor or terrain as
    ``heightfield``, the wall bands as ``walls`` and the domain as ``bounds``. ``mask`` keeps some particles."""
    m = model
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    colors = m.colors if colors is None else colors
    colors = None if colors is None else np.clip(np.asarray(colors, float), 0, 1)
    if mask is not None:
        mask = np.asarray(mask, bool)
        x, colors = x[mask], None if colors is None else colors[mask]
    h = float(m.vol[0].detach()) ** (1 / m.dim)
    heights = m.heights.detach().cpu().numpy()
    ext = np.asarray(m.domain, float)
    xs = np.arange(m.res[0]) * m.dx
    b = m.bound * m.dx
    if m.dim == 2:
        hf = (xs, heights)
        zlo, zhi = -0.05 * ext.max(), -0.05 * ext.max() + 0.2 * b  # thin plates behind the slab
        walls = [((0.0, 0.0, zlo), (b, ext[1], zhi)), ((ext[0] - b, 0.0, zlo), (ext[0], ext[1], zhi))]
    else:
        hf = (xs, np.arange(m.res[2]) * m.dx, heights)
        top = float(np.max(heights))  # low kerbs where the side walls are, so the floor's edge reads
        walls = [((0.0, 0.0, 0.0), (b, top + b, ext[2])), ((ext[0] - b, 0.0, 0.0), (ext[0], top + b, ext[2])),
                 ((b, 0.0, 0.0), (ext[0] - b, top + b, b)), ((b, 0.0, ext[2] - b), (ext[0] - b, top + b, ext[2]))]
    return {"particles": {"x": x, "color": colors, "radius": 0.6 * h},
            "heightfield": hf, "walls": walls, "ground": float(np.min(heights)),
            "bounds": (np.zeros(m.dim), ext)}


class MPMScene:
    """Base of the MPM scenes: a frame advances ``FRAME_TIME`` seconds in equal substeps no longer than ``cfg.dt``,
    and ``render`` draws the particles at ``cfg.image_width`` × ``cfg.image_height`` pixels.

    A subclass builds its ``Model`` in ``build()`` and hands it to ``start``, which makes the solver and state.
    """

    video_fps: int = round(1 / FRAME_TIME)
    """Video frames per second; 1/FRAME_TIME plays in real time (the runner's --fps sets it)."""

    def __init__(self, config):
        self.cfg = config

    def start(self, model) -> None:
        from .mpm import Solver

        from .guards import check_dt

        # Refuse a too-large dt now, quoting the value the user gave, before any output exists; the solver
        # checks the substep it actually takes (FRAME_TIME / substeps) again when it steps.
        check_dt(model, float(self.cfg.dt))
        self.model, self.solver, self.state = model, Solver(model), model.state()
        self.substeps = max(1, round(FRAME_TIME / self.cfg.dt))
        self.substep_dt = FRAME_TIME / self.substeps

    def step(self, frame: int) -> None:
        self.solver.advance(self.state, self.substeps, self.substep_dt)

    @property
    def time(self) -> float:
        """Simulated time [s] of the current state."""
        return self.solver.substep * self.substep_dt

    def references(self) -> list[dict]:
        """What the scene checks against, drawn on its video (see ``engine.viewer.overlay.annotate_2d``)."""
        return []

    def view_focus(self):
        """The part ((x0, z0), (x1, z1)) [m] of the floor a 3D video frames (``camera_for``); None: all of it."""
        return None

    def geometry(self) -> dict:
        """What the GGUI viewer draws in 3D (``mpm_geometry``)."""
        return mpm_geometry(self.model, self.state.x)

    def render(self) -> np.ndarray:
        """The particles, with the floor or terrain, the walls, a time stamp, a scale bar and the scene's
        references (2D); 3D views get the floor with a grid, a scale bar lying on it and the time stamp."""
        from ..viewer.overlay import annotate_2d, annotate_3d

        m = self.model
        focus = self.view_focus() if m.dim != 2 else None
        cam = camera_for(m, self.cfg.image_width, self.cfg.image_height, focus=focus)
        img = render_state(m, self.state, self.cfg.image_width, self.cfg.image_height, camera=cam)
        speed = self.video_fps * FRAME_TIME
        title = None if abs(speed - 1) < 1e-9 else f"(playback {speed:.2g}x real time)"
        if m.dim != 2:
            b = m.bound * m.dx
            ext = np.asarray(m.domain, float)
            floor_y = float(np.mean(m.heights.detach().cpu().numpy()))
            return annotate_3d(img, cam, floor_y, (b, b), (ext[0] - b, ext[2] - b), time_s=self.time, title=title,
                               focus=focus)
        xs = (np.arange(m.res[0]) + 0.0) * m.dx
        heights = m.heights.detach().cpu().numpy()
        walls = (m.bound * m.dx, (m.res[0] - m.bound) * m.dx)
        return annotate_2d(img, cam, time_s=self.time, ground=(xs, heights), walls=walls,
                           references=self.references(), title=title)
