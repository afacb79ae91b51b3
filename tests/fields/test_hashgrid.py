"""Hash-grid encoding: against a numpy reference, gradcheck, and fitting a known SDF."""
import numpy as np
import pytest
import torch

from engine.fields import hashgrid
from engine.fields.hashgrid import HashGrid, hash_encode, hash_encode_torch, level_resolutions
from engine.fields.mlp import NeuralField


def _reference(points, table, res):
    """Plain numpy Instant-NGP encoding (loops; independent of the Taichi kernel)."""
    L, T, F = table.shape
    out = np.zeros((len(points), L * F))
    for n, p in enumerate(points):
        for level, r in enumerate(res):
            g = p * r
            base = np.clip(np.floor(g).astype(np.int64), 0, r - 1)
            frac = g - base
            for c in range(8):
                d = np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1])
                corner = base + d
                w = np.prod(np.where(d, frac, 1 - frac))
                if (r + 1) ** 3 <= T:
                    row = corner[0] + (r + 1) * (corner[1] + (r + 1) * corner[2])
                else:
                    h = (int(corner[0]) ^ (int(corner[1]) * 2654435761) ^ (int(corner[2]) * 805459861)) & 0xFFFFFFFF
                    row = h % T
                out[n, level * F:(level + 1) * F] += w * table[level, row]
    return out


def test_encoding_matches_numpy_reference_dense_and_hashed_levels():
    res = level_resolutions(3, 2, 12)
    assert res.tolist() == [2, 4, 12]
    g = torch.Generator().manual_seed(0)
    table = torch.randn(3, 64, 2, dtype=torch.float64, generator=g)  # 64 >= 3^3 (dense), < 5^3, 13^3 (hashed)
    pts = torch.rand(40, 3, dtype=torch.float64, generator=g)
    ours = hash_encode(pts, table, res)
    assert np.allclose(ours.numpy(), _reference(pts.numpy(), table.numpy(), res), atol=1e-12)


def test_encoding_matches_numpy_reference_with_table_size_not_a_power_of_two():
    res = level_resolutions(2, 3, 9)
    g = torch.Generator().manual_seed(4)
    table = torch.randn(2, 48, 3, dtype=torch.float64, generator=g)
    pts = torch.rand(30, 3, dtype=torch.float64, generator=g)
    assert np.allclose(hash_encode(pts, table, res).numpy(), _reference(pts.numpy(), table.numpy(), res), atol=1e-12)


def test_gradcheck_table_and_points():
    res = level_resolutions(2, 2, 5)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(2, 32, 2, dtype=torch.float64, generator=g).requires_grad_(True)
    pts = (torch.rand(5, 3, dtype=torch.float64, generator=g) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, t: hash_encode(p, t, res), (pts, table), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", ["atomic", "by_level"])
def test_gradients_match_finite_differences_with_hash_collisions(kernel, monkeypatch):
    """Hashed levels with many points per table row (the scatter), against central differences, for both adjoint
    kernels (atomic: GPUs; one thread per level: CPUs)."""
    monkeypatch.setattr(hashgrid, "_FORCE_GRAD_KERNEL", kernel)
    res = level_resolutions(3, 3, 20)
    g = torch.Generator().manual_seed(2)
    table = torch.randn(3, 16, 2, dtype=torch.float64, generator=g)
    pts = torch.rand(300, 3, dtype=torch.float64, generator=g) * 0.98 + 0.01
    wout = torch.randn(300, 6, dtype=torch.float64, generator=g)
    t = table.clone().requires_grad_(True)
    p = pts.clone().requires_grad_(True)
    (hash_encode(p, t, res) * wout).sum().backward()
    eps = 1e-6
    for idx in [(0, 3, 0), (1, 7, 1), (2, 15, 0), (2, 0, 1)]:
        tp, tm = table.clone(), table.clone()
        tp[idx] += eps
        tm[idx] -= eps
        fd = ((hash_encode(pts, tp, res) - hash_encode(pts, tm, res)) * wout).sum() / (2 * eps)
        assert t.grad[idx].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)
    for idx in [(0, 0), (17, 1), (299, 2)]:
        pp, pm = pts.clone(), pts.clone()
        pp[idx] += eps
        pm[idx] -= eps
        fd = ((hash_encode(pp, table, res) - hash_encode(pm, table, res)) * wout).sum() / (2 * eps)
        assert p.grad[idx].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)


def test_torch_reference_agrees_and_table_only_backward_skips_points():
    res = level_resolutions(4, 4, 64)
    g = torch.Generator().manual_seed(3)
    table = torch.randn(4, 512, 2, dtype=torch.float64, generator=g)
    pts = torch.rand(2000, 3, dtype=torch.float64, generator=g)
    wout = torch.randn(2000, 8, dtype=torch.float64, generator=g)
    t1, t2 = table.clone().requires_grad_(True), table.clone().requires_grad_(True)
    out = hash_encode(pts, t1, res)
    ref = hash_encode_torch(pts, t2, res)
    assert torch.allclose(out, ref, atol=1e-12)
    (out * wout).sum().backward()
    (ref * wout).sum().backward()
    assert torch.allclose(t1.grad, t2.grad, atol=1e-10)


@pytest.mark.slow
def test_fit_a_torus_sdf():
    torch.manual_seed(0)

    def torus(x):
        return torch.sqrt((torch.linalg.norm(x[:, :2], dim=1) - 0.5) ** 2 + x[:, 2] ** 2) - 0.2

    field = NeuralField(n_levels=6, log2_size=14, base_resolution=4, max_resolution=48, hidden=32)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for it in range(150):
        x = torch.rand(1024, 3, dtype=torch.float64, generator=g) * 2 - 1
        loss = (field(x) - torus(x)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = torch.rand(4000, 3, dtype=torch.float64, generator=g) * 2 - 1
    with torch.no_grad():
        err = (field(test) - torus(test)).abs()
    near = torus(test).abs() < 0.1  # the band a mesh extraction reads; far values only need the right sign
    assert err[near].mean().item() < 0.01 and err.mean().item() < 0.03, (err[near].mean().item(), err.mean().item())


def test_module_maps_box_to_unit_cube():
    enc = HashGrid(lo=(-2, -2, -2), hi=(2, 2, 2), n_levels=2, log2_size=8, base_resolution=2, max_resolution=4)
    x = torch.tensor([[0.0, 1.0, -2.0]], dtype=torch.float64)
    unit = (x + 2) / 4
    assert torch.allclose(enc(x), hash_encode(unit, enc.table, enc.resolutions))
