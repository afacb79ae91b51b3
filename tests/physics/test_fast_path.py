"""The fused forward-only path (Solver.step without a scratch) against the staged differentiable kernels, which
serve as the reference: every material, muscles driven, terrain and colliders, 2D and 3D, f64."""
import numpy as np
import pytest
import torch

from engine.physics import Boundary, Control, ModelBuilder, Solver, materials, terrain


def _zoo(dim, n=24):
    """One small box of each material, sheared and thrown at a bumpy floor, plus two driven muscle groups."""
    res = (n,) * dim
    dx = 1 / n
    b = ModelBuilder(res=res, dx=dx, ppc=2)
    rng = np.random.default_rng(0)
    size = 0.09
    for i, name in enumerate(materials.NAMES):
        lo = [0.15 + (i % 3) * 0.25, 0.25 + (i // 3) * 0.2] + [0.3] * (dim - 2)
        hi = [l + size for l in lo]
        b.add_box(lo, hi, material=name, E=3e3, nu=0.3, rho=1e3, velocity=rng.normal(0, 0.5, dim),
                  group=(i % 2) if name == "muscle" else None)
    heights, normals = terrain.heightfield(res, dx, base=0.15, amplitude=0.04, seed=1)
    m = b.finalize(boundary=Boundary(floor="separate", floor_friction=0.4, walls="slip"), heights=heights,
                   normals=normals)
    return m


@pytest.mark.parametrize("dim,n", [(2, 24), (3, 24), (3, 48)])
def test_fused_forward_equals_staged_kernels(dim, n):
    # 3D 48^3 is past kernels.SMALL_NODES: on a multi-core CPU its forward-only substep is ``substep_chunked``
    # (P2G in per-thread chunks into grid copies), which must agree with the serial P2G up to round-off
    m = _zoo(dim, n)
    s = Solver(m)
    # "generated": the differentiable substep on the staged kernels (deform, SVD, stress, P2G as separate launches);
    # the default solver's differentiable forward is the fused substep kernel too, checked as well
    ref = Solver(m, stress_adjoint="generated")
    g = torch.Generator().manual_seed(0)
    a_fast, a_ref = m.state(), m.state()
    a_fast.v += 0.8 * torch.randn(m.n, dim, generator=g, dtype=a_fast.v.dtype)  # shear so plasticity acts
    a_ref.copy_(a_fast)
    b_fast, b_ref = a_fast.empty_like(), a_ref.empty_like()
    a_twin, b_twin = a_fast.clone(), a_fast.empty_like()
    sc, sc_twin = ref.new_scratch(), s.new_scratch()
    for t in range(30):
        ctrl = Control(torch.full((m.n_groups,), 0.3 * np.sin(t / 5), dtype=a_fast.x.dtype))
        s.step(a_fast, b_fast, ctrl, 5e-4)
        ref.step(a_ref, b_ref, ctrl, 5e-4, scratch=sc)
        s.step(a_twin, b_twin, ctrl, 5e-4, scratch=sc_twin)
        a_fast, b_fast, a_ref, b_ref, a_twin, b_twin = b_fast, a_fast, b_ref, a_ref, b_twin, a_twin
    for name, x, y, z in zip(a_fast.NAMES, a_fast.tensors(), a_ref.tensors(), a_twin.tensors()):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12), (name, float((x - y).abs().max()))
        assert torch.allclose(x, z, rtol=1e-10, atol=1e-12), (name, float((x - z).abs().max()))
    assert float((a_fast.x - m.x0).abs().max()) > 0.01  # it moved
