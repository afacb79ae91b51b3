"""GGUI viewer: an interactive window, or offscreen frames with ``show_window=False`` (lavapipe works).

A scene shows up in the viewer in one of two ways:

* it defines ``geometry() -> dict`` with any of
  ``particles: {"x": (N, 2|3), "color": (N, 3) in [0, 1] or None, "radius": float}``,
  ``meshes: [{"vertices": (V, 3), "faces": (F, 3), "color": (3,)}]``, ``ground: float`` (height of the floor,
  y-up) and ``bounds: ((lo), (hi))``; the viewer draws it in 3D with an orbit camera;
* otherwise the viewer shows the scene's own ``render()`` image.

Controls (interactive): left-drag orbit, right-drag pan, W/S zoom, Space pause/resume, N single step, R reset,
P/M/G toggle particles/meshes/ground, H hide help, Esc quit.
"""
import math

import numpy as np
import taichi as ti

from .. import backend

__all__ = ["Viewer", "HELP"]

HELP = "drag: orbit | right-drag: pan | W/S: zoom | Space: pause | N: step | R: reset | P/M/G: particles/meshes/ground | Esc: quit"


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
        self._last_mouse = None
        geo = self._geometry()
        lo, hi = self._bounds(geo)
        centre = (lo + hi) / 2
        span = float(np.max(hi - lo)) or 1.0
        self.orbit = _Orbit(centre, 1.8 * span, yaw=0.0 if self._is_2d(geo) else 0.6,
                            pitch=0.0 if self._is_2d(geo) else 0.35)
        if offscreen:
            # Measured with lavapipe: the second image GGUI renders offscreen comes back with the ground but
            # without the meshes (mesh_turntable's frame 1). Two discarded warm-up frames, drawn without
            # advancing the scene, make every returned frame complete.
            for _ in range(2):
                self.frame(advance=False)

    # -- geometry ---------------------------------------------------------------------------------------------
    def _geometry(self):
        fn = getattr(self.scene, "geometry", None)
        return fn() if callable(fn) else None

    @staticmethod
    def _is_2d(geo):
        return bool(geo and "particles" in geo and np.asarray(geo["particles"]["x"]).shape[1] == 2)

    def _bounds(self, geo):
        if geo and "bounds" in geo:
            lo, hi = (np.asarray(b, float) for b in geo["bounds"])
            if lo.size == 2:
                lo, hi = np.append(lo, 0.0), np.append(hi, 0.0)
            return lo, hi
        pts = []
        if geo and "particles" in geo:
            pts.append(self._lift(geo["particles"]["x"]))
        for m in (geo or {}).get("meshes", []):
            pts.append(np.asarray(m["vertices"], float))
        if not pts:
            return np.zeros(3), np.ones(3)
        allp = np.concatenate(pts)
        return allp.min(0), allp.max(0)

    @staticmethod
    def _lift(x):
        x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, np.float32)
        return np.concatenate([x, np.zeros((len(x), 1), np.float32)], 1) if x.shape[1] == 2 else x

    def _field(self, key, n):
        f = self._fields.get(key)
        if f is None or f.shape[0] < n:
            f = ti.Vector.field(3, ti.f32, shape=max(n, 1))
            self._fields[key] = f
        return f

    def _upload(self, key, arr):
        arr = np.ascontiguousarray(arr, np.float32)
        f = self._field(key, len(arr))
        if f.shape[0] != len(arr):  # fields only grow; pad the tail with the last item
            arr = np.concatenate([arr, np.repeat(arr[-1:], f.shape[0] - len(arr), 0)])
        f.from_numpy(arr)
        return f

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
        self.camera.fov(40)
        self.gscene.set_camera(self.camera)
        self.gscene.ambient_light((0.45, 0.45, 0.45))
        self.gscene.point_light(pos=tuple(eye + np.array([0.5, 2.0, 0.5])), color=(0.8, 0.8, 0.8))
        self.canvas.set_background_color((0.97, 0.97, 0.97))
        if self.show["particles"] and "particles" in geo:
            p = geo["particles"]
            x = self._lift(p["x"])
            col = p.get("color")
            col = np.broadcast_to(np.asarray(col if col is not None else (0.25, 0.45, 0.85), np.float32), x.shape)
            self.gscene.particles(self._upload("px", x), radius=float(p.get("radius", 0.005)),
                                  per_vertex_color=self._upload("pc", col), index_count=len(x))
        if self.show["meshes"]:
            for i, m in enumerate(geo.get("meshes", [])):
                tri = np.asarray(m["vertices"], np.float32)[np.asarray(m["faces"]).reshape(-1)]
                self.gscene.mesh(self._upload(f"m{i}", tri), color=tuple(m.get("color", (0.8, 0.6, 0.4))),
                                 two_sided=True)
        if self.show["ground"] and geo.get("ground") is not None:
            lo, hi = self._bounds(geo)
            y = float(geo["ground"])
            c = (lo + hi) / 2
            r = float(np.max(hi - lo))
            quad = np.array([[c[0] - r, y, c[2] - r], [c[0] + r, y, c[2] - r], [c[0] + r, y, c[2] + r],
                             [c[0] - r, y, c[2] - r], [c[0] + r, y, c[2] + r], [c[0] - r, y, c[2] + r]])
            self.gscene.mesh(self._upload("ground", quad), color=(0.55, 0.55, 0.5), two_sided=True)
        self.canvas.scene(self.gscene)

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
