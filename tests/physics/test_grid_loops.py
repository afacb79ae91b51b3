"""The grid-node loops (``grid``, ``grid_adjoint``) visit every node of their box once with the right (i, j[, k]), and
no other, in both CPU variants (small scenes: serialised; larger ones: parallel over rows). Checked against torch's own
indexing on anisotropic grids, where a swapped axis or a wrong row split would show (an error of a whole node index;
the 1e-9 tolerance only absorbs Taichi's fast-math arithmetic, ~1e-10 here)."""
import pytest
import torch

from engine import backend
from engine.physics import kernels
from engine.physics.model import SEPARATE, STICKY


def _grid(res, dtype):
    """Momentum that encodes each node's index (mv = m·(i, j[, k])), mass 1 or 2, and a few empty nodes."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(r, dtype=dtype) for r in res], indexing="ij"), -1)
    m = 1.0 + (torch.arange(idx[..., 0].numel()) % 2).to(dtype).reshape(res)
    m.view(-1)[::7] = 0.0
    mv = m[..., None] * idx
    mv[m == 0] = 0.0
    return idx, mv, m


def _call(k, name, mv, m, res, bound, kind, *extra, box=None):
    dim = len(res)
    if box is None:  # the whole grid
        box = torch.tensor([0] * dim + list(res), dtype=torch.int32)
    dtype = mv.dtype
    g = (0.0, -9.8) + (0.0,) * (dim - 2)
    cols = (res[0],) if dim == 2 else (res[0], res[2])
    heights = torch.full(cols, bound / 10.0, dtype=dtype)  # dx = 0.1: the floor stops the bottom `bound` rows
    normals = torch.zeros(*cols, dim, dtype=dtype)
    normals[..., 1] = 1.0
    getattr(k, name)(box, mv, m, g, 1e-3, 0.1, bound, heights, normals, kind, 0.0, kind, 0.0, (1e30,) * dim,
                     (-1e30,) * dim, *extra)


@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("res", [(5, 7), (5, 7, 9)])
def test_grid_loops_visit_every_node_with_its_index(res, small):
    dtype = backend.torch_dtype()
    k = kernels.build(len(res), backend.real(), kernels.serial_scatter(), small)
    idx, mv, m = _grid(res, dtype)
    gv_expect = torch.where((m > 0)[..., None], idx, torch.zeros_like(idx))
    gv_expect[..., 1] -= torch.where(m > 0, 9.8e-3, 0.0).to(dtype)

    # no walls (bound 0, separating): v = mv/m + dt·g at nodes with mass, 0 elsewhere
    gv = torch.full_like(mv, float("nan"))
    _call(k, "grid", mv, m, res, 0, SEPARATE, gv)
    assert torch.allclose(gv, gv_expect, rtol=1e-9, atol=1e-9)

    # sticky walls one node deep on every side (the floor via the heightfield): exactly the outer layer is still
    gv = torch.full_like(mv, float("nan"))
    _call(k, "grid", mv, m, res, 1, STICKY, gv)
    outer = torch.zeros(res, dtype=torch.bool)
    for d, r in enumerate(res):
        outer |= (idx[..., d] == 0) | (idx[..., d] == r - 1)
    assert torch.equal(gv[outer], torch.zeros_like(gv[outer]))
    assert torch.allclose(gv[~outer], gv_expect[~outer], rtol=1e-9, atol=1e-9)

    # a box inside the grid (as P2G leaves it): exactly its nodes are visited
    lo, hi = [1, 2, 3][:len(res)], [4, 5, 7][:len(res)]
    gv = torch.full_like(mv, float("nan"))
    _call(k, "grid", mv, m, res, 0, SEPARATE, gv, box=torch.tensor(lo + hi, dtype=torch.int32))
    inside = torch.ones(res, dtype=torch.bool)
    for d in range(len(res)):
        inside &= (idx[..., d] >= lo[d]) & (idx[..., d] < hi[d])
    assert torch.allclose(gv[inside], gv_expect[inside], rtol=1e-9, atol=1e-9)
    assert gv[~inside].isnan().all()

    # the adjoint: g_mv = g_v/m, g_m = −g_v·mv/m² at nodes with mass (0 elsewhere), and g_v consumed (zeroed)
    g_v = torch.randn(mv.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    g_mv, g_m = torch.full_like(mv, float("nan")), torch.full_like(m, float("nan"))
    g_v_in = g_v.clone()
    _call(k, "grid_adjoint", mv, m, res, 0, SEPARATE, g_v, g_mv, g_m)
    has = m > 0
    safe = torch.where(has, m, torch.ones_like(m))
    assert torch.allclose(g_mv, torch.where(has[..., None], g_v_in / safe[..., None], 0.0), rtol=1e-9, atol=0)
    assert torch.allclose(g_m, torch.where(has, -(g_v_in * mv).sum(-1) / safe ** 2, 0.0), rtol=1e-9, atol=1e-15)
    assert not g_v.any()
