"""The GGUI viewer offscreen (lavapipe): what the keys do to the scene and the picture, and the orbit camera."""
import numpy as np
import pytest

from engine.viewer import Viewer
from engine.viewer.ggui import _Orbit


class Falling:
    """Red particles falling one step per frame above a grey ground; counts steps and rebuilds."""

    def __init__(self):
        self.builds = 0
        self.build()

    def build(self):
        self.builds += 1
        self.steps = 0
        g = np.linspace(0.35, 0.65, 12)
        self.x = np.stack(np.meshgrid(g, g, g), -1).reshape(-1, 3) + [0.0, 0.2, 0.0]

    def step(self, frame):
        self.steps += 1
        self.x[:, 1] -= 0.02

    def render(self):
        return np.zeros((8, 8, 3), np.uint8)

    def geometry(self):
        return {"particles": {"x": self.x, "color": (0.9, 0.1, 0.1), "radius": 0.02}, "ground": 0.0,
                "bounds": ((0, 0, 0), (1, 1, 1))}


def red_fraction(img):
    img = img.astype(int)
    return float(((img[..., 0] - img[..., 1] > 80) & (img[..., 0] > 100)).mean())


@pytest.fixture
def viewer():
    return Viewer(Falling(), res=(160, 120), offscreen=True)


def test_keys_pause_step_reset_and_toggle(viewer):
    scene = viewer.scene
    viewer.frame()
    assert scene.steps == 1
    viewer.on_key(" ")  # pause: frames draw but do not advance
    viewer.frame()
    viewer.frame()
    assert scene.steps == 1 and viewer.paused
    viewer.on_key("n")  # single step while paused
    assert scene.steps == 2
    img = viewer.frame()
    assert red_fraction(img) > 0.01
    viewer.on_key("p")  # hide particles: no red left
    assert red_fraction(viewer.frame()) == 0.0
    viewer.on_key("p")
    viewer.on_key("r")  # reset rebuilds the scene
    assert scene.builds == 2 and scene.steps == 0 and viewer.frame_index == 0


def test_ground_toggle_changes_the_lower_image(viewer):
    viewer.on_key(" ")
    with_ground = viewer.frame().astype(int)
    viewer.on_key("g")
    without = viewer.frame().astype(int)
    # the ground plane is darker than the background and fills the bottom rows
    assert with_ground[-10:].mean() < without[-10:].mean() - 20


def test_particles_fall_in_the_picture(viewer):
    first = viewer.frame()
    for _ in range(8):
        last = viewer.frame()
    rows_first = np.nonzero(red_fraction_rows(first))[0].mean()
    rows_last = np.nonzero(red_fraction_rows(last))[0].mean()
    assert rows_last > rows_first + 3  # image rows grow downwards


def red_fraction_rows(img):
    img = img.astype(int)
    return ((img[..., 0] - img[..., 1] > 80) & (img[..., 0] > 100)).any(axis=1)


def test_orbit_rotates_on_a_sphere_and_pans_sideways():
    orbit = _Orbit(target=(0.5, 0.5, 0.5), distance=2.0)
    e0 = orbit.eye()
    orbit.rotate(0.1, 0.05)
    assert np.linalg.norm(orbit.eye() - orbit.target) == pytest.approx(2.0)
    assert not np.allclose(orbit.eye(), e0)
    view = orbit.target - orbit.eye()
    t0 = orbit.target.copy()
    orbit.pan(0.1, 0.0)
    assert abs(np.dot(orbit.target - t0, view)) < 1e-9  # panning moves across the view, not along it
    orbit.zoom(0.5)
    assert orbit.distance == pytest.approx(1.0)
