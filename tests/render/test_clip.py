"""Faces crossing the near plane are clipped, not dropped: silhouettes and depth against trimesh ray casting,
fragments that point at the original faces with their barycentrics, and soft-mode gradients (f64 FD)."""
import numpy as np
import torch
import trimesh

from engine.render import Camera, rasterize, render_mesh
from engine.render.clip import clip_near

from .helpers import fd_check, raycast


def _ground():
    # a 40 x 40 floor at y = -1 (two triangles) and a box standing on it, seen by a camera standing on the floor:
    # the floor runs far behind the camera, so both floor triangles cross the near plane
    floor = trimesh.Trimesh([[-20, -1, -20], [20, -1, -20], [20, -1, 20], [-20, -1, 20]], [[0, 2, 1], [0, 3, 2]],
                            process=False)
    box = trimesh.creation.box((1, 1, 1))
    box.apply_translation((0.3, -0.5, -4.0))
    return trimesh.util.concatenate([floor, box])


def _cams():
    return [Camera.from_look_at([[0.0, 0.0, 0.0]], target=(0.0, -0.4, -5.0), fov_y=70, width=64, height=48),
            Camera.from_look_at([[0.5, -0.2, 1.0], [-1.0, 0.3, -1.0]], target=(0.3, -0.5, -4.0), fov_y=60,
                                width=40, height=32)]


def test_faces_crossing_the_near_plane_match_ray_casting():
    mesh = _ground()
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    for cam in _cams():
        assert clip_near(V, F, cam) is not None, "the scene must exercise clipping"
        out = render_mesh(V, F, cam, mode="hard")
        ref_mask, ref_depth = raycast(mesh, cam)
        mask = out.alpha.numpy() > 0.5
        iou = (mask & ref_mask).sum() / (mask | ref_mask).sum()
        both = mask & ref_mask
        err = np.abs(out.depth.numpy()[both] - ref_depth[both]).max()
        assert ref_mask.mean() > 0.3
        assert iou >= 0.99, iou
        assert err <= 1e-3 * 40, err
        # fragments name the original faces, and their barycentrics give back the 3D point behind the pixel
        fr = out.fragments
        p2f = fr.pix_to_face[..., 0].long()
        assert p2f.max() < F.shape[0]
        hit = p2f >= 0
        X = V[F[p2f.clamp_min(0)]]                                                 # (B, H, W, 3, 3)
        P = (fr.bary[..., 0, :, None] * X).sum(-2)                                 # (B, H, W, 3)
        for b in range(cam.batch):
            uvz = cam[b].project(P[b].reshape(-1, 3))[0].reshape(*P.shape[1:3], 3)
            v, u = torch.meshgrid(torch.arange(cam.height) + 0.5, torch.arange(cam.width) + 0.5, indexing="ij")
            err_px = ((uvz[..., 0] - u).abs() + (uvz[..., 1] - v).abs())[hit[b]]
            assert err_px.max() < 1e-6, err_px.max()


def test_vertex_colours_on_clipped_faces_follow_the_original_barycentrics():
    mesh = _ground()
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    col = torch.rand(V.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cam = _cams()[0]
    out = render_mesh(V, F, cam, colors=col, mode="hard", background=0.0)
    fr = out.fragments
    p2f = fr.pix_to_face[..., 0].long()
    ref = (fr.bary[..., 0, :, None] * col[F[p2f.clamp_min(0)]]).sum(-2) * (p2f >= 0)[..., None]
    assert torch.allclose(out.rgb, ref, atol=1e-10)


def test_soft_gradients_through_a_clipped_triangle():
    # one triangle with a corner behind the camera and one wholly in front: vertex and colour gradients (FD, f64)
    V = torch.tensor([[-0.8, -0.6, -2.0], [0.9, -0.5, -2.5], [0.1, -0.4, 0.5],
                      [-0.3, 0.1, -3.0], [0.5, 0.6, -3.2], [-0.4, 0.7, -2.8]], dtype=torch.float64)
    F = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fc = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.7, 0.8]], dtype=torch.float64)
    cam = Camera.from_look_at([[0.0, 0.0, 0.0]], target=(0.0, 0.0, -3.0), fov_y=60, width=16, height=12)
    assert clip_near(V, F, cam) is not None

    def f(v, c):
        r = render_mesh(v, F, cam, face_colors=c, mode="soft", sigma=2e-2, faces_per_pixel=3, background=0.3)
        return r.rgb, r.alpha
    for which in (0, 1):
        err, gmax = fd_check(f, [V, fc], which)
        assert gmax > 1e-3, which
        assert err <= 1e-6 * max(1.0, gmax), (which, err)


def test_rasterize_clips_too_and_agrees_with_render_mesh():
    mesh = _ground()
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cam = _cams()[0]
    ref = render_mesh(V, F, cam, mode="hard").fragments
    fr = rasterize(V, F, cam)
    assert torch.equal(fr.pix_to_face, ref.pix_to_face)
    assert torch.allclose(fr.bary, ref.bary, atol=1e-12)
    # without clipping the floor is dropped
    covered = (fr.pix_to_face >= 0).float().mean()
    assert (rasterize(V, F, cam, clip=False).pix_to_face >= 0).float().mean() < 0.5 * covered
    # a near plane beyond the default clip depth still keeps the floor
    far = rasterize(V, F, cam, near=0.05)
    assert (far.pix_to_face >= 0).float().mean() > 0.9 * covered
