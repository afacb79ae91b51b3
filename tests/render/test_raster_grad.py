"""Central finite differences (f64) for every differentiable input of the mesh rasterizer."""
import torch

from engine.render import Camera, DirectionalLights, render_mesh

from .helpers import fd_check

# three overlapping triangles at different depths in front of a 14x12 camera
V0 = torch.tensor([[-0.6, -0.5, 0.0], [0.5, -0.4, 0.1], [-0.1, 0.6, -0.1],
                   [-0.3, -0.2, 0.4], [0.7, 0.3, 0.3], [0.0, 0.5, 0.5],
                   [-0.7, 0.1, -0.3], [0.2, -0.6, -0.2], [0.4, 0.4, -0.4]], dtype=torch.float64)
F = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
FACE_COL = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=torch.float64)
LIGHTS = DirectionalLights.default(torch.float64)
SIGMA = 2e-2


def CAM():
    # built lazily: constructing a Camera initialises the backend, which the test session must do first
    return Camera.from_look_at([0.2, 0.1, 3.0], fov_y=35, width=14, height=12)


def _soft(verts=V0, face_colors=FACE_COL, opacity=torch.tensor([0.9, 0.6, 1.0], dtype=torch.float64),
          background=torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64), lights=LIGHTS, **kw):
    out = render_mesh(verts, F, CAM(), face_colors=face_colors, opacity=opacity, background=background,
                      lights=lights, mode="soft", sigma=SIGMA, faces_per_pixel=3, **kw)
    return out.rgb, out.alpha


def _check(fn, inputs, which, tol=1e-6):
    err, gmax = fd_check(fn, inputs, which)
    print(f"FD max abs err {err:.2e} (max |grad| {gmax:.2e})")
    assert gmax > 1e-3, "gradient is (almost) zero: the check would be vacuous"
    assert err <= tol * max(1.0, gmax), err


def test_soft_grad_vertices():
    _check(lambda v: _soft(verts=v), [V0], 0)


def test_soft_grad_vertices_with_background_image():
    bg = torch.rand(1, 12, 14, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _check(lambda v: _soft(verts=v, background=bg, lights=None), [V0], 0)


def test_soft_grad_colors_opacity_background():
    op = torch.tensor([0.9, 0.6, 1.0], dtype=torch.float64)
    bg = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    _check(lambda c: _soft(face_colors=c), [FACE_COL], 0)
    _check(lambda o: _soft(opacity=o), [op], 0)
    _check(lambda b: _soft(background=b), [bg], 0)


def test_grad_vertex_colors_and_texture_hard_and_soft():
    gen = torch.Generator().manual_seed(2)
    vcol = torch.rand(9, 4, generator=gen, dtype=torch.float64)        # 4-wide features
    tex = torch.rand(5, 6, 3, generator=gen, dtype=torch.float64)
    uvs = torch.rand(9, 2, generator=gen, dtype=torch.float64)
    for mode in ("hard", "soft"):
        def fv(c, mode=mode):
            return render_mesh(V0, F, CAM(), colors=c, mode=mode, sigma=SIGMA, faces_per_pixel=3).rgb

        def ft(t, mode=mode):
            r = render_mesh(V0, F, CAM(), uvs=uvs, texture=t, lights=LIGHTS, mode=mode, sigma=SIGMA,
                            faces_per_pixel=3)
            return r.rgb, r.alpha
        _check(fv, [vcol], 0)
        _check(ft, [tex], 0)


def test_fused_soft_grads_batched_cameras_vertex_colours_depth():
    # the fused path (projection + coverage + interpolation + shading + compositing) with two cameras sharing
    # one mesh: gradients of rgb, alpha and depth w.r.t. every differentiable input (per-layer depths and
    # barycentrics are detached as in DBW, so depth is only checked where geometry is fixed)
    gen = torch.Generator().manual_seed(3)
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    vcol = torch.rand(9, 3, generator=gen, dtype=torch.float64)
    op = torch.tensor([0.9, 0.6, 1.0], dtype=torch.float64)
    bg = torch.rand(2, 3, generator=gen, dtype=torch.float64)

    def f(verts=V0, colors=vcol, opacity=op, background=bg, depth=True):
        out = render_mesh(verts, F, cams, colors=colors, opacity=opacity, background=background, lights=LIGHTS,
                          mode="soft", sigma=SIGMA, faces_per_pixel=3)
        return (out.rgb, out.alpha, out.depth) if depth else (out.rgb, out.alpha)

    def fv(verts):                                   # face colours: no detached barycentrics in the colour
        out = render_mesh(verts, F, cams, face_colors=FACE_COL, opacity=op, background=bg, lights=LIGHTS,
                          mode="soft", sigma=SIGMA, faces_per_pixel=3)
        return out.rgb, out.alpha

    _check(fv, [V0], 0)
    _check(lambda c: f(colors=c), [vcol], 0)
    _check(lambda o: f(opacity=o), [op], 0)
    _check(lambda b: f(background=b), [bg], 0)


def test_fused_soft_backward_scatter_paths_agree(monkeypatch):
    # the CPU scatter (per-chunk private gradient copies, plain adds) must equal the GPU one (one copy, atomics)
    # for any chunk count, with batched meshes, per-vertex colours, lights, opacity and background
    from engine.render import mesh
    gen = torch.Generator().manual_seed(4)
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    verts = torch.stack([V0, V0 * 1.1])
    vcol = torch.rand(2, 9, 3, generator=gen, dtype=torch.float64)
    op, bg = torch.tensor([0.9, 0.6, 1.0], dtype=torch.float64), torch.rand(2, 3, generator=gen, dtype=torch.float64)
    w = torch.rand(2, 12, 14, 3, generator=gen, dtype=torch.float64)

    def grads():
        x = [t.clone().requires_grad_() for t in (verts, vcol, op, bg)]
        out = render_mesh(x[0], F, cams, colors=x[1], opacity=x[2], background=x[3], lights=LIGHTS, mode="soft",
                          sigma=SIGMA, faces_per_pixel=3)
        ((out.rgb * w).sum() + out.alpha.sum() + out.depth.sum()).backward()
        return [t.grad for t in x]
    monkeypatch.setattr(mesh, "_scatter_copies", lambda n: (max(n, 1), False))
    ref = grads()
    assert all(g.abs().max() > 1e-3 for g in ref)
    for chunks in (1, 3, 5, 12):        # 12: the face frame's backward splits its faces over 3 copies
        monkeypatch.setattr(mesh, "_scatter_copies", lambda n, c=chunks: (min(c, n), True))
        for g, r in zip(grads(), ref):
            assert torch.allclose(g, r, atol=1e-12)


def test_fused_soft_skips_unrequested_grads():
    # colours and opacity without requires_grad are neither scattered nor summed: the vertex gradient is the one
    # computed alongside theirs; a forward without autograd (no coverage kept for the backward) renders the same
    gen = torch.Generator().manual_seed(7)
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    vcol = torch.rand(9, 3, generator=gen, dtype=torch.float64)
    op = torch.tensor([0.9, 0.6, 1.0], dtype=torch.float64)
    w = torch.rand(2, 12, 14, 3, generator=gen, dtype=torch.float64)

    def run(req):
        x = [V0.clone().requires_grad_()] + [t.clone().requires_grad_(req) for t in (vcol, op)]
        out = render_mesh(x[0], F, cams, colors=x[1], opacity=x[2], lights=LIGHTS, mode="soft", sigma=SIGMA,
                          faces_per_pixel=3, background=0.3)
        ((out.rgb * w).sum() + out.alpha.sum()).backward()
        return out, [t.grad for t in x]
    full, g_full = run(True)
    part, g_part = run(False)
    assert g_full[1].abs().max() > 1e-3 and g_full[2].abs().max() > 1e-3
    assert g_part[1] is None and g_part[2] is None
    assert torch.allclose(g_part[0], g_full[0], rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        plain = render_mesh(V0, F, cams, colors=vcol, opacity=op, lights=LIGHTS, mode="soft", sigma=SIGMA,
                            faces_per_pixel=3, background=0.3)
    for a, b in ((plain.rgb, part.rgb), (plain.alpha, part.alpha), (plain.depth, part.depth)):
        assert torch.equal(a, b.detach())


def test_fused_soft_grads_batched_meshes_private_chunks(monkeypatch):
    # FD through the private-copy scatter with an uneven row split (3 chunks over 2 x 12 rows), two meshes
    from engine.render import mesh
    monkeypatch.setattr(mesh, "_scatter_copies", lambda n: (min(3, n), True))
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    verts = torch.stack([V0, V0 * 1.1])

    def f(v):
        out = render_mesh(v, F, cams, face_colors=FACE_COL, lights=LIGHTS, mode="soft", sigma=SIGMA,
                          faces_per_pixel=3, background=0.2)
        return out.rgb, out.alpha
    _check(f, [verts], 0)


def test_fused_soft_grads_shared_background_image_two_cameras():
    # one background image behind two cameras: its gradient is the per-pixel one summed over the batch
    gen = torch.Generator().manual_seed(6)
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    bg = torch.rand(1, 12, 14, 3, generator=gen, dtype=torch.float64)

    def f(b):
        out = render_mesh(V0, F, cams, face_colors=FACE_COL, lights=LIGHTS, mode="soft", sigma=SIGMA,
                          faces_per_pixel=3, background=b)
        return out.rgb, out.alpha
    _check(f, [bg], 0)


def test_fused_soft_grads_feature_widths():
    # the fused kernels are compiled per feature width C: FD through C = 1 (per vertex) and C = 5 (per face)
    gen = torch.Generator().manual_seed(7)
    cams = Camera.from_look_at([0.2, 0.1, 3.0], fov_y=35, width=14, height=12)
    for C, per_vertex in ((1, True), (5, False)):
        feats = torch.rand(9 if per_vertex else 3, C, generator=gen, dtype=torch.float64)
        bg = torch.rand(C, generator=gen, dtype=torch.float64)

        def f(x, v=V0):
            kw = dict(colors=x) if per_vertex else dict(face_colors=x)
            out = render_mesh(v, F, cams, mode="soft", sigma=SIGMA, faces_per_pixel=3, background=bg, **kw)
            return out.rgb, out.alpha, out.depth
        _check(f, [feats], 0)
        if not per_vertex:                   # per-vertex colours use detached barycentrics: no exact vertex FD
            _check(lambda v: f(feats, v)[:2], [V0], 0)
