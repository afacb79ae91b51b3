import math

import torch

from engine.render import Camera, orbit_cameras


def test_look_at_projects_target_to_principal_point_and_keeps_depth():
    cam = Camera.from_look_at([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]], target=(0, 0, 0), fov_y=60, width=64, height=48)
    uvz = cam.project(torch.zeros(1, 3, dtype=torch.float64))
    assert torch.allclose(uvz[:, 0, :2], torch.tensor([[32.0, 24.0]] * 2, dtype=torch.float64))
    assert torch.allclose(uvz[:, 0, 2], torch.tensor([math.sqrt(10), 2.0], dtype=torch.float64))
    # world up projects upwards in the image (v decreases), OpenCV y down
    up = cam.project(torch.tensor([[0.0, 0.1, 0.0]], dtype=torch.float64))
    assert (up[:, 0, 1] < 24).all()
    assert torch.allclose(cam.fx, torch.full((2,), 24 / math.tan(math.radians(30)), dtype=torch.float64))


def test_rays_hit_projected_points():
    cam = orbit_cameras(4, radius=2.5, elevation=30, width=20, height=16)
    o, d = cam.rays()
    pts = o + 1.7 * d                                                  # depth 1.7 along every pixel ray
    uvz = cam.project(pts.reshape(4, -1, 3)).reshape(4, 16, 20, 3)
    v, u = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(20) + 0.5, indexing="ij")
    assert torch.allclose(uvz[..., 0], u.double().expand(4, -1, -1), atol=1e-9)
    assert torch.allclose(uvz[..., 1], v.double().expand(4, -1, -1), atol=1e-9)
    assert torch.allclose(uvz[..., 2], torch.full_like(uvz[..., 2], 1.7))
    assert torch.allclose(cam.center.norm(dim=-1), torch.full((4,), 2.5, dtype=torch.float64))


def test_opengl_round_trip_and_clip_space_matches_pixels():
    cam = Camera.from_look_at([0.3, 0.8, 2.5], fov_y=50, width=40, height=30, cx=22.0, cy=13.0)
    back = Camera.from_view_matrix_gl(cam.view_matrix_gl(), fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy,
                                      width=40, height=30)
    assert torch.allclose(back.R, cam.R) and torch.allclose(back.t, cam.t)
    X = torch.tensor([[0.1, -0.2, 0.3, 1.0]], dtype=torch.float64)
    clip = (cam.projection_matrix_gl() @ cam.view_matrix_gl() @ X.T)[0, :, 0]
    ndc = clip[:3] / clip[3]
    u = (ndc[0] + 1) / 2 * 40
    v = (1 - ndc[1]) / 2 * 30                                         # NDC y up, pixels y down
    uvz = cam.project(X[:, :3])[0, 0]
    assert torch.allclose(torch.stack([u, v]), uvz[:2], atol=1e-9)
    assert cam[0].batch == 1
