"""Gaussian splatting: a dense per-pixel torch reference, FD gradients for every input, fitting an image."""
import math

import pytest
import torch

from engine.render import Camera, render_gaussians
from engine.render.splat import project_gaussians

from .helpers import fd_check, save_png


def _cam(w=16, h=16):
    return Camera.from_look_at([0.0, 0.0, 3.0], fov_y=40, width=w, height=h)


def _scene(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([1.2, 1.2, 0.8], dtype=torch.float64)
    scales = 0.08 + 0.15 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opac = 0.3 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    sh = torch.randn(n, 4, 3, generator=g, dtype=torch.float64) * 0.3
    return means, scales, quats, opac, colors, sh


def _dense_reference(cam, means, scales, quats, opac, colors, bg):
    # every Gaussian at every pixel, sorted by depth, same alpha rules (no tiles, no early stop)
    xy, con, z, rad = project_gaussians(cam, means, scales, quats)
    H, W = cam.height, cam.width
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    order = torch.argsort(z[0])
    dx = u[..., None] - xy[0, order, 0]
    dy = v[..., None] - xy[0, order, 1]
    c = con[0, order]
    power = -0.5 * (c[:, 0] * dx ** 2 + c[:, 2] * dy ** 2) - c[:, 1] * dx * dy
    a = (opac[order] * torch.exp(power)).clamp(max=0.99) * (power <= 0)
    a = a * (a >= 1 / 255)
    T = torch.cumprod(torch.cat([torch.ones_like(a[..., :1]), 1 - a[..., :-1]], -1), -1)
    w = T * a
    rgb = (w[..., None] * colors[order]).sum(-2) + (1 - w.sum(-1, keepdim=True)) * bg
    return rgb, w.sum(-1), (w * z[0, order]).sum(-1)


def test_matches_dense_reference():
    means, scales, quats, opac, colors, _ = _scene(40, seed=3)
    cam = _cam(40, 36)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    out = render_gaussians(cam, means, scales, quats, opac, colors=colors, background=bg)
    rgb, alpha, depth = _dense_reference(cam, means, scales, quats, opac, colors, bg)
    assert out.alpha.max() > 0.5
    assert torch.allclose(out.rgb[0], rgb, atol=2e-4)          # early stop at T < 1e-4 bounds the difference
    assert torch.allclose(out.alpha[0], alpha, atol=2e-4)
    assert torch.allclose(out.depth[0], depth, atol=1e-3)


@pytest.mark.parametrize("which", ["means", "scales", "quats", "opacities", "colors", "sh", "background"])
def test_grad(which):
    means, scales, quats, opac, colors, sh = _scene()
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    names = ["means", "scales", "quats", "opacities", "colors", "sh", "background"]
    use_sh = which == "sh"

    def fn(m, s, q, o, c, h, b):
        r = render_gaussians(_cam(), m, s, q, o, colors=None if use_sh else c, sh=h if use_sh else None,
                             background=b)
        return r.rgb, r.alpha, r.depth
    err, gmax = fd_check(fn, [means, scales, quats, opac, colors, sh, bg], names.index(which))
    print(f"{which}: FD err {err:.2e} max|g| {gmax:.2e}")
    assert gmax > 1e-3 and err < 1e-6 * max(1, gmax)


@pytest.mark.slow
def test_fit_gaussians_to_an_image():
    H = W = 32
    v, u = torch.meshgrid(torch.linspace(0, 1, H, dtype=torch.float64), torch.linspace(0, 1, W, dtype=torch.float64), indexing="ij")
    target = torch.stack([u, v, 1 - torch.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2) * 1.4], -1).clamp(0, 1)
    target = target * (((u - 0.5) ** 2 + (v - 0.5) ** 2) < 0.16)[..., None]          # a shaded disc on black
    cam = _cam(W, H)
    g = torch.Generator().manual_seed(0)
    n = 150
    means = ((torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([2.0, 2.0, 0.2])).requires_grad_()
    log_s = torch.full((n, 3), math.log(0.06), dtype=torch.float64).requires_grad_()
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1).requires_grad_()
    logit = torch.zeros(n, dtype=torch.float64).requires_grad_()
    col = torch.full((n, 3), 0.5, dtype=torch.float64).requires_grad_()
    opt = torch.optim.Adam([{"params": [means], "lr": 0.01}, {"params": [log_s, quats, logit, col], "lr": 0.05}])
    losses = []
    for it in range(80):
        r = render_gaussians(cam, means, log_s.exp(), quats, torch.sigmoid(logit), colors=col)
        loss = ((r.rgb[0] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"gaussian fit: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    save_png("/tmp/tide_render_splat_fit.png", torch.cat([r.rgb[0].detach(), target], 1))
    assert losses[-1] < 0.1 * losses[0]


def test_taichi_binning_matches_torch_sort():
    # the CPU serial Taichi binning and the torch (GPU) sort must give identical depth-sorted tile lists
    from engine.render.splat import _bin, _bin_sort
    means, scales, quats, *_ = _scene(300, seed=4)
    cam = Camera.from_look_at([[0.0, 0.0, 3.0], [0.5, 0.2, 2.5]], fov_y=40, width=72, height=40)
    xy, _con, z, rad = project_gaussians(cam, means, scales * 0.5, quats)
    a, b = _bin(xy, rad, z, 40, 72), _bin_sort(xy, rad, z, 40, 72)
    assert a[0].numel() > 300
    for x, y in zip(a, b):
        assert torch.equal(x, y)
