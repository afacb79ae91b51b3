"""What makes a video explain itself: ground, walls, a time stamp, a scale bar and the reference a scene checks
against, drawn over a rendered frame. One home for these, shared by every scene that draws a 2D side view.

The 2D mapping is ``engine.render.points.render_points``'s: a world window ``{"lo": (x, y), "hi": (x, y)}`` is
scaled uniformly (aspect kept) into the image, anchored at the bottom-left, y up.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["Window2D", "annotate_2d", "annotate_3d", "stamp", "nice_length", "font", "label_panels", "depth_colormap"]

GROUND = np.array([150, 128, 100], np.float32)
WALL = np.array([120, 120, 125], np.float32)
REFERENCE = (200, 30, 30)
TEXT = (20, 20, 20)


def font(size: int = 14):
    """DejaVu Sans (shipped with matplotlib, a dependency): it has the glyphs labels use (√, Δ, –, ²)."""
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf", size)
    except (ImportError, OSError):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: fixed-size bitmap font
            return ImageFont.load_default()


class Window2D:
    """World (x, y) [m] -> pixel (column, row) for a ``render_points`` 2D camera on a (height, width) image."""

    def __init__(self, camera: dict, width: int, height: int):
        self.lo = np.asarray(camera["lo"], float)
        hi = np.asarray(camera["hi"], float)
        self.width, self.height = width, height
        self.scale = min(width / (hi[0] - self.lo[0]), height / (hi[1] - self.lo[1]))  # pixels per metre

    def px(self, x, y):
        return (np.asarray(x, float) - self.lo[0]) * self.scale, self.height - (np.asarray(y, float) - self.lo[1]) * self.scale


def nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``metres``."""
    k = 10 ** math.floor(math.log10(metres))
    return max(m * k for m in (1, 2, 5) if m * k <= metres)


def _label(length: float) -> str:
    return f"{length * 100:g} cm" if length < 1 else f"{length:g} m"


def _background(img: np.ndarray) -> np.ndarray:
    """Pixels of the empty background (near white), so ground and walls never paint over particles."""
    return (img > 242).all(axis=2)


def annotate_2d(img, camera: dict, time_s: float | None = None, ground=None, walls=None, references=(),
                title: str | None = None) -> np.ndarray:
    """Draw the scene's surroundings and reference on a (H, W, 3) uint8 side view; returns a new image.

    Args:
        camera: the 2D world window the image was rendered with.
        time_s: simulated time [s], written top-left.
        ground: (xs (C,), heights (C,)) [m]: the floor or terrain surface; everything below it is shaded.
        walls: (x_left, x_right) [m]: inner faces of the side walls; outside them is shaded.
        references: dicts, each one of ``{"polyline": (N, 2) [m], "label": str}``, ``{"x": float [m], "label"}``
            (a vertical line), ``{"band": (x0, x1) [m], "label"}`` (a stripe along the ground).
        title: text written after the time stamp.
    """
    from PIL import Image, ImageDraw

    out = np.array(img, copy=True)
    H, W = out.shape[:2]
    win = Window2D(camera, W, H)
    bg = _background(out)
    cols = np.arange(W) + 0.5
    wx = win.lo[0] + cols / win.scale  # world x of every pixel column
    rows = np.arange(H)[:, None] + 0.5
    wy = win.lo[1] + (H - rows) / win.scale  # world y of every pixel row
    shade = np.zeros((H, W), bool)
    if ground is not None:
        xs, hs = (np.asarray(a, float) for a in ground)
        h_at = np.interp(wx, xs, hs)
        shade |= wy <= h_at[None, :]
    mask = shade & bg
    out[mask] = (0.55 * out[mask] + 0.45 * GROUND).astype(np.uint8)
    if walls is not None:
        wall = ((wx < walls[0]) | (wx > walls[1]))[None, :] & bg
        hatch = ((np.arange(H)[:, None] + np.arange(W)[None, :]) % 8 < 2)
        out[wall] = (0.6 * out[wall] + 0.4 * WALL).astype(np.uint8)
        out[wall & hatch] = (0.5 * out[wall & hatch]).astype(np.uint8) + 60
    im = Image.fromarray(out)
    d = ImageDraw.Draw(im)
    if ground is not None:  # the surface line itself
        px, py = win.px(xs, hs)
        d.line(list(zip(px.tolist(), py.tolist())), fill=(90, 70, 50), width=2)
    f = font(13)
    label_y = 26
    for ref in references:
        if "polyline" in ref:
            pts = np.asarray(ref["polyline"], float)
            px, py = win.px(pts[:, 0], pts[:, 1])
            xy = list(zip(px.tolist(), py.tolist()))
            for i in range(0, len(xy) - 1, 2):  # dashed
                d.line(xy[i:i + 2], fill=REFERENCE, width=2)
        elif "x" in ref:
            px, _ = win.px(ref["x"], 0.0)
            for y0 in range(0, H, 10):
                d.line([(float(px), y0), (float(px), y0 + 5)], fill=REFERENCE, width=2)
        elif "band" in ref:
            (x0, x1), base = ref["band"], ref.get("y", 0.0)
            p0, p1 = (float(win.px(x, 0.0)[0]) for x in (x0, x1))
            py = float(win.px(0.0, base)[1])
            d.rectangle([float(min(p0, p1)), float(py) - 6, float(max(p0, p1)), float(py)], fill=(230, 120, 120),
                        outline=REFERENCE)
        if ref.get("label"):
            box = d.textbbox((8, label_y), ref["label"], font=f)
            d.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(255, 255, 255))
            d.text((8, label_y), ref["label"], fill=REFERENCE, font=f)
            label_y += 18
    _time_and_scale(d, W, H, time_s, title, win.scale)
    return np.asarray(im)


def _time_and_scale(d, W, H, time_s, title, scale) -> None:
    f = font(14)
    head = " ".join(s for s in (f"t = {time_s:.3f} s" if time_s is not None else None, title) if s)
    if head:
        box = d.textbbox((8, 5), head, font=f)
        d.rectangle([box[0] - 4, box[1] - 2, box[2] + 4, box[3] + 2], fill=(255, 255, 255))
        d.text((8, 5), head, fill=TEXT, font=f)
    if scale:
        length = nice_length(0.2 * W / scale)
        n = length * scale
        x1, y = W - 12, H - 12
        d.rectangle([x1 - n - 4, y - 20, x1 + 4, y + 5], fill=(255, 255, 255))
        d.line([(x1 - n, y), (x1, y)], fill=TEXT, width=3)
        d.line([(x1 - n, y - 5), (x1 - n, y + 3)], fill=TEXT, width=2)
        d.line([(x1, y - 5), (x1, y + 3)], fill=TEXT, width=2)
        d.text((x1 - n / 2 - 4 * len(_label(length)), y - 19), _label(length), fill=TEXT, font=font(12))


def label_panels(img, labels: list[str], size: int = 12) -> np.ndarray:
    """Write ``labels[i]`` at the top-left of the i-th of ``len(labels)`` equal-width panels of a (H, W, 3) image."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.array(img, copy=True))
    d = ImageDraw.Draw(im)
    W = im.size[0] // len(labels)
    f = font(size)
    for i, text in enumerate(labels):
        box = d.textbbox((i * W + 5, 4), text, font=f)
        d.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(255, 255, 255))
        d.text((i * W + 5, 4), text, fill=TEXT, font=f)
    return np.asarray(im)


def depth_colormap(depth, mask, near: float, far: float, title: str = "depth") -> np.ndarray:
    """(H, W) depth [world units] -> (H, W + 70, 3) uint8: viridis inside ``mask``, white elsewhere, with a colour
    bar labelled ``near`` and ``far`` on the right, so the picture says what its colours mean."""
    import matplotlib
    from PIL import Image, ImageDraw

    depth, mask = np.asarray(depth, float), np.asarray(mask, bool)
    H, W = depth.shape
    cmap = matplotlib.colormaps["viridis"]
    t = np.clip((depth - near) / (far - near), 0, 1)
    rgb = (cmap(t)[..., :3] * 255).astype(np.uint8)
    rgb[~mask] = 255
    bar = np.full((H, 70, 3), 255, np.uint8)
    m = min(20, H // 4)  # margins above and below the ramp (small images get small ones)
    ramp = (cmap(np.linspace(0, 1, H - 2 * m))[:, :3] * 255).astype(np.uint8)
    bar[m:H - m, 8:22] = ramp[:, None, :]
    im = Image.fromarray(np.concatenate([rgb, bar], 1))
    d = ImageDraw.Draw(im)
    f = font(11)
    d.text((W + 25, max(m - 6, 0)), f"{near:g}", fill=TEXT, font=f)
    d.text((W + 25, H - m - 10), f"{far:g}", fill=TEXT, font=f)
    d.text((4, 4), title, fill=TEXT, font=f)
    return np.asarray(im)


def stamp(img, time_s: float | None = None, title: str | None = None, scale: float | None = None) -> np.ndarray:
    """Time stamp (and a scale bar when ``scale`` [px/m] is known) on any (H, W, 3) uint8 frame."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.array(img, copy=True))
    H, W = np.asarray(img).shape[:2]
    _time_and_scale(ImageDraw.Draw(im), W, H, time_s, title, scale)
    return np.asarray(im)


def annotate_3d(img, camera: dict, floor_y: float, lo, hi, time_s: float | None = None,
                title: str | None = None, focus=None) -> np.ndarray:
    """Draw the floor, a floor grid, a scale bar lying on the floor and a time stamp on a (H, W, 3) uint8 perspective
    view rendered with ``engine.render.points``' 3D ``camera``; returns a new image.

    Args:
        floor_y: height of the floor [m].
        lo, hi: (x, z) corners of the floor rectangle [m] (the inner faces of the walls).
        focus: optional ((x0, z0), (x1, z1)) [m], the part of the floor the camera frames (``viz.camera_for``);
            default the whole floor.
    The grid spacing is half the scale bar's length; the bar lies along x on the front edge (the edge nearest the
    camera) of the framed part of the floor, so it shrinks with distance exactly as the scene does.
    """
    from PIL import Image, ImageDraw

    from ..render.points import _project

    out = np.array(img, copy=True)
    H, W = out.shape[:2]
    bg = _background(out)
    (x0, z0), (x1, z1) = (float(v) for v in lo), (float(v) for v in hi)
    P = lambda pts: _project(np.asarray(pts, float), W, H, camera)[0]  # noqa: E731
    floor = Image.new("L", (W, H), 0)
    fd = ImageDraw.Draw(floor)
    fd.polygon([tuple(p) for p in P([[x0, floor_y, z0], [x1, floor_y, z0], [x1, floor_y, z1], [x0, floor_y, z1]])
                .tolist()], fill=255)
    (fx0, _), (fx1, fz1) = ((x0, z0), (x1, z1)) if focus is None else ((float(v) for v in c) for c in focus)
    length = nice_length(0.4 * (fx1 - fx0))
    step = length / 2
    lines = Image.new("L", (W, H), 0)
    ld = ImageDraw.Draw(lines)
    for x in np.arange(x0, x1 + 1e-9, step):
        ld.line([tuple(p) for p in P([[x, floor_y, z0], [x, floor_y, z1]]).tolist()], fill=255, width=1)
    for z in np.arange(z0, z1 + 1e-9, step):
        ld.line([tuple(p) for p in P([[x0, floor_y, z], [x1, floor_y, z]]).tolist()], fill=255, width=1)
    on_floor = (np.asarray(floor) > 0) & bg
    out[on_floor] = (0.55 * out[on_floor] + 0.45 * GROUND).astype(np.uint8)
    grid = (np.asarray(lines) > 0) & on_floor
    out[grid] = (0.8 * out[grid]).astype(np.uint8)
    im = Image.fromarray(out)
    d = ImageDraw.Draw(im)
    a, b = P([[fx0 + 0.05 * (fx1 - fx0), floor_y, fz1], [fx0 + 0.05 * (fx1 - fx0) + length, floor_y, fz1]])
    d.line([tuple(a), tuple(b)], fill=TEXT, width=4)
    for p in (a, b):
        d.line([(p[0], p[1] - 6), (p[0], p[1] + 6)], fill=TEXT, width=2)
    text = f"{_label(length)} (grid {_label(step)})"
    f = font(12)
    box = d.textbbox((float(a[0]), float(a[1]) + 8), text, font=f)
    d.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(255, 255, 255))
    d.text((float(a[0]), float(a[1]) + 8), text, fill=TEXT, font=f)
    _time_and_scale(d, W, H, time_s, title, None)
    return np.asarray(im)
