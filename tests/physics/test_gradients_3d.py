"""3D rollout gradients against central finite differences (f64): a block of each material (the SVD-based ones
through the 3D SVD and their hand-written stress adjoints), a few hundred particles on a 12³ grid, 12 substeps,
with yield stresses low enough that clay and mud yield (sand and snow do anyway; the test asserts it).

Measured (2-core box, f64, advanced_optimization off, load ~9): relative errors 6e-11–7e-8 for x0 and v0, 3e-7–3e-5
for E and ν (FD round-off: their steps move the loss by ~1e-8 of its size). Marked slow: 3D kernels compile
(about 1 min cold for all materials together at load 9; from the offline cache the test takes a few seconds)."""
import pytest
import torch

from engine.physics import ModelBuilder, Solver, materials
from engine.physics.checkpoint import Rollout
from tests.physics.test_gradients import _yielded

T, DT, EPS = 12, 5e-4, 1e-6
YIELDING = materials.MaterialTable(clay_yield=2.0, mud_yield=2.0)  # low: clay and mud yield within 12 substeps


def _case(material):
    b = ModelBuilder(res=(12, 12, 12), dx=1 / 12, ppc=2)
    b.add_box((0.3, 0.3, 0.3), (0.63, 0.55, 0.63), material=material, E=2e3, nu=0.3, rho=1e3,
              velocity=(0.4, -1.0, 0.2))
    m = b.finalize(table=YIELDING)
    g = torch.Generator().manual_seed(0)
    v0 = m.v0 + 0.5 * torch.randn(m.n, 3, generator=g, dtype=torch.float64)  # shear so stresses and plasticity act
    wx, wv = (torch.randn(m.n, 3, generator=g, dtype=torch.float64) for _ in range(2))
    return m, Solver(m), v0, wx, wv


def _loss(solver, x0, v0, wx, wv, params=None):
    ro = Rollout(solver, T, DT, segment=5)
    x, v, _ = ro.run(x0, v0, params)
    return float((wx * x).sum() + (wv * v).sum()), ro


@pytest.mark.slow
@pytest.mark.parametrize("material", ["elastic", "water", "corotated", "ice", "sand", "snow", "clay", "mud"])
def test_3d_rollout_gradients_match_finite_differences(material):
    m, s, v0, wx, wv = _case(material)
    assert 200 <= m.n <= 600 and s.hand_stress
    _, ro = _loss(s, m.x0, v0, wx, wv)
    n_yield = _yielded(material, m, ro)
    assert n_yield is None or n_yield >= m.n // 20, n_yield  # the plastic materials' return mappings act
    g = ro.grad(wx, wv)
    gen = torch.Generator().manual_seed(1)
    checks = [("x0", m.x0, torch.randn(m.n, 3, generator=gen, dtype=torch.float64), lambda p: dict(x0=p)),
              ("v0", v0, torch.randn(m.n, 3, generator=gen, dtype=torch.float64), lambda p: dict(v0=p)),
              ("E", m.E, m.E * torch.rand(m.n, generator=gen, dtype=torch.float64), lambda p: dict(E=p)),
              ("nu", m.nu, 0.1 * torch.rand(m.n, generator=gen, dtype=torch.float64), lambda p: dict(nu=p))]
    for name, base, d, kw in checks:
        def f(p):
            a = dict(x0=m.x0, v0=v0, E=m.E, nu=m.nu)
            a.update(kw(p))
            return _loss(s, a["x0"], a["v0"], wx, wv, dict(E=a["E"], nu=a["nu"]))[0]
        fd = (f(base + EPS * d) - f(base - EPS * d)) / (2 * EPS)
        an = float((g[name] * d).sum())
        err = abs(fd - an) / max(abs(fd), abs(an), 1e-300)  # water's ν: both 0
        print(f"3D {material} dL/d{name}: fd {fd:.10g} analytic {an:.10g} rel.err {err:.2e}")
        # E, ν steps of 1e-6 relative move the loss by ~1e-8 of its size: f64 round-off in the FD quotient is ~1e-6
        # there (and ti.svd's ~1e-11 reconstruction error in 3D adds to it)
        assert err <= (1e-4 if name in ("E", "nu") else 1e-6), (name, fd, an)


@pytest.mark.slow
def test_3d_muscle_hand_written_adjoint_matches_finite_differences():
    """The hand-written muscle stress adjoint in 3D (``materials.build_stress_adjoint``): the activation sequence,
    the muscle weights, E and ν of a two-group muscle block, through 12 substeps."""
    b = ModelBuilder(res=(12, 12, 12), dx=1 / 12, ppc=2)
    for g, (y0, y1), fib in ((0, (0.3, 0.42), (1.0, 0.3, 0.2)), (1, (0.42, 0.55), (0.2, 1.0, -0.4))):
        b.add_box((0.3, y0, 0.3), (0.63, y1, 0.63), material="muscle", E=2e3, nu=0.3, rho=1e3,
                  velocity=(0.4, -1.0, 0.2), group=g, fibre=fib)
    m = b.finalize()
    s = Solver(m)
    assert s.hand_stress and s.use_muscle
    g = torch.Generator().manual_seed(2)
    v0 = m.v0 + 0.5 * torch.randn(m.n, 3, generator=g, dtype=torch.float64)
    wx, wv = (torch.randn(m.n, 3, generator=g, dtype=torch.float64) for _ in range(2))
    acts = 0.3 * torch.randn(T, m.n_groups, generator=g, dtype=torch.float64)

    def loss(params=None, actions=acts):
        ro = Rollout(s, T, DT, segment=5)
        x, v, _ = ro.run(m.x0, v0, params, actions)
        return float((wx * x).sum() + (wv * v).sum()), ro

    _, ro = loss()
    grads = ro.grad(wx, wv)
    da = torch.randn(T, m.n_groups, generator=g, dtype=torch.float64)
    fd = (loss(actions=acts + EPS * da)[0] - loss(actions=acts - EPS * da)[0]) / (2 * EPS)
    an = float((grads["actions"] * da).sum())
    print(f"3D muscle dL/dactions: fd {fd:.10g} analytic {an:.10g} rel.err {abs(fd - an) / abs(fd):.2e}")
    assert abs(fd - an) <= 1e-6 * abs(fd)
    for name, scale in (("muscle", 1.0), ("E", 2e3), ("nu", 0.1)):
        base = getattr(m, name)
        d = scale * torch.rand(base.shape, generator=g, dtype=torch.float64)
        fd = (loss({name: base + EPS * d})[0] - loss({name: base - EPS * d})[0]) / (2 * EPS)
        an = float((grads[name] * d).sum())
        err = abs(fd - an) / max(abs(fd), abs(an))
        print(f"3D muscle dL/d{name}: fd {fd:.10g} analytic {an:.10g} rel.err {err:.2e}")
        assert err <= 1e-4, (name, fd, an)
