"""Videos that explain themselves: ground, walls, time, scale and the scene's reference on the frames; real-time
playback; loss.png with every term; 2D images letterboxed (never stretched) in the viewer."""
import json

import imageio.v3 as iio
import numpy as np
import pytest

from engine.cli import main
from engine.runner import plot_history
from engine.viewer.ggui import _letterbox
from engine.viewer.overlay import Window2D, annotate_2d, nice_length

from ..physics.helpers import run_scene

FLAGS = ["--arch", "cpu", "--precision", "f64", "--no-progress"]


@pytest.mark.parametrize("metres, bar", [(0.37, 0.2), (1.2, 1.0), (0.05, 0.05), (0.0999, 0.05), (7.0, 5.0)])
def test_scale_bar_length_is_a_round_number(metres, bar):
    assert nice_length(metres) == pytest.approx(bar)


def test_ground_walls_and_reference_are_drawn_where_they_belong():
    white = np.full((200, 400, 3), 255, np.uint8)
    cam = {"lo": (0.0, 0.0), "hi": (2.0, 1.0)}  # 200 px per metre
    img = annotate_2d(white, cam, time_s=0.5, ground=([0.0, 2.0], [0.1, 0.1]), walls=(0.1, 1.9),
                      references=[{"x": 1.0, "label": ""}])
    win = Window2D(cam, 400, 200)
    assert win.scale == 200
    assert (img[190, 150:250] != 255).any(axis=1).all()  # 5 cm above the bottom: under the floor (0.1 m)
    assert (img[120, 60:340] == 255).all(axis=1).mean() > 0.95  # open space above the floor stays white
    assert (img[120, 2:18] != 255).any(axis=1).all()  # left wall band (x < 0.1 m) is shaded
    assert (img[120:150, 199:202] != 255).any()  # the reference line at x = 1 m (pixel 200)
    assert (img[5:20, 5:60] != 255).any()  # the time stamp


def test_mpm_frames_show_floor_and_the_scene_reference():
    scene = run_scene("jelly_drop", frames=1, res=16, image_width=64, image_height=64)
    img = scene.render()
    floor_row = 64 - int(3 / 16 * 64) // 2  # halfway into the floor band (3 cells of 1/16 m)
    assert (img[floor_row, 16:48] != 255).any(axis=1).all()
    beam = run_scene("cantilever", frames=0)
    line = beam.references()[0]["polyline"]
    assert line[0, 1] == pytest.approx(beam.y_mid)  # no deflection at the clamp
    assert beam.y_mid - line[-1, 1] == pytest.approx(beam.euler_bernoulli())  # the tip deflection δ = qL⁴/8E'I
    dam = run_scene("dam_break", frames=2, res=32, dt=2e-4)
    c = dam.cfg
    assert dam.time == pytest.approx(2 / 60)
    assert dam.references()[0]["x"] == pytest.approx(dam.x_wall + c.column_width + 2 * (9.81 * c.column_height) ** 0.5
                                                     * 2 / 60)
    sand = run_scene("sand_column", frames=0, aspect=1.0, cells_per_width=4)
    x0, x1 = sand.references()[0]["band"]
    assert (x0 - sand.x_wall) / sand.cfg.width == pytest.approx(2.2) and (x1 - sand.x_wall) / sand.cfg.width == pytest.approx(2.6)


def test_videos_play_in_real_time_or_say_the_factor(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", "jelly_drop", "--set", "res=16", "--frames", "2", "--out", str(out), *FLAGS]) == 0
    assert json.loads((out / "config.json").read_text())["fps"] == 60  # frames are 1/60 s of simulated time
    assert iio.immeta(out / "video.mp4")["fps"] == 60
    assert main(["run", "jelly_drop", "--set", "res=16", "--frames", "2", "--fps", "30", "--out", str(tmp_path / "b"),
                 *FLAGS]) == 0
    a, b = iio.imread(out / "video.mp4")[0], iio.imread(tmp_path / "b" / "video.mp4")[0]
    assert np.abs(a[:24].astype(int) - b[:24].astype(int)).max() > 100  # "(playback 0.5x real time)" is written
    assert np.abs(a[40:].astype(int) - b[40:].astype(int)).mean() < 3  # and nothing else differs


def test_loss_png_has_a_panel_per_term(tmp_path):
    rows = [{"iteration": i, "loss": 1 / (i + 1), "silhouette": 0.5 / (i + 1)} for i in range(5)]
    one = iio.imread(plot_history([{k: r[k] for k in ("iteration", "loss")} for r in rows], tmp_path / "a.png"))
    two = iio.imread(plot_history(rows, tmp_path / "b.png", units={"silhouette": "MSE"}))
    assert two.shape[0] > 1.5 * one.shape[0]
    assert plot_history([{"iteration": 0, "x": 1.0}], tmp_path / "c.png") is None


@pytest.mark.parametrize("shape, res", [((100, 50), (800, 600)), ((50, 100), (800, 600)), ((60, 80), (800, 600))])
def test_letterbox_keeps_the_aspect_ratio(shape, res):
    img = np.zeros(shape + (3,), np.uint8)
    out = _letterbox(img, res)
    assert out.shape[1] / out.shape[0] == pytest.approx(res[0] / res[1], rel=0.02)
    assert (out == 0).sum() == img.size  # the image itself is kept, pixel for pixel, and only padded


# GGUI's own normal kernel loops over range(N / 3) and warned at compile; the viewer now hands mesh() its normals
@pytest.mark.filterwarnings("error:Casting range_for")
def test_offscreen_view_shows_the_mesh_in_every_frame(tmp_path, capsys):
    """mesh_turntable used to lose its mesh after frame 0 (the GGUI offscreen warm-up bug)."""
    out = tmp_path / "v"
    assert main(["view", "mesh_turntable", "--offscreen", "--frames", "6", "--res", "160x120", "--out", str(out),
                 "--arch", "cpu", "--precision", "f64"]) == 0
    for i in range(6):
        img = iio.imread(out / "frames" / f"frame_{i:05d}.png")
        orange = (img[..., 0] > 180) & (img[..., 2] < 140) & (img[..., 1] > 90)  # the mesh's colour
        assert orange.mean() > 0.02, (i, orange.mean())  # edge-on views of the knot cover ~4 %


def test_offscreen_view_of_a_2d_scene_is_not_stretched(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["view", "jelly_drop", "--set", "res=16", "--set", "image_width=128", "--set", "image_height=128",
                 "--offscreen", "--frames", "2", "--res", "320x160", "--out", str(out), "--arch", "cpu",
                 "--precision", "f64"]) == 0
    img = iio.imread(out / "frames" / "frame_00001.png")
    jelly = (img[..., 0] > 150) & (img[..., 1] < 120)  # the block: 0.3 m x 0.2 m
    ys, xs = np.nonzero(jelly)
    ratio = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    assert ratio == pytest.approx(1.5, rel=0.2), ratio


def test_depth_map_uses_a_colour_map_with_its_range():
    import matplotlib

    from engine.viewer.overlay import depth_colormap, label_panels

    depth = np.full((64, 64), 2.0)
    depth[:, 32:] = 4.4
    img = depth_colormap(depth, np.ones((64, 64), bool), 2.0, 4.4)
    assert img.shape == (64, 64 + 70, 3)
    viridis = matplotlib.colormaps["viridis"]
    assert np.abs(img[40, 10].astype(int) - np.array(viridis(0.0)[:3]) * 255).max() <= 1  # near end
    assert np.abs(img[40, 50].astype(int) - np.array(viridis(1.0)[:3]) * 255).max() <= 1  # far end
    assert (img[:, 64 + 8:64 + 22] != 255).any()  # the colour bar
    panels = label_panels(np.full((40, 300, 3), 200, np.uint8), ["a", "b", "c"])
    assert all((panels[4:16, x:x + 12] < 100).any() for x in (5, 105, 205))  # one label per panel


def test_3d_frames_get_floor_grid_scale_bar_and_time():
    """annotate_3d on a white picture with a red object: the floor fills the projected floor rectangle (and only
    it), never paints over the object, and the scale bar lies on the floor's front edge."""
    from engine.viewer.ggui import project
    from engine.viewer.overlay import annotate_3d

    W, H = 240, 160
    cam = {"eye": (0.5, 0.7, 2.6), "target": (0.5, 0.25, 0.5), "fov": 40.0}
    img = np.full((H, W, 3), 255, np.uint8)
    centre = project([[0.5, 0.1, 0.5]], cam["eye"], cam["target"], (W, H), cam["fov"])[0].astype(int)
    img[centre[1] - 3:centre[1] + 4, centre[0] - 3:centre[0] + 4] = (220, 30, 30)  # an object on the floor
    out = annotate_3d(img, cam, 0.1, (0.1, 0.1), (0.9, 0.9), time_s=0.25)
    assert (out[centre[1] - 3:centre[1] + 4, centre[0] - 3:centre[0] + 4] == (220, 30, 30)).all()
    on_floor = project([[0.3, 0.1, 0.3], [0.7, 0.1, 0.7], [0.2, 0.1, 0.6]], cam["eye"], cam["target"], (W, H), 40.0)
    for c, r in on_floor.astype(int):
        assert (out[r, c] < 245).any() and abs(int(out[r, c, 0]) - int(out[r, c, 2])) > 15  # brownish, not white
    off_floor = project([[0.5, 0.9, 0.5], [1.3, 0.1, 0.5], [-0.3, 0.1, 0.5]], cam["eye"], cam["target"], (W, H), 40.0)
    for c, r in off_floor.astype(int):
        if 0 <= c < W and 0 <= r < H:
            assert (out[r, c] == 255).all()
    # the bar: 20 cm (the largest 1-2-5 length under 40 % of the 0.8 m floor) from x = 0.14 m on the front edge
    a, b = project([[0.14, 0.1, 0.9], [0.34, 0.1, 0.9]], cam["eye"], cam["target"], (W, H), 40.0)
    mid = ((a + b) / 2).round().astype(int)
    assert (out[mid[1] - 1:mid[1] + 2, mid[0]] < 60).all(axis=1).any()
    assert (out[5:20, 5:80] < 60).any()  # the time stamp


@pytest.mark.parametrize("size", [(320, 240), (512, 512), (640, 360)])
def test_3d_camera_frames_the_floor_and_the_bodies_tightly(size):
    """camera_for fits the floor between the walls, up to just above the bodies, into the picture: checked with the
    viewer's pinhole (written separately), every corner of that box is inside the frame, clear of the time stamp
    at the top and of the scale bar's label at the bottom, and the box fills at least 90 % of the free width or
    height. With a jelly-like focus on the body's footprint the body spans over 18 % of the picture both ways and
    is at least 1.25 times as large as with the old camera (2.1 domain sizes away)."""
    from engine.physics import Boundary, ModelBuilder
    from engine.physics.viz import camera_for
    from engine.viewer.ggui import project

    W, H = size
    res = 24
    dx = 1.0 / res
    b = ModelBuilder(res=(res,) * 3, dx=dx, ppc=2)
    b.add_box([0.35, 3 * dx + 0.4, 0.35], [0.65, 3 * dx + 0.6, 0.65])
    m = b.finalize(boundary=Boundary(floor="sticky"))
    wall, top = m.bound * dx, float(m.x0[:, 1].max())
    margin = min(30.0, 0.15 * H)

    def fit(cam, box):
        p = project(box, cam["eye"], cam["target"], (W, H), cam["fov"])
        assert (p[:, 0] >= 8 - 1).all() and (p[:, 0] <= W - 8 + 1).all(), p
        assert (p[:, 1] >= margin - 1).all() and (p[:, 1] <= H - margin + 1).all(), p
        return max((p[:, 0].max() - p[:, 0].min()) / (W - 16), (p[:, 1].max() - p[:, 1].min()) / (H - 2 * margin))

    floor_box = [[x, y, z] for x in (wall, 1 - wall) for y in (wall, top) for z in (wall, 1 - wall)]
    assert fit(camera_for(m, W, H), floor_box) > 0.9
    focus = ((0.2, 0.2), (0.8, 0.8))
    cam = camera_for(m, W, H, focus=focus)
    assert fit(cam, [[x, y, z] for x in (0.2, 0.8) for y in (wall, top) for z in (0.2, 0.8)]) > 0.9
    body = np.ptp(project(m.x0.numpy(), cam["eye"], cam["target"], (W, H), cam["fov"]), axis=0)
    old = {"eye": (0.5, 0.7, 2.6), "target": (0.5, 0.25, 0.5), "fov": 40.0}  # the previous camera_for
    before = np.ptp(project(m.x0.numpy(), old["eye"], old["target"], (W, H), 40.0), axis=0)
    assert body[0] > 0.18 * W and body[1] > 0.18 * H and (body > 1.25 * before).all(), (body, before)


def test_viewer_face_normals_match_trimesh():
    import trimesh

    from engine.viewer.ggui import _face_normals

    mesh = trimesh.creation.icosphere(subdivisions=1)
    n = _face_normals(mesh.vertices[mesh.faces].reshape(-1, 3))
    assert np.allclose(n.reshape(-1, 3, 3), mesh.face_normals[:, None, :], atol=1e-5)
