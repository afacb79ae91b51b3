"""Analytic SDFs and dense grids: values against closed forms, gradients against finite differences (gradcheck)."""

import numpy as np
import pytest
import torch

from engine.fields import sdf as S
from engine.fields.grid import DenseGrid, sample_grid

PRIMITIVES = {
    "sphere": S.Sphere(0.5), "box": S.Box([0.3, 0.4, 0.5]), "round_box": S.RoundBox([0.3, 0.4, 0.5], 0.1),
    "capsule": S.Capsule(0.3, 0.2), "cylinder": S.Cylinder(0.3, 0.4), "torus": S.Torus(0.5, 0.2),
    "plane": S.Plane([0.2, 0.3, 1.0], 0.1), "superquadric": S.Superquadric([0.5, 0.6, 0.7], 0.5, 1.3),
    "superquadric_power": S.Superquadric([0.5, 0.6, 0.7], 0.5, 1.3, mode="power"),
}


def _points(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, dtype=torch.float64, generator=g) * 2 - 1


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_gradients_wrt_points_and_params_match_finite_differences(name):
    shape = PRIMITIVES[name]
    pts = _points().requires_grad_(True)
    prm = shape.params.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, k: S._op(shape.kind)(p, k), (pts, prm), eps=1e-6, atol=1e-6)


def _reference(name, p):
    """Closed-form / numpy references (independent of the Taichi code)."""
    x, y, z = p.T
    if name == "sphere":
        return np.linalg.norm(p, axis=1) - 0.5
    if name in ("box", "round_box"):
        r = 0.1 if name == "round_box" else 0.0
        q = np.abs(p) - (np.array([0.3, 0.4, 0.5]) - r)
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0) - r
    if name == "cylinder":
        dr, dz = np.hypot(x, y) - 0.4, np.abs(z) - 0.3
        return np.minimum(np.maximum(dr, dz), 0) + np.hypot(np.maximum(dr, 0), np.maximum(dz, 0))
    if name == "capsule":
        zc = np.clip(z, -0.3, 0.3)
        return np.sqrt(x ** 2 + y ** 2 + (z - zc) ** 2) - 0.2
    if name == "torus":
        return np.sqrt((np.hypot(x, y) - 0.5) ** 2 + z ** 2) - 0.2
    if name == "plane":
        n = np.array([0.2, 0.3, 1.0])
        return p @ n / np.linalg.norm(n) + 0.1
    raise KeyError(name)


@pytest.mark.parametrize("name", ["sphere", "box", "round_box", "capsule", "cylinder", "torus", "plane"])
def test_values_match_closed_forms(name):
    p = _points(500, seed=1)
    assert np.allclose(PRIMITIVES[name](p).numpy(), _reference(name, p.numpy()), atol=1e-12)


def test_exact_sdfs_satisfy_eikonal():
    p = _points(400, seed=2)
    for name in ("sphere", "box", "round_box", "capsule", "cylinder", "torus", "plane"):
        g = S.gradient(PRIMITIVES[name], p)
        assert torch.allclose(torch.linalg.norm(g, dim=1), torch.ones(len(p), dtype=p.dtype), atol=1e-6), name


def test_superquadric_radial_is_exact_for_a_sphere_and_sign_correct():
    sq = S.Superquadric([0.7, 0.7, 0.7], 1.0, 1.0)
    p = _points(300, seed=5)
    assert torch.allclose(sq(p), torch.linalg.norm(p, dim=1) - 0.7, atol=1e-9)
    box_like = S.Superquadric([0.5, 0.4, 0.3], 0.3, 0.6)
    io = S.Superquadric([0.5, 0.4, 0.3], 0.3, 0.6, mode="power")
    assert torch.equal(box_like(p) < 0, io(p) < 0)
    # The radial distance is measured along the ray, so it is at least the true distance: check against dense
    # samples of the superquadric surface mesh (their nearest-sample distance overestimates by < 2e-3).
    from engine.fields.mesh import sample_surface, superquadric_mesh

    v, f = superquadric_mesh(0.3, 0.6, [0.5, 0.4, 0.3], level=4)
    surface, _ = sample_surface(v, f, 300000, generator=torch.Generator().manual_seed(0))
    q = _points(40, seed=7) * 0.2 + torch.tensor([0.3, 0.0, 0.6], dtype=torch.float64)
    assert torch.all(box_like(q) >= torch.cdist(q, surface).min(1).values - 2e-3)


def test_transforms_and_csg():
    p = _points(300, seed=8)
    a, b = S.Sphere(0.5), S.Box([0.3, 0.3, 0.3])
    assert torch.equal((a | b)(p), torch.minimum(a(p), b(p)))
    assert torch.equal((a & b)(p), torch.maximum(a(p), b(p)))
    assert torch.equal((a - b)(p), torch.maximum(a(p), -b(p)))
    t = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    R = S.rotation_matrix([1.0, 2.0, 0.5], 0.7)
    moved = b.rotate(R).translate(t)
    assert torch.allclose(moved(p), b((p - t) @ R), atol=1e-12)
    # Rotating a box moves its corner to R @ corner.
    corner = R @ torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64) + t
    assert abs(moved(corner[None]).item()) < 1e-12
    assert torch.allclose(a.scale(2.0)(p), torch.linalg.norm(p, dim=1) - 1.0, atol=1e-12)
    for smooth, hard in ((S.smooth_union, a | b), (S.smooth_intersection, a & b), (S.smooth_difference, a - b)):
        d_s, d_h = smooth(a, b, 0.1)(p), hard(p)
        assert torch.all((d_s - d_h).abs() <= 0.1 / 4 + 1e-12)  # the blend deviates by at most k / 4
    far = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    assert S.smooth_union(a, b, 0.1)(far).item() == pytest.approx((a | b)(far).item())


def test_gradients_flow_to_transform_and_primitive_parameters():
    r = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    shape = S.Sphere(0.0)
    shape.params = r.reshape(1)
    d = shape.translate(t)(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    d.sum().backward()
    assert r.grad.item() == pytest.approx(-1.0) and t.grad[0].item() == pytest.approx(-1.0)
    n = S.normals(S.Torus(0.5, 0.2), torch.tensor([[0.8, 0.0, 0.0]], dtype=torch.float64))
    assert n[0].tolist() == pytest.approx([1.0, 0.0, 0.0])


@pytest.mark.parametrize("dim", [2, 3])
def test_grid_sampling_is_exact_on_linear_fields_and_gradchecks(dim):
    res = (5, 6, 7)[:dim]
    lo, hi = (-1.0, -0.5, 0.0)[:dim], (1.0, 0.5, 2.0)[:dim]
    coef = torch.tensor([0.3, -1.2, 0.7][:dim], dtype=torch.float64)
    grid = DenseGrid(res, lo, hi, init=lambda x: x @ coef + 0.25)
    g = torch.Generator().manual_seed(dim)
    lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    p = lo_t + torch.rand(50, dim, dtype=torch.float64, generator=g) * (hi_t - lo_t)
    assert torch.allclose(grid(p), p @ coef + 0.25, atol=1e-12)  # multilinear interpolation reproduces affine
    vals = torch.rand(res, dtype=torch.float64, generator=g).requires_grad_(True)
    pts = p[:6].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, x: sample_grid(v, x, lo, hi), (vals, pts), eps=1e-6, atol=1e-6)


def test_grid_matches_torch_grid_sample_and_clamps_outside():
    g = torch.Generator().manual_seed(9)
    vals = torch.rand(4, 5, 6, dtype=torch.float64, generator=g)
    p = torch.rand(100, 3, dtype=torch.float64, generator=g) * 2 - 1
    ours = sample_grid(vals, p, (-1, -1, -1), (1, 1, 1))
    # torch's grid_sample indexes (x, y, z) as (W, H, D): flip to our (n0, n1, n2) order.
    ref = torch.nn.functional.grid_sample(vals[None, None], p.flip(1)[None, None, None], align_corners=True)
    assert torch.allclose(ours, ref.reshape(-1), atol=1e-12)
    out = torch.tensor([[5.0, 0.0, 0.0]], dtype=torch.float64)
    edge = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert sample_grid(vals, out, (-1,) * 3, (1,) * 3).item() == pytest.approx(
        sample_grid(vals, edge, (-1,) * 3, (1,) * 3).item())
