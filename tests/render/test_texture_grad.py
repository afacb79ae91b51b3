"""Texture lookups: values and gradients (texels and uv) against torch's grid_sample, and uv gradients through
``render_mesh`` against central finite differences (f64)."""
import torch

from engine.render import Camera, DirectionalLights, render_mesh
from engine.render.attributes import sample_texture
from engine.render.raster import Fragments

from .helpers import fd_check


def test_sample_texture_matches_grid_sample_values_and_grads():
    gen = torch.Generator().manual_seed(3)
    Ht, Wt, C = 7, 9, 3
    tex = torch.rand(Ht, Wt, C, generator=gen, dtype=torch.float64)
    # a few uvs outside [0, 1] exercise the clamp (border padding: value of the edge, zero uv gradient)
    uv = torch.rand(1, 4, 5, 2, 2, generator=gen, dtype=torch.float64) * 1.2 - 0.1
    p2f = torch.zeros(1, 4, 5, 2, dtype=torch.int32)
    p2f[0, 0, 0, 1] = -1                                               # an empty slot reads zero
    frags = Fragments(p2f, torch.zeros(1, 4, 5, 2, 3, dtype=torch.float64), torch.zeros(1, 4, 5, 2),
                      torch.zeros(1, 4, 5, 2))
    t1, u1 = tex.clone().requires_grad_(), uv.clone().requires_grad_()
    out = sample_texture(t1, u1, frags)
    # grid_sample, align_corners=False: x = ((gx + 1) W - 1) / 2 = u W - 0.5 with gx = 2u - 1; row 0 is v = 1
    t2, u2 = tex.clone().requires_grad_(), uv.clone().requires_grad_()
    grid = torch.stack([2 * u2[..., 0] - 1, 1 - 2 * u2[..., 1]], -1).reshape(1, 4, 10, 2)
    ref = torch.nn.functional.grid_sample(t2.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    ref = ref[0].permute(1, 2, 0).reshape(1, 4, 5, 2, C) * (p2f >= 0)[..., None]
    assert torch.allclose(out, ref, atol=1e-12)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(t1.grad, t2.grad, atol=1e-12)
    assert u1.grad.abs().max() > 1e-2
    assert torch.allclose(u1.grad, u2.grad, atol=1e-10)


def test_render_mesh_uv_gradients_match_finite_differences():
    V = torch.tensor([[-0.6, -0.5, 0.0], [0.5, -0.4, 0.1], [-0.1, 0.6, -0.1], [0.6, 0.5, 0.2]], dtype=torch.float64)
    F = torch.tensor([[0, 1, 2], [1, 3, 2]])
    gen = torch.Generator().manual_seed(4)
    tex = torch.rand(5, 6, 3, generator=gen, dtype=torch.float64)
    uvs = torch.rand(4, 2, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    cam = Camera.from_look_at([0.1, 0.1, 3.0], fov_y=35, width=14, height=12)
    lights = DirectionalLights.default(torch.float64)
    for mode in ("hard", "soft"):
        def f(u, mode=mode):
            return render_mesh(V, F, cam, uvs=u, texture=tex, lights=lights, mode=mode, sigma=2e-2,
                               faces_per_pixel=2).rgb
        err, gmax = fd_check(f, [uvs], 0)
        assert gmax > 1e-3, mode
        assert err <= 1e-6 * max(1.0, gmax), (mode, err)
