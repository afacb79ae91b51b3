"""GGUI viewer: an interactive window, or offscreen frames with ``show_window=False`` (lavapipe works).

Every scene is drawn in 3D from its ``geometry() -> dict`` (y is up, metres), which may hold:

* ``particles``: ``{"x": (N, 2|3), "color": (N, 3) or (3,) in [0, 1] or None, "radius": float}``; 2D positions are
  drawn at z = 0 (a 2D scene is a thin slab seen from the front, which keeps its aspect ratio);
* ``meshes``: ``[{"vertices": (V, 3), "faces": (F, 3), "color": (3,) or "colors": (V, 3)}]``;
* ``heightfield``: the floor or terrain surface, ``(xs (C,), heights (C,))`` for a 2D scene (drawn as the filled
  cross-section behind the slab and a strip on top) or ``(xs (C,), zs (D,), heights (C, D))`` for a 3D one;
* ``ground``: the height of a flat floor (drawn when there is no heightfield);
* ``walls``: ``[(lo (3,), hi (3,)), ...]`` boxes (the domain's wall bands, colliders);
* ``bounds``: ``((lo), (hi))`` of the region to frame.

A scene without ``geometry()`` is shown through its ``render()`` image, letterboxed (never stretched).

Controls (interactive): left-drag orbit, right-drag pan, W/S zoom, Space pause/resume, N single step, R reset,
P/M/G toggle particles/meshes/ground (floor, terrain, walls), H hide help, Esc quit.
"""
import math

import numpy as np
import taichi as ti

from .. import backend

__all__ = ["Viewer", "HELP", "project"]

HELP = "drag: orbit | right-drag: pan | W/S: zoom | Space: pause | N: step | R: reset | P/M/G: particles/meshes/ground | Esc: quit"

PARTICLE = (0.25, 0.45, 0.85)
MESH = (0.8, 0.6, 0.4)
GROUND = (0.62, 0.55, 0.45)
WALL = (0.6, 0.6, 0.63)
FOV = 40.0


class _Orbit:
    """Spherical orbit camera around a target (y up)."""

    def __init__(self, target, distance, yaw=0.6, pitch=0.35):
        self.target = np.asarray(target, float)
        self.distance, self.yaw, self.pitch = float(distance), yaw, pitch

    def eye(self):
        cp = math.cos(self.pitch)
        return self.target + self.distance * np.array([cp * math.sin(self.yaw), math.sin(self.pitch),
                                                       cp * math.cos(self.yaw)])

    def rotate(self, dx, dy):
        self.yaw -= 3.0 * dx
        self.pitch = float(np.clip(self.pitch + 3.0 * dy, -1.5, 1.5))

    def pan(self, dx, dy):
        fwd = self.target - self.eye()
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= max(np.linalg.norm(right), 1e-9)
        up = np.cross(right, fwd)
        self.target = self.target - self.distance * (dx * right + dy * up)

    def zoom(self, factor):
        self.distance = float(np.clip(self.distance * factor, 1e-3, 1e3))


def project(points, eye, target, res, fov=FOV):
    """Pixel (column, row) of world ``points`` (N, 3) in a ``res`` = (W, H) image of a pinhole camera at ``eye``
    looking at ``target`` (y up) with a vertical field of view ``fov`` degrees: the camera the viewer gives GGUI.
    Points behind the camera get NaN."""
    p = np.asarray(points, float).reshape(-1, 3)
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    f = target - eye
    f /= np.linalg.norm(f)
    s = np.cross(f, [0.0, 1.0, 0.0])
    s /= max(np.linalg.norm(s), 1e-12)
    u = np.cross(s, f)
    rel = p - eye
    xc, yc, zc = rel @ s, rel @ u, rel @ f
    W, H = res
    focal = 0.5 * H / math.tan(math.radians(fov) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.stack([W / 2 + focal * xc / zc, H / 2 - focal * yc / zc], 1)
    out[zc <= 1e-9] = np.nan
    return out


def _face_normals(tv):
    """(3T, 3) per-vertex normals of a triangle soup (3T, 3): each triangle's unit normal (a − b) × (a − c), the one
    GGUI would compute. Handing them to ``mesh`` skips GGUI's own normal kernel, which loops over ``range(N / 3)``
    (a float) and makes Taichi warn "Casting range_for boundary values from f32 to i32" when it compiles."""
    t = np.asarray(tv, np.float32).reshape(-1, 3, 3)
    n = np.cross(t[:, 0] - t[:, 1], t[:, 0] - t[:, 2])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return np.repeat(n, 3, axis=0)


def _numpy(x):
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def _lift(x):
    x = _numpy(x).astype(np.float32)
    return np.concatenate([x, np.zeros((len(x), 1), np.float32)], 1) if x.shape[1] == 2 else x


def _box(lo, hi):
    """Triangle soup (36, 3) of an axis-aligned box."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    c = np.array([[lo[0] if i & 1 == 0 else hi[0], lo[1] if i & 2 == 0 else hi[1], lo[2] if i & 4 == 0 else hi[2]]
                  for i in range(8)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return np.concatenate([c[[a, b, d, a, d, e]] for a, b, d, e in ((q[0], q[1], q[2], q[3]) for q in quads)])


def _grid_surface(xs, zs, heights):
    """Triangle soup of a heightfield over the grid ``xs`` × ``zs``."""
    X, Z = np.meshgrid(xs, zs, indexing="ij")
    P = np.stack([X, np.asarray(heights, float), Z], -1)
    a, b, c, d = P[:-1, :-1], P[1:, :-1], P[1:, 1:], P[:-1, 1:]
    return np.stack([a, b, c, a, c, d], 2).reshape(-1, 3)


def _strip(xs, heights, z0, z1, y0):
    """A 2D heightfield in 3D: the filled cross-section (y0 up to the surface) at z = z0 and the surface strip
    from z0 to z1."""
    xs, hs = np.asarray(xs, float), np.asarray(heights, float)
    p = lambda x, y, z: np.stack([x, y, np.full_like(x, z)], -1)  # noqa: E731
    x0, x1, h0, h1 = xs[:-1], xs[1:], hs[:-1], hs[1:]
    base = np.full_like(x0, y0)
    front = np.stack([p(x0, base, z0), p(x1, base, z0), p(x1, h1, z0), p(x0, base, z0), p(x1, h1, z0),
                      p(x0, h0, z0)], 1)
    top = np.stack([p(x0, h0, z0), p(x1, h1, z0), p(x1, h1, z1), p(x0, h0, z0), p(x1, h1, z1), p(x0, h0, z1)], 1)
    return np.concatenate([front.reshape(-1, 3), top.reshape(-1, 3)])


class Viewer:
    """Drive a scene in a GGUI window.

    Args:
        scene: a built scene (``build()`` already called).
        res: (width, height) in pixels.
        offscreen: render with ``show_window=False`` and return frames instead of showing them.
        reset: callable returning a freshly built scene (for the R key); default rebuilds via ``scene.build()``.
    """

    def __init__(self, scene, res=(800, 600), offscreen=False, title="tide", reset=None):
        backend.ensure()
        self.scene, self.res, self.offscreen = scene, tuple(res), offscreen
        self._reset = reset
        self.window = ti.ui.Window(title, self.res, vsync=not offscreen, show_window=not offscreen)
        self.canvas = self.window.get_canvas()
        self.gscene = self.window.get_scene()
        self.camera = ti.ui.Camera()
        self.paused = False
        self.show = {"particles": True, "meshes": True, "ground": True, "help": True}
        self.frame_index = 0
        self._fields: dict = {}
        self._counts: dict = {}
        self._radius = 0.005
        self._last_mouse = None
        geo = self._geometry()
        lo, hi = self._bounds(geo)
        self.is_2d = self._is_2d(geo)
        self.frame_view(lo, hi)
        if geo is not None:  # allocate every field before the first draw (none is created between frames)
            self._draw_geometry(geo, allocate_only=True)
        if offscreen:
            # Two discarded warm-up frames, drawn without advancing the scene (kept from before the fixed call
            # sequence of ``_draw_geometry``, which is what made mesh_turntable's frame 1 lose its mesh).
            for _ in range(2):
                self.frame(advance=False)

    def frame_view(self, lo, hi):
        """Aim the orbit camera so the box ``lo``..``hi`` fills the picture: a 2D scene straight from the front,
        a 3D one from the front, a little to the side and above."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        centre = (lo + hi) / 2
        ext = np.maximum(hi - lo, 1e-6)
        aspect = self.res[0] / self.res[1]
        t = math.tan(math.radians(FOV) / 2)
        if self.is_2d:  # fit width and height exactly, a small margin around
            dist = 1.08 * max(ext[1] / 2 / t, ext[0] / 2 / (t * aspect)) + ext[2] / 2
            self.orbit = _Orbit(centre, dist, yaw=0.0, pitch=0.0)
        else:
            r = 0.5 * float(np.linalg.norm(ext))
            self.orbit = _Orbit(centre, 0.9 * r / math.sin(math.atan(t * min(aspect, 1.0))), yaw=0.5, pitch=0.35)

    # -- geometry ---------------------------------------------------------------------------------------------
    def _geometry(self):
        fn = getattr(self.scene, "geometry", None)
        return fn() if callable(fn) else None

    @staticmethod
    def _is_2d(geo):
        if not geo:
            return False
        if "particles" in geo:
            return _numpy(geo["particles"]["x"]).shape[1] == 2
        return "bounds" in geo and len(geo["bounds"][0]) == 2

    def _bounds(self, geo):
        if geo and "bounds" in geo:
            lo, hi = (np.asarray(b, float) for b in geo["bounds"])
            if lo.size == 2:
                half = 0.05 * float(np.max(hi - lo))
                lo, hi = np.append(lo, -half), np.append(hi, half)
            return lo, hi
        pts = [p for p in self._points(geo) if len(p)]
        if not pts:
            return np.zeros(3), np.ones(3)
        allp = np.concatenate(pts)
        return allp.min(0), allp.max(0)

    @staticmethod
    def _points(geo):
        """World points of the scene's objects (particles, mesh vertices): what must be visible."""
        out = []
        if geo and "particles" in geo:
            out.append(_lift(geo["particles"]["x"]))
        for m in (geo or {}).get("meshes", []):
            out.append(np.asarray(_numpy(m["vertices"]), float))
        return out

    def object_points(self):
        """(N, 3) world points of the current frame's particles and mesh vertices (for tests and framing)."""
        pts = self._points(self._geometry())
        return np.concatenate(pts) if pts else np.zeros((0, 3))

    def project(self, points):
        """Pixel (column, row) of world points in this viewer's current picture."""
        return project(points, self.orbit.eye(), self.orbit.target, self.res)

    def _upload(self, key, arr, allocate_only=False):
        """Copy ``arr`` (n, 3) into a Taichi field of exactly n items, kept while n stays the same; returns
        (field, n). Measured offscreen with lavapipe: with fields longer than what is drawn (index/vertex counts
        below their size) GGUI dropped the mesh drawn after the particles; exact sizes draw both."""
        arr = np.ascontiguousarray(arr, np.float32).reshape(-1, 3)
        n = len(arr)
        f = self._fields.get(key)
        if f is None or f.shape[0] != max(n, 1):
            f = ti.Vector.field(3, ti.f32, shape=max(n, 1))
            self._fields[key] = f
        if not allocate_only and n:
            f.from_numpy(arr)
        return f, n

    def _soups(self, geo):
        """(objects, surroundings): each a (triangle vertices (3T, 3), per-vertex colours (3T, 3)) or None."""
        objs, env = [], []
        for m in geo.get("meshes", []):
            v = np.asarray(_numpy(m["vertices"]), np.float32)
            f = np.asarray(_numpy(m["faces"]), np.int64).reshape(-1)
            if not len(f):
                continue
            if m.get("colors") is not None:
                col = np.asarray(_numpy(m["colors"]), np.float32)[f]
            else:
                col = np.broadcast_to(np.asarray(m.get("color", MESH), np.float32), (len(f), 3))
            objs.append((v[f], col))
        lo, hi = self._bounds(geo)
        hf = geo.get("heightfield")
        if hf is not None:
            if len(hf) == 2:
                tri = _strip(hf[0], hf[1], lo[2], hi[2], min(lo[1], float(np.min(hf[1]))))
            else:
                tri = _grid_surface(*hf)
            env.append((tri, np.broadcast_to(np.asarray(GROUND, np.float32), tri.shape)))
        elif geo.get("ground") is not None:
            y = float(geo["ground"])
            c = (lo + hi) / 2
            r = 0.75 * float(np.max(hi - lo))  # a floor a little wider than the scene
            quad = np.array([[c[0] - r, y, c[2] - r], [c[0] + r, y, c[2] - r], [c[0] + r, y, c[2] + r],
                             [c[0] - r, y, c[2] - r], [c[0] + r, y, c[2] + r], [c[0] - r, y, c[2] + r]])
            env.append((quad, np.broadcast_to(np.asarray(GROUND, np.float32), quad.shape)))
        for wlo, whi in geo.get("walls", []):
            tri = _box(wlo, whi)
            env.append((tri, np.broadcast_to(np.asarray(WALL, np.float32), tri.shape)))
        join = lambda parts: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])) \
            if parts else None  # noqa: E731
        return join(objs), join(env)

    # -- one frame ----------------------------------------------------------------------------------------------
    def on_key(self, key) -> None:
        """Apply one key press (the window's events end up here; tests call it directly)."""
        toggles = {"p": "particles", "m": "meshes", "g": "ground", "h": "help"}
        if key == ti.ui.ESCAPE:
            self.window.running = False
        elif key == " ":
            self.paused = not self.paused
        elif key in ("n", "N"):
            self._advance()
        elif key in ("r", "R"):
            self._do_reset()
        elif isinstance(key, str) and key.lower() in toggles:
            name = toggles[key.lower()]
            self.show[name] = not self.show[name]

    def _handle_input(self):
        win = self.window
        for e in win.get_events(ti.ui.PRESS):
            self.on_key(e.key)
        if win.is_pressed("w"):
            self.orbit.zoom(0.97)
        if win.is_pressed("s"):
            self.orbit.zoom(1.03)
        mouse = np.array(win.get_cursor_pos())
        if self._last_mouse is not None:
            d = mouse - self._last_mouse
            if win.is_pressed(ti.ui.LMB):
                self.orbit.rotate(d[0], d[1])
            elif win.is_pressed(ti.ui.RMB):
                self.orbit.pan(d[0], d[1])
        self._last_mouse = mouse

    def _advance(self):
        self.scene.step(self.frame_index)
        self.frame_index += 1

    def _do_reset(self):
        if self._reset is not None:
            self.scene = self._reset()
        else:
            self.scene.build()
        self.frame_index = 0

    def _draw(self):
        geo = self._geometry()
        if geo is None:
            self.canvas.set_image(_image_for_canvas(_letterbox(self.scene.render(), self.res)))
            return
        eye = self.orbit.eye()
        self.camera.position(*eye)
        self.camera.lookat(*self.orbit.target)
        self.camera.up(0.0, 1.0, 0.0)
        self.camera.fov(FOV)
        lo, hi = self._bounds(geo)
        span = float(np.max(hi - lo))
        self.camera.z_near(max(1e-3 * self.orbit.distance, 1e-4))
        self.camera.z_far(10 * (self.orbit.distance + span))
        self.gscene.set_camera(self.camera)
        self.gscene.ambient_light((0.45, 0.45, 0.45))
        self.gscene.point_light(pos=tuple(eye + np.array([0.5, 2.0, 0.5]) * max(span, 1e-3)), color=(0.8, 0.8, 0.8))
        self.canvas.set_background_color((0.97, 0.97, 0.97))
        self._draw_geometry(geo)
        self.canvas.scene(self.gscene)

    def _draw_geometry(self, geo, allocate_only=False):
        """Upload the particles and one triangle soup (the objects, then the surroundings) and hand them to GGUI.

        Measured offscreen with lavapipe: a frame whose sequence of ``particles``/``mesh`` calls differs from the
        previous one's (a toggle, a soup that appears) comes back with meshes missing or drawn from another call's
        data, and a second ``mesh`` call after ``particles`` is dropped. So every frame makes the same two calls
        on the same fields; the toggles choose the range drawn (a count of zero draws nothing)."""
        p = geo.get("particles")
        if p is not None and len(p["x"]):
            x = _lift(p["x"])
            col = p.get("color")
            col = np.broadcast_to(np.asarray(_numpy(col) if col is not None else PARTICLE, np.float32), x.shape)
            self._upload("px", x, allocate_only)
            self._upload("pc", col, allocate_only)
            self._counts["p"] = len(x) if self.show["particles"] else 0
            self._radius = float(p.get("radius", 0.005))
        else:
            self._counts["p"] = 0
        objs, env = self._soups(geo)
        parts = [x for x in (objs, env) if x is not None]
        n_obj, n_env = (len(objs[0]) if objs is not None else 0), (len(env[0]) if env is not None else 0)
        if parts:
            tv = np.concatenate([x[0] for x in parts])
            self._upload("tv", tv, allocate_only)
            self._upload("tc", np.concatenate([x[1] for x in parts]), allocate_only)
            self._upload("tn", _face_normals(tv), allocate_only)
        m_on, g_on = self.show["meshes"] and n_obj > 0, self.show["ground"] and n_env > 0
        self._counts["t"] = (0 if m_on or not g_on else n_obj, n_obj * m_on + n_env * g_on)
        if allocate_only:
            return
        if "px" in self._fields:
            self.gscene.particles(self._fields["px"], radius=self._radius, per_vertex_color=self._fields["pc"],
                                  index_count=self._counts["p"])
        if "tv" in self._fields:
            offset, count = self._counts["t"]
            self.gscene.mesh(self._fields["tv"], per_vertex_color=self._fields["tc"], normals=self._fields["tn"],
                             two_sided=True, vertex_offset=offset, vertex_count=count)

    def _draw_help(self):
        if self.offscreen or not self.show["help"]:
            return
        gui = self.window.get_gui()
        with gui.sub_window("tide", 0.01, 0.01, 0.98, 0.08):
            state = "paused" if self.paused else "running"
            gui.text(f"frame {self.frame_index} ({state})  {HELP}")

    def frame(self, advance: bool = True):
        """Advance (unless paused) and draw one frame. Offscreen: returns (H, W, 3) uint8; else shows it."""
        if not self.offscreen:
            self._handle_input()
        if advance and not self.paused:
            self._advance()
        self._draw()
        self._draw_help()
        if self.offscreen:
            # Only the first read after drawing holds the pixels; the buffer is (W, H, 4) float32, y up.
            buf = self.window.get_image_buffer_as_numpy()
            img = np.transpose(buf, (1, 0, 2))[::-1, :, :3]
            return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        self.window.show()
        return None

    def run(self, frames: int | None = None, on_frame=None):
        """Loop until the window closes (or ``frames`` frames). ``on_frame(index, image)`` gets offscreen frames."""
        n = 0
        while (self.offscreen or self.window.running) and (frames is None or n < frames):
            img = self.frame()
            if on_frame is not None and img is not None:
                on_frame(n, img)
            n += 1
        return n


def _letterbox(img, res):
    """Pad a (H, W, 3) image with white to the window's aspect ratio, so the canvas (which stretches whatever it
    is given to the window) shows it undistorted and centred."""
    img = np.asarray(img)
    H, W = img.shape[:2]
    win_w, win_h = res
    if W * win_h > H * win_w:  # wider than the window: pad top and bottom
        new_h, new_w = int(round(W * win_h / win_w)), W
    else:
        new_h, new_w = H, int(round(H * win_w / win_h))
    full = np.full((new_h, new_w) + img.shape[2:], 255 if img.dtype == np.uint8 else 1.0, img.dtype)
    y0, x0 = (new_h - H) // 2, (new_w - W) // 2
    full[y0:y0 + H, x0:x0 + W] = img
    return full


def _image_for_canvas(img):
    """(H, W, 3) uint8 -> (W, H, 3) float32 with y up, which ``canvas.set_image`` expects."""
    arr = np.asarray(img)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return np.ascontiguousarray(np.transpose(arr[::-1], (1, 0, 2)))
