"""Inverse rendering with the soft rasterizer: recover a perturbed pose and vertex colours from images."""
import pytest
import torch
import trimesh

from engine.render import orbit_cameras, render_mesh

from .helpers import save_png


def _axis_angle(w):
    # Rodrigues' formula, differentiable at w != 0 (the initial perturbation is never exactly zero)
    th = w.norm()
    k = w / th
    Kx = torch.zeros(3, 3, dtype=w.dtype)
    Kx[0, 1], Kx[0, 2], Kx[1, 0], Kx[1, 2], Kx[2, 0], Kx[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    return torch.eye(3, dtype=w.dtype) + torch.sin(th) * Kx + (1 - torch.cos(th)) * Kx @ Kx


@pytest.mark.slow
def test_recover_pose_and_vertex_colors():
    mesh = trimesh.creation.box((0.9, 0.6, 0.5))
    mesh = mesh.subdivide()
    V = torch.tensor(mesh.vertices)
    F = torch.tensor(mesh.faces)
    g = torch.Generator().manual_seed(0)
    true_col = torch.rand(V.shape[0], 3, generator=g, dtype=torch.float64)
    cams = orbit_cameras(4, radius=3.0, elevation=25, width=40, height=40, fov_y=40)
    target = render_mesh(V, F, cams, colors=true_col, mode="soft", sigma=1e-4, background=1.0)

    w = torch.tensor([0.15, -0.2, 0.1], dtype=torch.float64, requires_grad=True)       # rotation error ~ 16 deg
    t = torch.tensor([0.15, -0.1, 0.12], dtype=torch.float64, requires_grad=True)
    col = torch.full_like(true_col, 0.5).requires_grad_(True)
    opt = torch.optim.Adam([{"params": [w, t], "lr": 0.01}, {"params": [col], "lr": 0.05}])
    losses = []
    for it in range(120):
        Vp = V @ _axis_angle(w).T + t
        sigma = 3e-3 if it < 60 else 3e-4                                              # coarse to fine blur
        r = render_mesh(Vp, F, cams, colors=col, mode="soft", sigma=sigma, background=1.0)
        loss = ((r.rgb - target.rgb) ** 2).mean() + ((r.alpha - target.alpha) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    rot_err0, t_err0 = 0.15 ** 2 + 0.2 ** 2 + 0.1 ** 2, 0.15 ** 2 + 0.1 ** 2 + 0.12 ** 2
    rot_err, t_err = (w.detach() ** 2).sum().item(), (t.detach() ** 2).sum().item()
    col_err0 = ((r.rgb.detach() * 0 + 0.5 - target.rgb) ** 2)[target.alpha > 0.5].mean().item()
    col_err = ((r.rgb.detach() - target.rgb) ** 2)[target.alpha > 0.5].mean().item()
    print(f"pose: |w|^2 {rot_err0:.4f} -> {rot_err:.2e}, |t|^2 {t_err0:.4f} -> {t_err:.2e}; "
          f"image colour MSE {col_err0:.4f} -> {col_err:.2e}; loss {losses[0]:.4f} -> {losses[-1]:.2e}")
    save_png("/tmp/tide_render_inverse_mesh.png", torch.cat([torch.cat(list(r.rgb.detach()), 1),
                                                             torch.cat(list(target.rgb), 1)], 0))
    assert rot_err < 0.01 * rot_err0 and t_err < 0.01 * t_err0
    assert col_err < 0.05 * col_err0
