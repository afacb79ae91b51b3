"""Different meshes in one batch (``stack_meshes``) render as each mesh alone, gradients included."""
import torch
import trimesh

from engine.render import orbit_cameras, render_mesh, stack_meshes


def test_stacked_meshes_match_one_by_one():
    meshes = [trimesh.creation.icosphere(1, radius=0.8), trimesh.creation.box((1.0, 0.6, 0.9)),
              trimesh.creation.cone(0.6, 1.2, sections=7)]
    cams = orbit_cameras(3, radius=3.0, elevation=20, width=24, height=20)
    gen = torch.Generator().manual_seed(3)
    verts = [torch.tensor(m.vertices).requires_grad_() for m in meshes]
    faces = [torch.tensor(m.faces) for m in meshes]
    cols = [torch.rand(len(m.vertices), 3, generator=gen, dtype=torch.float64) for m in meshes]
    w = torch.randn(3, 20, 24, 3, generator=gen, dtype=torch.float64)
    for mode in ("hard", "soft"):
        st = stack_meshes(verts, faces, cams)                      # a fresh graph per backward
        out = render_mesh(st.verts, st.faces, cams, colors=st.per_vertex(cols), mode=mode, sigma=1e-3)
        g_all = torch.autograd.grad((out.rgb * w).sum() + out.alpha.sum(), verts)
        for b in range(3):
            one = render_mesh(verts[b], faces[b], cams[b], colors=cols[b], mode=mode, sigma=1e-3)
            assert one.alpha.sum() > 10
            assert torch.allclose(out.rgb[b], one.rgb[0], atol=1e-10), (mode, b)
            assert torch.allclose(out.alpha[b], one.alpha[0], atol=1e-10), (mode, b)
            p2f = out.fragments.pix_to_face[b, ..., 0].long()
            local = torch.where(p2f >= 0, p2f - int(st.face_offsets[b]), p2f)
            assert torch.equal(local, one.fragments.pix_to_face[0, ..., 0].long()), (mode, b)
            (g_one,) = torch.autograd.grad((one.rgb[0] * w[b]).sum() + one.alpha.sum(), verts[b])
            assert g_one.abs().max() > 1e-3
            assert torch.allclose(g_all[b], g_one, atol=1e-9), (mode, b)
