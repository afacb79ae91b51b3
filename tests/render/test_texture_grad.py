"""Texture lookups: values and gradients (texels and uv) against torch's grid_sample, and uv gradients through
``render_mesh`` against central finite differences (f64)."""
import pytest
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


# ---- the fused soft path (SoftMesh) with a texture, against the non-fused chain and finite differences ---------
V9 = torch.tensor([[-0.6, -0.5, 0.0], [0.5, -0.4, 0.1], [-0.1, 0.6, -0.1],
                   [-0.3, -0.2, 0.4], [0.7, 0.3, 0.3], [0.0, 0.5, 0.5],
                   [-0.7, 0.1, -0.3], [0.2, -0.6, -0.2], [0.4, 0.4, -0.4]], dtype=torch.float64)
F9 = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])


def _tex_inputs(seed, batched_tex=False, per_corner=False, C=3):
    gen = torch.Generator().manual_seed(seed)
    tex = torch.rand(*((2,) if batched_tex else ()), 5, 6, C, generator=gen, dtype=torch.float64)
    # some uvs outside [0, 1]: clamped lookups (zero uv gradient) are exercised too
    uvs = torch.rand(*((3, 3) if per_corner else (9,)), 2, generator=gen, dtype=torch.float64) * 1.3 - 0.15
    vcol = torch.rand(9, C, generator=gen, dtype=torch.float64)
    op = torch.tensor([0.9, 0.6, 1.0], dtype=torch.float64)
    bg = torch.rand(C, generator=gen, dtype=torch.float64)
    return tex, uvs, vcol, op, bg


def _tex_render(cams, verts, tex, uvs, vcol, op, bg, lights=True, face_colors=None):
    out = render_mesh(verts, F9, cams, colors=vcol, face_colors=face_colors, uvs=uvs, texture=tex, opacity=op,
                      background=bg, lights=DirectionalLights.default(torch.float64) if lights else None,
                      mode="soft", sigma=2e-2, faces_per_pixel=3)
    return out.rgb, out.alpha, out.depth


def _values_and_grads(monkeypatch, fused, cams, inputs, w, **kw):
    from engine.render import mesh
    if not fused:
        monkeypatch.setattr(mesh, "_render_soft_fused", lambda *a, **k: None)
    else:
        called = []
        real = mesh.SoftMesh.__init__
        # records use_tex (the sixth positional argument)
        monkeypatch.setattr(mesh.SoftMesh, "__init__",
                            lambda self, *a, **k: (called.append(a[5]), real(self, *a, **k))[1])
    x = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    rgb, alpha, depth = _tex_render(cams, *x, **kw)
    ((rgb * w).sum() + (alpha * w[..., 0]).sum() + (depth * w[..., 1]).sum()).backward()
    monkeypatch.undo()
    if fused:
        assert called == [True], "the textured render did not take the fused path"
    return [rgb, alpha, depth], [t.grad for t in x if t is not None]


@pytest.mark.parametrize("case", ["vertex_uvs_colours_lights", "corner_uvs_batched_tex", "texture_only_unlit",
                                  "face_colours_two_wide"])
def test_fused_textured_soft_matches_non_fused_chain(monkeypatch, case):
    # values and gradients (verts, texture, uvs, colours, opacity, background) of the fused textured path equal
    # the rasterize -> interpolate -> sample_texture -> lambert -> soft_composite chain (f64)
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    kw = {}
    C = 2 if case == "face_colours_two_wide" else 3
    tex, uvs, vcol, op, bg = _tex_inputs(5, batched_tex=case == "corner_uvs_batched_tex",
                                         per_corner=case == "corner_uvs_batched_tex", C=C)
    if case == "texture_only_unlit":
        vcol, kw = None, dict(lights=False)
    if case == "face_colours_two_wide":
        kw = dict(lights=False, face_colors=torch.rand(3, 2, generator=torch.Generator().manual_seed(1),
                                                      dtype=torch.float64))
        vcol = None
    verts = torch.stack([V9, V9 * 1.1])
    w = torch.randn(2, 12, 14, C, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    inputs = [verts, tex, uvs, vcol, op, bg]
    v1, g1 = _values_and_grads(monkeypatch, True, cams, inputs, w, **kw)
    v2, g2 = _values_and_grads(monkeypatch, False, cams, inputs, w, **kw)
    for a, b in zip(v1, v2):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert len(g1) == len(g2)
    names = ["verts", "texture", "uvs"] + (["colours"] if vcol is not None else []) + ["opacity", "background"]
    for name, a, b in zip(names, g1, g2):
        assert b.abs().max() > 1e-3, name
        assert torch.allclose(a, b, atol=1e-11, rtol=0), (name, (a - b).abs().max().item())


def test_fused_textured_soft_scatter_paths_agree(monkeypatch):
    # CPU private gradient copies (any chunk count; texels in private copies or by atomics, as for large textures)
    # == the GPU scatter (one copy, atomics), texture and uv too
    from engine.render import mesh
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    tex, uvs, vcol, op, bg = _tex_inputs(6, batched_tex=True)
    verts = torch.stack([V9, V9 * 1.1])
    w = torch.rand(2, 12, 14, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grads():
        x = [t.clone().requires_grad_() for t in (verts, tex, uvs, vcol, op, bg)]
        rgb, alpha, depth = _tex_render(cams, *x)
        ((rgb * w).sum() + alpha.sum() + depth.sum()).backward()
        return [t.grad for t in x]
    monkeypatch.setattr(mesh, "_scatter_copies", lambda n: (max(n, 1), False))
    ref = grads()
    assert all(g.abs().max() > 1e-3 for g in ref)
    for tex_copies in (True, False):
        monkeypatch.setattr(mesh, "_texture_copies_pay", lambda *a, p=tex_copies: p)
        for chunks in (1, 3, 5):
            monkeypatch.setattr(mesh, "_scatter_copies", lambda n, c=chunks: (min(c, n), True))
            for g, r in zip(grads(), ref):
                assert torch.allclose(g, r, atol=1e-12)


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_fused_textured_soft_grads_match_finite_differences(which):
    # texture (batched), per-corner uvs, vertex colours and opacity through the fused textured path (rgb, alpha,
    # depth); vertex positions (coverage, shading) with each face's corners sharing one uv, so that no colour
    # depends on the detached barycentrics
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    tex, uvs, vcol, op, bg = _tex_inputs(7, batched_tex=True, per_corner=True)
    if which == 3:
        uvs = uvs[:, :1].expand(-1, 3, -1).contiguous()
        vcol = None

    def f(*x):
        args = [tex, uvs, vcol, op]
        if which == 3:
            rgb, alpha, _ = _tex_render(cams, x[0], tex, uvs, None, op, bg)
            return rgb, alpha
        args[which] = x[0]
        rgb, alpha, depth = _tex_render(cams, V9, *args, bg)
        return rgb, alpha, depth
    x = [V9 if which == 3 else [tex, uvs, vcol, op][which]]
    err, gmax = fd_check(f, x, 0)
    assert gmax > 1e-3, which
    assert err <= 1e-6 * max(1.0, gmax), (which, err)
