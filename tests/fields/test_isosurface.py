"""Marching cubes against scikit-image, mesh validity, and both gradients against finite differences."""
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes as sk_marching_cubes

from engine.errors import MeshError
from engine.fields import isosurface
from engine.fields._lewiner_table import derive_from_skimage as derive_lewiner
from engine.fields._lewiner_table import raw_tables as lewiner_raw
from engine.fields._mc_table import TRIANGLES, derive_from_skimage, triangle_table
from engine.fields.isosurface import (attach_field_gradients, extract_surface, marching_cubes,
                                      marching_cubes_torch)


def _coords(n):
    x = np.linspace(-1.0, 1.0, n)
    return np.meshgrid(x, x, x, indexing="ij")


def _sphere(n, r=0.6):
    X, Y, Z = _coords(n)
    return np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - r


def _torus(n):
    X, Y, Z = _coords(n)
    return np.sqrt((np.sqrt(X ** 2 + Y ** 2) - 0.55) ** 2 + Z ** 2) - 0.25


def _noisy(n, amp, seed=0):
    return _sphere(n) + amp * np.random.default_rng(seed).normal(size=(n,) * 3)


def _hausdorff(a, b):
    return max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max())


def _face_set(verts, faces, ref):
    """Faces as sets of reference-vertex ids (nearest vertex of ``ref``), winding kept as a rotation-free tuple."""
    ids = cKDTree(ref).query(verts)[1][faces]
    rolled = [tuple(np.roll(f, -int(np.argmin(f)))) for f in ids]
    return set(rolled)


def test_table_is_skimage_classic_table_and_uses_exactly_the_crossing_edges():
    assert derive_from_skimage() == TRIANGLES
    table, count = triangle_table()
    for case in range(256):
        inside = [(case >> b) & 1 for b in range(8)]
        crossing = set()
        for e in range(12):
            axis, o1, o2 = e >> 2, e & 1, (e >> 1) & 1
            lo = [o1, o2]
            lo.insert(axis, 0)
            hi = list(lo)
            hi[axis] = 1
            b0 = lo[0] | lo[1] << 1 | lo[2] << 2
            b1 = hi[0] | hi[1] << 1 | hi[2] << 2
            if inside[b0] != inside[b1]:
                crossing.add(e)
        assert set(table[case, :3 * count[case]].tolist()) == crossing, case


@pytest.mark.parametrize("name,volume,level,spacing", [
    ("sphere", _sphere(33), 0.0, (1.0, 1.0, 1.0)),
    ("torus", _torus(40), 0.0, (0.5, 1.0, 2.0)),
    ("sphere_level", _sphere(30), 0.15, (1.0, 1.0, 1.0)),
    ("noisy", _noisy(36, 0.05), 0.0, (1.0, 1.0, 1.0)),
    ("noise", np.random.default_rng(3).normal(size=(20, 24, 28)), 0.1, (1.0, 0.7, 1.3)),
])
def test_matches_skimage_lorensen(name, volume, level, spacing):
    surf = marching_cubes(volume, level, spacing, method="lorensen")
    sk_v, sk_f, _, _ = sk_marching_cubes(volume, level, spacing=spacing, method="lorensen")
    assert len(surf.verts) == len(sk_v) and len(surf.faces) == len(sk_f)
    assert _hausdorff(surf.verts, sk_v.astype(np.float64)) < 1e-5
    assert _face_set(surf.verts, surf.faces, sk_v) == _face_set(sk_v, sk_f, sk_v)  # same triangles, same winding


@pytest.mark.parametrize("name,volume,level,spacing", [
    ("sphere", _sphere(33), 0.0, (1.0, 1.0, 1.0)),
    ("torus", _torus(40), 0.0, (0.5, 1.0, 2.0)),
    ("noisy", _noisy(36, 0.05), 0.0, (1.0, 1.0, 1.0)),
    ("very_noisy", _noisy(30, 0.2, seed=1), 0.0, (1.0, 1.0, 1.0)),
    ("noise", np.random.default_rng(3).normal(size=(20, 24, 28)), 0.1, (1.0, 0.7, 1.3)),
    ("noise_f32", np.random.default_rng(7).normal(size=(32, 32, 32)).astype(np.float32), -0.2, (1.0, 1.0, 1.0)),
])
def test_default_matches_skimage_default_lewiner(name, volume, level, spacing):
    surf = marching_cubes(volume, level, spacing)  # default method: Lewiner, as skimage
    sk_v, sk_f, _, _ = sk_marching_cubes(volume, level, spacing=spacing)
    assert _hausdorff(surf.verts, sk_v.astype(np.float64)) < 1e-5
    assert len(surf.verts) == len(sk_v) and len(surf.faces) == len(sk_f)
    assert _face_set(surf.verts, surf.faces, sk_v) == _face_set(sk_v, sk_f, sk_v)  # same triangles, same winding
    if name.startswith(("very", "noise")):
        assert (surf.ends[:, 1] < 0).any()  # the fields do exercise the inner-vertex tilings


def test_lewiner_tables_are_skimage_tables():
    ours, theirs = lewiner_raw(), derive_lewiner()
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("seed", [11])
def test_lewiner_resolves_every_ambiguous_class_like_skimage(seed):
    """White noise: every ambiguous case class and its sub-cases, many times, against skimage."""
    volume = np.random.default_rng(seed).normal(size=(26, 27, 28))
    surf = marching_cubes(volume, 0.0)
    sk_v, sk_f, _, _ = sk_marching_cubes(volume, 0.0)
    assert _hausdorff(surf.verts, sk_v.astype(np.float64)) < 1e-5
    assert _face_set(surf.verts, surf.faces, sk_v) == _face_set(sk_v, sk_f, sk_v)
    classes = {int(isosurface._LEW["cls"][c]) for c in _cases(volume)}
    assert {3, 4, 6, 7, 10, 12, 13} <= classes


def _cases(volume):
    """tide case index of every cell (bit b set when corner (b & 1, b >> 1 & 1, b >> 2 & 1) is <= 0)."""
    inside = volume <= 0
    case = np.zeros(tuple(n - 1 for n in volume.shape), dtype=np.int64)
    for b in range(8):
        d = (b & 1, (b >> 1) & 1, (b >> 2) & 1)
        case |= inside[d[0]:volume.shape[0] - 1 + d[0], d[1]:volume.shape[1] - 1 + d[1],
                       d[2]:volume.shape[2] - 1 + d[2]].astype(np.int64) << b
    return case.reshape(-1)


def test_lewiner_mesh_of_a_closed_noisy_field_is_watertight():
    volume = _noisy(24, 0.3, seed=5)
    volume[[0, -1], :, :] = 1.0  # closed: outside on the border
    volume[:, [0, -1], :] = 1.0
    volume[:, :, [0, -1]] = 1.0
    lew = marching_cubes(volume, 0.0).to_trimesh()
    assert lew.is_watertight and lew.is_winding_consistent


@pytest.mark.parametrize("method", ["lewiner", "lorensen"])
def test_mask_follows_skimage(method):
    rng = np.random.default_rng(5)
    volume = _noisy(16, 0.3, seed=2)
    mask = rng.random(volume.shape) > 0.4
    surf = marching_cubes(volume, 0.0, mask=mask, method=method)
    sk_v, sk_f, _, _ = sk_marching_cubes(volume, 0.0, method=method, mask=mask)
    assert len(surf.verts) == len(sk_v)
    assert _hausdorff(surf.verts, sk_v.astype(np.float64)) < 1e-5
    assert _face_set(surf.verts, surf.faces, sk_v) == _face_set(sk_v, sk_f, sk_v)


def _check_clean(surf):
    f = surf.faces
    assert f.min() >= 0 and f.max() < len(surf.verts)
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])), "degenerate face"
    assert len(np.unique(np.sort(f, axis=1), axis=0)) == len(f), "duplicate face"
    assert len(np.unique(surf.verts, axis=0)) == len(surf.verts), "duplicate vertex"
    assert len(np.unique(f)) == len(surf.verts), "unreferenced vertex"


def test_closed_surface_is_watertight_shared_and_outward():
    surf = marching_cubes(_sphere(41), 0.0, spacing=(2 / 40,) * 3)
    _check_clean(surf)
    mesh = surf.to_trimesh()
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.6 ** 3, rel=0.02)  # positive: normals point outward
    tri = surf.verts[surf.faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.linalg.norm(normal, axis=1).min() > 1e-9  # the samples exactly on the sphere gave no slivers
    assert np.all(np.einsum("ij,ij->i", normal, tri.mean(1) - surf.verts.mean(0)) > 0)


@pytest.mark.parametrize("method", ["lewiner", "lorensen"])
@pytest.mark.parametrize("kind", ["plane", "quantised"])
def test_surface_through_grid_samples_has_no_degenerate_or_duplicate_faces(kind, method):
    i, j, k = np.meshgrid(*(np.arange(12.0),) * 3, indexing="ij")
    volume = i + j - 2 * k + 3 if kind == "plane" else np.round(4 * _sphere(12)) / 4
    surf = marching_cubes(volume, 0.0, method=method)
    _check_clean(surf)
    sk_v, _, _, _ = sk_marching_cubes(volume, 0.0, method=method, allow_degenerate=False)
    assert _hausdorff(surf.verts, np.unique(sk_v.astype(np.float64), axis=0)) < 1e-5


def test_level_outside_range_gives_empty_mesh_and_bad_input_raises():
    surf = marching_cubes(_sphere(8), 5.0)
    assert surf.verts.shape == (0, 3) and surf.faces.shape == (0, 3)
    bad = _sphere(8)
    bad[3, 3, 3] = np.nan
    with pytest.raises(MeshError, match="NaN"):
        marching_cubes(bad, 0.0)
    with pytest.raises(MeshError, match="3D"):
        marching_cubes(np.zeros((4, 4)), 0.0)


def test_vertex_gradient_wrt_grid_values_matches_finite_differences():
    rng = np.random.default_rng(0)
    base = torch.tensor(_noisy(10, 0.05, seed=4))
    volume = base.clone().requires_grad_(True)
    verts, faces = marching_cubes_torch(volume, 0.0, spacing=(0.5, 1.0, 1.5))
    w = torch.tensor(rng.normal(size=verts.shape))
    (verts * w).sum().backward()
    surf = marching_cubes(base.numpy(), 0.0)
    cand = np.unique(surf.ends[surf.ends >= 0])
    eps = 1e-6
    for flat in rng.choice(cand, size=8, replace=False):
        fd = []
        for sign in (1, -1):
            vol = base.clone().reshape(-1)
            vol[flat] += sign * eps
            v2, f2 = marching_cubes_torch(vol.reshape(base.shape), 0.0, spacing=(0.5, 1.0, 1.5))
            assert torch.equal(f2, faces)  # same topology for a tiny step
            fd.append((v2 * w).sum().item())
        numeric = (fd[0] - fd[1]) / (2 * eps)
        assert volume.grad.reshape(-1)[flat].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_inner_vertex_gradient_matches_finite_differences():
    """Lewiner's vertices inside cells (weighted corner averages) also get their gradient right."""
    rng = np.random.default_rng(2)
    base = torch.tensor(_noisy(9, 0.3, seed=6))
    volume = base.clone().requires_grad_(True)
    verts, faces = marching_cubes_torch(volume, 0.0, spacing=(0.5, 1.0, 1.5))
    surf = marching_cubes(base.numpy(), 0.0)
    inner = surf.ends[:, 1] < 0
    assert inner.sum() >= 2
    w = torch.tensor(rng.normal(size=verts.shape)) * torch.tensor(inner)[:, None]  # loss on inner vertices only
    (verts * w).sum().backward()
    strides = np.array([base.shape[1] * base.shape[2], base.shape[2], 1])
    corners = [c + strides @ np.array([b & 1, (b >> 1) & 1, (b >> 2) & 1]) for c in surf.ends[inner, 0] for b in range(8)]
    eps = 1e-6
    for flat in rng.choice(np.unique(corners), size=8, replace=False):
        fd = []
        for sign in (1, -1):
            vol = base.clone().reshape(-1)
            vol[flat] += sign * eps
            v2, f2 = marching_cubes_torch(vol.reshape(base.shape), 0.0, spacing=(0.5, 1.0, 1.5))
            assert torch.equal(f2, faces)
            fd.append((v2 * w).sum().item())
        numeric = (fd[0] - fd[1]) / (2 * eps)
        assert volume.grad.reshape(-1)[flat].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def _area_integral(verts, faces):
    """L = sum_f area_f * phi(centroid_f), phi(x) = x0 + 0.5 |x|^2: a surface integral, blind to vertex sliding."""
    tri = verts[faces]
    area = 0.5 * torch.linalg.norm(torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1), dim=1)
    c = tri.mean(1)
    return (area * (c[:, 0] + 0.5 * (c * c).sum(1))).sum()


def test_meshsdf_hook_gradient_matches_finite_differences_and_analytic():
    theta = torch.tensor([0.1, -0.05, 0.02, 0.55], requires_grad=True)  # centre (3), radius

    def field(x, th=theta):
        return torch.linalg.norm(x - th[:3], dim=-1) - th[3]

    lo, hi, res = (-1, -1, -1), (1, 1, 1), 48
    verts, faces = extract_surface(field, lo, hi, res)
    _area_integral(verts, faces).backward()
    grad = theta.grad.clone()
    # Sphere of centre c, radius r: L = 4 pi r^2 (c0 + 0.5 |c|^2 + r^2 / 2), differentiated in closed form.
    c, r = theta.detach()[:3], theta.detach()[3]
    analytic = torch.cat([4 * np.pi * r ** 2 * (torch.tensor([1.0, 0, 0], dtype=c.dtype) + c),
                          (8 * np.pi * r * (c[0] + 0.5 * (c * c).sum()) + 8 * np.pi * r ** 3).reshape(1)])
    h = 0.01
    for p in range(4):
        vals = []
        for sign in (1, -1):
            th = theta.detach().clone()
            th[p] += sign * h
            with torch.no_grad():
                v, f = extract_surface(lambda x, th=th: field(x, th), lo, hi, res)
                vals.append(_area_integral(v, f).item())
        fd = (vals[0] - vals[1]) / (2 * h)
        assert grad[p].item() == pytest.approx(fd, rel=0.03, abs=0.02)
        assert grad[p].item() == pytest.approx(analytic[p].item(), rel=0.03, abs=0.02)


def test_attach_field_gradients_level_variant_divides_by_gradient_norm():
    v = torch.zeros(1, 3)
    s = torch.tensor([0.0], requires_grad=True)
    g = torch.tensor([[0.0, 0.0, 2.0]])
    out = attach_field_gradients(v, s, g, kind="level")
    out[:, 2].sum().backward()
    assert s.grad.item() == pytest.approx(-0.5)  # dv = -ds * g / |g|^2
    with pytest.raises(ValueError):
        attach_field_gradients(v, s, g, kind="nope")
