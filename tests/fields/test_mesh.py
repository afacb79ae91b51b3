"""Mesh utilities against trimesh, scipy and closed-form references."""
import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from engine.errors import MeshError
from engine.fields import mesh as M


def test_icosphere_counts_radius_and_outward_watertight():
    for level in (0, 1, 3):
        v, f = M.icosphere(level, radius=2.0)
        assert v.shape == (10 * 4 ** level + 2, 3) and f.shape == (20 * 4 ** level, 3)
        assert torch.allclose(torch.linalg.norm(v, dim=1), torch.tensor(2.0, dtype=v.dtype))
        tm = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
        assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0
    assert tm.volume == pytest.approx(4 / 3 * math.pi * 8, rel=0.02)


@pytest.mark.parametrize("e1,e2", [(1.0, 1.0), (0.5, 1.5), (0.2, 0.3), (1.8, 0.8)])
def test_superquadric_vertices_satisfy_inside_outside_function(e1, e2):
    eps1 = torch.tensor(e1, requires_grad=True)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=eps1.dtype, requires_grad=True)
    v, f = M.superquadric_mesh(eps1, e2, scale, level=2)
    a = (v / scale).abs().detach()
    F = (a[:, 0] ** (2 / e2) + a[:, 1] ** (2 / e2)) ** (e2 / e1) + a[:, 2] ** (2 / e1)
    assert torch.allclose(F, torch.ones_like(F), atol=1e-6)
    v.square().sum().backward()
    assert torch.isfinite(eps1.grad) and torch.isfinite(scale.grad).all()
    tm = trimesh.Trimesh(v.detach().numpy(), f.numpy(), process=False)
    assert tm.volume > 0


def test_sampling_area_vs_face_weighting_and_points_on_faces():
    verts = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [0, 3, 0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 3, 4]])  # areas 0.5 and 4.5
    g = torch.Generator().manual_seed(0)
    pts, idx = M.sample_surface(verts, faces, 40000, "area", generator=g)
    assert (idx == 0).double().mean().item() == pytest.approx(0.1, abs=0.01)
    pts_f, idx_f = M.sample_surface(verts, faces, 40000, "face", generator=g)
    assert (idx_f == 0).double().mean().item() == pytest.approx(0.5, abs=0.01)
    for p, i, leg in ((pts, idx, (1.0, 3.0)), (pts_f, idx_f, (1.0, 3.0))):
        limit = torch.tensor(leg, dtype=p.dtype)[i]
        assert torch.all(p[:, 2] == 0) and torch.all(p[:, :2] >= 0) and torch.all(p[:, :2].sum(1) <= limit + 1e-12)
    # Uniform over area: the mean of points on the big triangle is its centroid.
    assert pts[idx == 1, :2].mean(0).numpy() == pytest.approx([1.0, 1.0], abs=0.02)


def _tetra():
    v = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    return v, f


def test_regularisers_against_references():
    v, f = _tetra()
    tm = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert tm.volume > 0
    assert M.edge_length_loss(v, f).item() == pytest.approx(np.mean(tm.edges_unique_length ** 2))
    assert M.edge_length_loss(v, f, target=1.0).item() == pytest.approx(np.mean((tm.edges_unique_length - 1) ** 2))
    # Every tetrahedron vertex neighbours the other three: mean(neighbours) - v = (sum - 4 v) / 3 = -4 v / 3.
    assert M.laplacian_loss(v, f).item() == pytest.approx((16 / 9) * 3.0)
    # Outward normals of adjacent regular-tetrahedron faces meet at cos = -1/3.
    assert M.normal_consistency_loss(v, f).item() == pytest.approx(4 / 3)
    assert M.normal_consistency_loss(*M.icosphere(4)).item() < 1e-2


def test_laplacian_smoothing_denoises_a_sphere():
    v, f = M.icosphere(3)
    noisy = v + 0.03 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=v.dtype)
    smooth = M.laplacian_smooth(noisy, f, iterations=5)
    # Roughness = spread of the radius relative to its mean (plain smoothing also shrinks the sphere).
    err = lambda x: (torch.linalg.norm(x, dim=1).std() / torch.linalg.norm(x, dim=1).mean()).item()  # noqa: E731
    assert err(smooth) < 0.5 * err(noisy)
    assert M.laplacian_loss(smooth, f) < M.laplacian_loss(noisy, f)


@pytest.mark.parametrize("squared", [True, False])
def test_chamfer_methods_agree_with_scipy_and_have_gradients(squared):
    rng = np.random.default_rng(0)
    a = torch.tensor(rng.normal(size=(300, 3)), requires_grad=True)
    b = torch.tensor(rng.normal(size=(200, 3)) + 0.3)
    da, db = cKDTree(b.numpy()).query(a.detach().numpy())[0], cKDTree(a.detach().numpy()).query(b.numpy())[0]
    ref = (da ** 2).mean() + (db ** 2).mean() if squared else da.mean() + db.mean()
    for method in ("kdtree", "torch"):
        assert M.chamfer_distance(a, b, method, squared).item() == pytest.approx(ref, rel=1e-9)
    M.chamfer_distance(a, b, "kdtree", squared).backward()
    i = 7
    eps = 1e-6
    vals = []
    for s in (1, -1):
        a2 = a.detach().clone()
        a2[i, 0] += s * eps
        vals.append(M.chamfer_distance(a2, b, "torch", squared).item())
    assert a.grad[i, 0].item() == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-4, abs=1e-8)


def test_particles_to_mesh_closes_a_ball():
    h = 0.04
    g = np.arange(-0.5, 0.5 + 1e-9, h)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    pts = pts[np.linalg.norm(pts, axis=1) <= 0.5]
    mesh = M.particles_to_mesh(pts, voxel_size=0.02, radius=1.5 * h)
    assert mesh.is_watertight and mesh.is_winding_consistent
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert r.min() > 0.45 and r.max() < 0.6
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.52 ** 3, rel=0.12)


def test_bad_meshes_raise_clear_errors():
    v, f = _tetra()
    with pytest.raises(MeshError, match="empty"):
        M.check_mesh(v[:0], f[:0])
    bad = v.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(MeshError, match="NaN"):
        M.sample_surface(bad, f, 10)
    with pytest.raises(MeshError, match="indices span"):
        M.laplacian_smooth(v, f + 1)
    with pytest.raises(MeshError, match=r"\(F, 3\)"):
        M.check_mesh(v, f[:, :2])
    with pytest.raises(MeshError, match="NaN"):
        M.particles_to_mesh(np.full((3, 3), np.nan), 0.1)
    with pytest.raises(MeshError, match="empty|point"):
        M.chamfer_distance(torch.zeros(0, 3), torch.zeros(4, 3))
