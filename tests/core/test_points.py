"""The particle renderer against geometry worked out by hand: disc area, placement and occlusion."""
import numpy as np

from engine.render.points import render_points


def test_single_disc_covers_its_area_at_the_right_place():
    img = render_points(np.array([[0.25, 0.75]]), (1.0, 0.0, 0.0), 200, 200, radius=0.1, background=(1, 1, 1))
    covered = img[..., 1] < 200  # red on white: green channel drops where the disc is
    r_px = 0.1 * 200
    assert abs(covered.sum() - np.pi * r_px**2) / (np.pi * r_px**2) < 0.03
    ys, xs = np.nonzero(covered)
    # x = 0.25 -> 50 px from the left; y = 0.75 -> 50 px from the top (pixel i spans [i, i+1])
    assert abs(xs.mean() + 0.5 - 50) < 0.2 and abs(ys.mean() + 0.5 - 50) < 0.2


def test_nearer_sphere_occludes_farther_one():
    cam = {"eye": (0.0, 0.0, 3.0), "target": (0.0, 0.0, 0.0), "fov": 40.0}
    pts = np.array([[0.0, 0.0, 0.0], [0.05, 0.0, 1.0]])  # second is nearer the camera
    cols = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    img = render_points(pts, cols, 128, 128, radius=0.2, camera=cam).astype(int)
    centre = img[64, 66]
    assert centre[2] > centre[0]  # blue (near) wins at the shared centre
    # the near sphere looks bigger: perspective scales radius by 1/z (z = 2 vs 3)
    blue = (img[..., 2] - img[..., 0] > 60).sum()
    red = (img[..., 0] - img[..., 2] > 60).sum()
    assert blue > 1.5 * red > 0 or red == 0
