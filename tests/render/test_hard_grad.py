"""Hard-mode geometry gradients: barycentrics and depth recomputed from torch's projection carry the gradients of
each face's interior shading to vertex positions and the camera (as nvdiffrast without antialiasing). Checked
against central finite differences of the whole hard render (f64), where a nudge of 1e-6 moves no pixel across a
face edge, so the finite differences see exactly the interior terms."""
import dataclasses

import torch

from engine.render import Camera, DirectionalLights, differentiable_fragments, rasterize, render_mesh

from .helpers import fd_check, fit_sphere_translation

V = torch.tensor([[-0.6, -0.5, 0.0], [0.5, -0.4, 0.1], [-0.1, 0.6, -0.1], [0.6, 0.5, 0.2],
                  [-0.3, -0.2, 0.4], [0.7, 0.3, 0.3], [0.0, 0.5, 0.5]], dtype=torch.float64)
F = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 5, 6]])
GEN = torch.Generator().manual_seed(11)
VCOL = torch.rand(7, 3, generator=GEN, dtype=torch.float64)
UVS = torch.rand(7, 2, generator=GEN, dtype=torch.float64)
TEX = torch.rand(5, 6, 3, generator=GEN, dtype=torch.float64)


def _cam():
    return Camera.from_look_at([0.2, 0.1, 3.0], fov_y=35, width=14, height=12)


def _hard(verts, cam, **kw):
    r = render_mesh(verts, F, cam, mode="hard", background=0.3, **kw)
    return r.rgb, r.depth, r.normals


def test_differentiable_fragments_equal_the_rasterizer_s():
    cam = _cam()
    for K, sigma in ((1, 0.0), (3, 2e-2)):                  # hard, and soft with blur-only (clamped) slots
        fr = rasterize(V, F, cam, faces_per_pixel=K, sigma=sigma)
        d = differentiable_fragments(fr, cam.project(V), F)
        assert int(fr.mask.sum()) >= 40
        assert torch.equal(d.pix_to_face, fr.pix_to_face)
        assert torch.allclose(d.bary, fr.bary, atol=1e-12)
        assert torch.allclose(d.zbuf, fr.zbuf, atol=1e-12)


def test_hard_vertex_gradients_match_finite_differences():
    cam = _cam()
    lights = DirectionalLights.default(torch.float64)
    for kw in (dict(colors=VCOL), dict(colors=VCOL, lights=lights), dict(uvs=UVS, texture=TEX)):
        err, gmax = fd_check(lambda v, kw=kw: _hard(v, cam, **kw), [V], 0, n_probe=21)
        assert gmax > 1e-2, kw
        assert err <= 1e-6 * max(1.0, gmax), (sorted(kw), err, gmax)


def test_hard_camera_gradients_match_finite_differences():
    base = _cam()
    for field in ("t", "fx", "cx"):
        def f(x, field=field):
            return _hard(V, dataclasses.replace(base, **{field: x}), colors=VCOL)
        err, gmax = fd_check(f, [getattr(base, field).clone()], 0, n_probe=4)
        assert gmax > 1e-3, field
        assert err <= 1e-6 * max(1.0, gmax), (field, err)


def test_hard_depth_fitting_recovers_a_translation():
    """Inverse rendering from depth maps alone in hard mode: a sphere's interior depth pins its 3D position."""
    def depth_loss(r, target):
        both = (target.alpha > 0) & (r.alpha > 0)          # depth compared where both views see the sphere
        return ((r.depth - target.depth)[both] ** 2).mean()

    err0, err = fit_sphere_translation(depth_loss, [0.05, -0.04, 0.06], [[0.0, 0.0, 3.0], [2.5, 0.5, 1.5]], 0.01)
    print(f"hard depth fit: translation error {err0:.4f} -> {err:.2e}")
    assert err < 0.1 * err0, (err0, err)


def test_fused_hard_paths_agree_with_the_torch_path_and_fd(monkeypatch):
    """The fused hard kernels (``HardMeshWorld``: projection, face normals, Lambert and their adjoints in Taichi)
    against the torch-glue path (``HardMesh`` on torch's projection, picked when the camera needs gradients) and
    both scatter schemes (private copies, atomics), batched over two cameras and meshes with a background image;
    then central differences through the normals output."""
    from engine.render import mesh
    gen = torch.Generator().manual_seed(5)
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    verts = torch.stack([V, V * 1.1])
    bg = torch.rand(2, 12, 14, 3, generator=gen, dtype=torch.float64)
    lights = DirectionalLights.default(torch.float64)
    w = [torch.rand(2, 12, 14, *s, generator=gen, dtype=torch.float64) for s in ((3,), (), (3,))]

    def grads(camera):
        x = [t.clone().requires_grad_() for t in (verts, VCOL, bg)]
        r = render_mesh(x[0], F, camera, colors=x[1], background=x[2], lights=lights, mode="hard")
        ((r.rgb * w[0]).sum() + (r.depth * w[1]).sum() + (r.normals * w[2]).sum()).backward()
        return [t.grad for t in x]

    ref = grads(cams)
    assert all(g.abs().max() > 1e-3 for g in ref)
    moving = dataclasses.replace(cams, t=cams.t.clone().requires_grad_())       # takes the torch-glue path
    for g, r in zip(grads(moving), ref):
        assert torch.allclose(g, r, atol=1e-10)
    monkeypatch.setattr(mesh, "_scatter_copies", lambda n: (max(n, 1), False))   # atomics, one copy
    for g, r in zip(grads(cams), ref):
        assert torch.allclose(g, r, atol=1e-10)
    err, gmax = fd_check(lambda v: render_mesh(v, F, cams, colors=VCOL, lights=lights, mode="hard").normals,
                         [verts], 0, n_probe=12)
    assert gmax > 1e-2 and err <= 1e-6 * max(1.0, gmax), (err, gmax)


def test_soft_normals_output_matches_finite_differences():
    """The nearest face's normal of a soft render (``NearestNormals``: one Taichi gather each way) against central
    differences, two cameras and meshes."""
    cams = Camera.from_look_at([[0.2, 0.1, 3.0], [-0.4, 0.3, 2.8]], fov_y=35, width=14, height=12)
    verts = torch.stack([V, V * 1.1])
    err, gmax = fd_check(lambda v: render_mesh(v, F, cams, colors=VCOL, mode="soft", sigma=2e-2,
                                               faces_per_pixel=3).normals, [verts], 0, n_probe=12)
    assert gmax > 1e-2 and err <= 1e-6 * max(1.0, gmax), (err, gmax)
