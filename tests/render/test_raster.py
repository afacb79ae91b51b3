"""Hard rasterization against trimesh/Embree ray casting; soft mode's limit; batching."""
import numpy as np
import pytest
import torch
import trimesh

from engine.render import Camera, orbit_cameras, rasterize, render_mesh

from .helpers import raycast, save_png


def _meshes():
    sphere = trimesh.creation.icosphere(3, radius=0.8)
    box = trimesh.creation.box((1.0, 0.6, 0.8))
    box.apply_transform(trimesh.transformations.rotation_matrix(0.5, (1, 1, 0)))
    torus = trimesh.creation.torus(0.6, 0.25)
    scene = trimesh.util.concatenate([trimesh.creation.icosphere(2, radius=0.5),
                                      trimesh.creation.box((0.5, 0.5, 0.5)).apply_translation((0.45, 0.2, 0.35)),
                                      trimesh.creation.capsule(0.8, 0.2).apply_translation((-0.6, -0.1, -0.3))])
    return {"sphere": sphere, "box": box, "torus": torus, "scene": scene}


def _cameras():
    ring = orbit_cameras(4, radius=3.0, elevation=25, width=128, height=128, start=10)
    off = Camera.from_look_at([[0.4, -1.6, 2.2]], target=(0.1, 0.0, 0.0), fov_y=55, width=128, height=96,
                              cx=70.0, cy=40.0)
    return [ring, off]


@pytest.mark.parametrize("name", ["sphere", "box", "torus", "scene"])
def test_hard_silhouette_and_depth_match_ray_casting(name):
    mesh = _meshes()[name]
    V = torch.tensor(mesh.vertices)
    F = torch.tensor(mesh.faces)
    scale = float(np.linalg.norm(mesh.extents))
    for cam in _cameras():
        out = render_mesh(V, F, cam, mode="hard")
        ref_mask, ref_depth = raycast(mesh, cam)
        mask = out.alpha.numpy() > 0.5
        iou = (mask & ref_mask).sum() / (mask | ref_mask).sum()
        both = mask & ref_mask
        err = np.abs(out.depth.numpy()[both] - ref_depth[both]).max() / scale
        print(f"{name} B={cam.batch} {cam.width}x{cam.height}: IoU {iou:.5f}, max depth err {err:.2e} of scale")
        assert iou >= 0.99, iou
        assert err <= 1e-3, err
    save_png(f"/tmp/tide_render_hard_{name}.png", np.concatenate([mask[0], ref_mask[0]], 1).astype(float))


def test_normals_face_the_camera_on_a_sphere():
    mesh = trimesh.creation.icosphere(3, radius=1.0)
    cam = orbit_cameras(2, radius=3.0, width=64, height=64)
    out = render_mesh(torch.tensor(mesh.vertices), torch.tensor(mesh.faces), cam, mode="hard")
    o, d = cam.rays()
    hit = out.alpha > 0.5
    p = o + out.depth[..., None] * d                                    # surface points from depth
    cos = (torch.nn.functional.normalize(p, dim=-1) * out.normals).sum(-1)[hit]
    assert cos.min() > 0.98                                            # flat facets of a level-3 icosphere


def test_soft_tends_to_hard_as_sigma_shrinks():
    mesh = _meshes()["scene"]
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cam = orbit_cameras(2, radius=3.0, width=64, height=64)
    colors = V * 0.5 + 0.5
    hard = render_mesh(V, F, cam, colors=colors, mode="hard")
    errs = []
    for sigma in (1e-3, 1e-4, 1e-5, 1e-7):
        soft = render_mesh(V, F, cam, colors=colors, mode="soft", sigma=sigma, faces_per_pixel=8)
        errs.append((soft.alpha - hard.alpha).abs().mean().item())
        if sigma == 1e-7:
            assert (soft.rgb - hard.rgb).abs().mean() < 1e-3
            inside = hard.alpha > 0.5
            # pixels a hair (< 0.03 px) from a neighbouring face's edge blend in that face's depth a little
            dz = (soft.depth[inside] - hard.depth[inside]).abs()
            assert dz.mean() < 1e-4 and (dz > 1e-3).float().mean() < 0.01
    print("mean |alpha_soft - alpha_hard| per sigma:", errs)
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-3


def _knot():
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    mesh = trimesh.load(os.path.join(root, "assets", "meshes", "knot.obj"), force="mesh")
    mesh.apply_translation(-mesh.bounds.mean(0))
    mesh.apply_scale(2.0 / np.linalg.norm(mesh.extents))
    return mesh


@pytest.mark.parametrize("name,res", [("ico5", 64), ("knot", 64), ("ico5", 128)])
def test_soft_alpha_is_opaque_inside_dense_meshes(name, res):
    # regression: with ~10k sub-pixel faces, K-nearest-by-depth filled all K slots with up-slope neighbours whose
    # blur coverage is ~1e-3 and dropped the face containing the pixel (58 % of covered pixels had alpha < 0.9)
    mesh = trimesh.creation.icosphere(5, radius=0.8) if name == "ico5" else _knot()
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cam = orbit_cameras(2, radius=3.0, elevation=25, width=res, height=res, start=10)
    soft = render_mesh(V, F, cam, mode="soft", sigma=1e-4, faces_per_pixel=8).alpha.numpy()
    hard = render_mesh(V, F, cam, mode="hard").alpha.numpy() > 0.5
    ref, _ = raycast(mesh, cam)
    for cover in (hard, ref):
        frac = (soft[cover] >= 0.99).mean()
        print(f"{name} {res}^2 F={len(F)}: alpha >= 0.99 on {frac:.4f} of {cover.sum()} covered pixels")
        assert frac >= 0.99, frac
    save_png(f"/tmp/tide_render_soft_alpha_{name}_{res}.png", np.concatenate([soft[0], ref[0].astype(float)], 1))


def test_k_layers_are_sorted_and_layer0_is_the_hard_zbuffer():
    mesh = _meshes()["scene"]
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cam = orbit_cameras(1, radius=3.0, width=64, height=64)
    hard = rasterize(V, F, cam, faces_per_pixel=1)
    multi = rasterize(V, F, cam, faces_per_pixel=6)
    assert torch.equal(multi.pix_to_face[..., 0], hard.pix_to_face[..., 0])
    z = torch.where(multi.mask, multi.zbuf, torch.full_like(multi.zbuf, float("inf")))
    assert (z[..., 1:] >= z[..., :-1]).all()
    # a closed mesh has an even number of surfaces along each covered ray (up to 6 kept)
    n = multi.mask.sum(-1)
    assert (n[n > 0] >= 2).float().mean() > 0.97


def test_batched_meshes_match_one_by_one():
    mesh = trimesh.creation.icosphere(2, radius=0.7)
    V0 = torch.tensor(mesh.vertices)
    F = torch.tensor(mesh.faces)
    Vb = torch.stack([V0, V0 * 0.8 + torch.tensor([0.2, 0.0, 0.0], dtype=torch.float64)])
    cam = orbit_cameras(2, radius=3.0, width=48, height=48)
    both = render_mesh(Vb, F, cam, colors=Vb * 0.5 + 0.5, mode="soft", sigma=1e-4)
    for b in range(2):
        one = render_mesh(Vb[b], F, cam[b], colors=Vb[b] * 0.5 + 0.5, mode="soft", sigma=1e-4)
        assert torch.allclose(one.rgb[0], both.rgb[b]) and torch.allclose(one.alpha[0], both.alpha[b])


def test_soft_render_fragments_equal_rasterize():
    # the soft render composites each pixel's K faces as it selects them and keeps only their ids; the fragments it
    # returns (barycentrics, depths and distances recomputed on access) equal rasterize's K-nearest pass, up to the
    # order of faces whose depths tie to rounding
    mesh = _meshes()["scene"]
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cam = orbit_cameras(2, radius=3.0, elevation=25, width=64, height=48, start=10)
    fr = render_mesh(V, F, cam, mode="soft", sigma=3e-4, faces_per_pixel=6).fragments
    ref = rasterize(V, F, cam, faces_per_pixel=6, sigma=3e-4)
    same = (fr.pix_to_face == ref.pix_to_face).all(-1)
    assert (ref.pix_to_face >= 0).sum() > 5000
    assert same.float().mean() > 0.999, same.float().mean()
    for a, b in ((fr.bary, ref.bary), (fr.zbuf, ref.zbuf), (fr.dist, ref.dist)):
        assert torch.allclose(a[same], b[same], atol=1e-12, rtol=0)
    # the pixels that differ hold the same faces, with depths equal to rounding
    diff = ~same
    assert torch.equal(fr.pix_to_face[diff].sort(-1)[0], ref.pix_to_face[diff].sort(-1)[0])
    assert torch.allclose(fr.zbuf[diff], ref.zbuf[diff], atol=1e-9, rtol=0)


def _mixed_opacity_scene(width, height, seed, p_opaque, translucent):
    """The "scene" mesh seen by two orbit cameras, each face opaque (opacity 1) with probability p_opaque, else
    ``translucent``, and random vertex colours: (verts, faces, cameras, generator (for the test's further draws),
    opacity (F,), colours (V, 3)), all f64."""
    m = _meshes()["scene"]
    V, F = torch.tensor(m.vertices), torch.tensor(m.faces)
    cam = orbit_cameras(2, radius=3.0, elevation=25, width=width, height=height, start=10)
    gen = torch.Generator().manual_seed(seed)
    op = torch.where(torch.rand(F.shape[0], generator=gen) < p_opaque, 1.0, translucent).double()
    col = torch.rand(V.shape[0], 3, generator=gen, dtype=torch.float64)
    return V, F, cam, gen, op, col


@pytest.mark.parametrize("K", [6, 2])
def test_soft_render_opaque_cut_is_exact(monkeypatch, K):
    # the fused soft pass stops selecting behind each pixel's nearest opaque face holding it (nothing behind it is
    # composited): values and gradients equal those of the same pass on the full K-nearest lists and of the
    # rasterize -> soft_composite chain. When the opacity itself needs a gradient the pass keeps the whole lists:
    # a face with opacity exactly 1 has d out / d opacity = T (v - R) with R the layers behind it, which the
    # chain computes too. Opacities mix 1 and < 1 (pixels with and without a cut, cuts behind translucent faces),
    # with silhouettes, pixels only blur-only faces reach and an image background.
    from engine.render import mesh as M

    V0, F, cam, gen, op0, col0 = _mixed_opacity_scene(40, 32, seed=3, p_opaque=0.6, translucent=0.7)
    bg0 = torch.rand(2, 32, 40, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 32, 40, 3, generator=gen, dtype=torch.float64)
    ops = []
    real = M.SoftMesh.forward

    def spy(self, *a):
        out, saved = real(self, *a)
        ops.append(out[4])
        return out, saved

    def run(mode, opacity_grad):
        if mode == "chain":
            monkeypatch.setattr(M, "_render_soft_fused", lambda *a, **k: None)
        else:
            monkeypatch.setattr(M.SoftMesh, "forward", spy)
            monkeypatch.setattr(M, "_OPAQUE_CUT", mode == "cut")
        x = [t.clone().requires_grad_(i != 2 or opacity_grad) for i, t in enumerate((V0, col0, op0, bg0))]
        r = render_mesh(x[0], F, cam, colors=x[1], opacity=x[2], background=x[3], mode="soft", sigma=3e-4,
                        faces_per_pixel=K)
        ((r.rgb * w).sum() + (r.alpha * w[..., 0]).sum() + (r.depth * w[..., 1]).sum()).backward()
        monkeypatch.undo()
        return [r.rgb, r.alpha, r.depth], [t.grad for t in x]

    full = rasterize(V0, F, cam, faces_per_pixel=K, sigma=3e-4).pix_to_face
    for opacity_grad in (False, True):
        ops.clear()
        v1, g1 = run("cut", opacity_grad)
        v0, g0 = run("full", opacity_grad)
        v2, g2 = run("chain", opacity_grad)
        names = ["verts", "colours", "opacity", "background"]
        for a, b, c in zip(v1, v0, v2):
            assert torch.equal(a, b)
            assert torch.allclose(a, c, atol=1e-12, rtol=0)
        for name, a, b, c in zip(names, g1, g0, g2):
            if name == "opacity" and not opacity_grad:
                assert a is None and b is None
                continue
            assert c.abs().max() > 1e-3, name
            assert torch.allclose(a, b, atol=1e-12, rtol=0), (name, (a - b).abs().max().item())
            assert torch.allclose(a, c, atol=1e-11, rtol=0), (name, (a - c).abs().max().item())
        assert len(ops) == 2 and torch.equal(ops[0][..., 0], full[..., 0])
        if opacity_grad:
            # whole lists for the backward
            assert torch.equal(ops[0], full) and torch.equal(ops[1], full)
        else:
            # the op reports only the composited layers (-1 behind an opaque one), the same nearest face
            assert (ops[0] >= 0).sum() < (full >= 0).sum()


def test_tile_and_pixel_selection_agree(monkeypatch):
    # the per-tile selection (CPU) and the per-pixel one (the GPU form, run here on the CPU) give the same lists,
    # soft and hard, and the same fused soft render
    from engine.render import mesh as M
    from engine.render import raster as R

    m = _meshes()["scene"]
    V, F = torch.tensor(m.vertices), torch.tensor(m.faces)
    cam = orbit_cameras(2, radius=3.0, elevation=25, width=37, height=30, start=10)
    op = torch.where(torch.rand(F.shape[0], generator=torch.Generator().manual_seed(4)) < 0.5, 1.0, 0.8).double()
    out = {}
    for tiled in (True, False):
        monkeypatch.setattr(R, "_tiled", lambda t=tiled: t)
        monkeypatch.setattr(M, "_tiled", lambda t=tiled: t)
        soft = rasterize(V, F, cam, faces_per_pixel=5, sigma=3e-4)
        hard = rasterize(V, F, cam, faces_per_pixel=3)
        r = render_mesh(V, F, cam, mode="soft", sigma=3e-4, faces_per_pixel=5, opacity=op)
        out[tiled] = (soft.pix_to_face, soft.zbuf, soft.dist, hard.pix_to_face, hard.zbuf, r.rgb, r.alpha, r.depth)
        monkeypatch.undo()
    assert (out[True][0] >= 0).sum() > 1500 and (out[True][0] == -1).any()
    for a, b in zip(out[True], out[False]):
        assert torch.equal(a, b)


def test_tile_and_pixel_soft_grads_agree(monkeypatch):
    # the fused soft render's gradients from the per-tile selection (CPU) and the per-pixel one (the GPU form): the
    # backward reads the coverages each forward kept, and with and without the opaque cut
    from engine.render import mesh as M
    from engine.render import raster as R

    V, F, cam, gen, op, col = _mixed_opacity_scene(37, 30, seed=5, p_opaque=0.5, translucent=0.8)
    w = torch.rand(2, 30, 37, 3, generator=gen, dtype=torch.float64)
    for op_grad in (False, True):
        out = {}
        for tiled in (True, False):
            monkeypatch.setattr(R, "_tiled", lambda t=tiled: t)
            monkeypatch.setattr(M, "_tiled", lambda t=tiled: t)
            x = [t.clone().requires_grad_(i < 2 or op_grad) for i, t in enumerate((V, col, op))]
            r = render_mesh(x[0], F, cam, colors=x[1], mode="soft", sigma=3e-4, faces_per_pixel=5, opacity=x[2])
            ((r.rgb * w).sum() + r.alpha.sum()).backward()
            out[tiled] = [t.grad for t in x if t.requires_grad]
            monkeypatch.undo()
        assert all(g.abs().max() > 1e-3 for g in out[True])
        for a, b in zip(out[True], out[False]):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
