"""Soft mesh rendering with camera gradients (pose and intrinsics) against central finite differences (f64)."""
import dataclasses

import torch

from engine.render import Camera, DirectionalLights, render_mesh

from .helpers import fd_check

V = torch.tensor([[-0.6, -0.5, 0.0], [0.5, -0.4, 0.1], [-0.1, 0.6, -0.1], [0.6, 0.5, 0.2],
                  [-0.3, -0.2, 0.4], [0.7, 0.3, 0.3], [0.0, 0.5, 0.5]], dtype=torch.float64)
F = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 5, 6]])
FACE_COL = torch.rand(3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)


def _base():
    return Camera.from_look_at([0.2, 0.1, 3.0], fov_y=35, width=14, height=12)


def _render(cam, verts=V, **kw):
    # per-face colours: barycentrics stay detached (DBW), so per-vertex colours would make the FD reference
    # see interpolation changes the gradient deliberately leaves out
    r = render_mesh(verts, F, cam, face_colors=FACE_COL, lights=DirectionalLights.default(torch.float64), mode="soft",
                    sigma=2e-2, faces_per_pixel=3, background=0.3, **kw)
    return r.rgb, r.alpha


def test_camera_translation_and_intrinsics_gradients_match_finite_differences():
    base = _base()
    for field in ("t", "fx", "cx"):
        def f(x, field=field):
            return _render(dataclasses.replace(base, **{field: x}))
        err, gmax = fd_check(f, [getattr(base, field).clone()], 0, n_probe=4)
        assert gmax > 1e-3, field
        assert err <= 1e-6 * max(1.0, gmax), (field, err)


def test_vertex_gradients_do_not_depend_on_whether_the_camera_takes_gradients():
    base = _base()
    w = torch.randn(1, 12, 14, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads = []
    for cam_grad in (False, True):
        cam = dataclasses.replace(base, t=base.t.clone().requires_grad_(cam_grad))
        v = V.clone().requires_grad_()
        rgb, alpha = _render(cam, verts=v)
        ((rgb * w).sum() + alpha.sum()).backward()
        grads.append(v.grad)
        if cam_grad:
            assert cam.t.grad is not None and cam.t.grad.abs().max() > 1e-3
    assert grads[0].abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], atol=1e-10)
