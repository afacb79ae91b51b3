"""Hash-grid encoding: against a numpy reference, gradcheck, and fitting a known SDF."""
import numpy as np
import pytest
import torch

from engine.fields.hashgrid import HashGrid, hash_encode, level_resolutions
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


def test_gradcheck_table_and_points():
    res = level_resolutions(2, 2, 5)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(2, 32, 2, dtype=torch.float64, generator=g).requires_grad_(True)
    pts = (torch.rand(5, 3, dtype=torch.float64, generator=g) * 0.9 + 0.05).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, t: hash_encode(p, t, res), (pts, table), eps=1e-6, atol=1e-6)


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
