"""Gradients of MPM rollouts against central finite differences (f64, small 2D cases), the segmented tape against
the plain one, the hand-written SVD adjoint, and the torch path through engine.bridge."""
import numpy as np
import pytest
import torch

from engine import backend
from engine.physics import Boundary, ModelBuilder, Solver, materials, svd
from engine.physics.checkpoint import Rollout, rollout

T, DT, EPS = 40, 5e-4, 1e-6
YIELDING = materials.MaterialTable(clay_yield=20.0, mud_yield=20.0)  # low yield stresses: clay and mud yield here
GEN = lambda seed=0: torch.Generator().manual_seed(seed)  # noqa: E731


def _case(material, E=2e3, groups=False):
    b = ModelBuilder(res=(16, 16), dx=1 / 16, ppc=2)
    b.add_box((0.3, 0.25), (0.55, 0.45), material=material, E=E, nu=0.3, rho=1e3, velocity=(0.5, -1.0),
              group=0 if groups else None, fibre=(1.0, 0.3))
    if groups:
        b.add_box((0.3, 0.45), (0.55, 0.6), material=material, E=E, nu=0.3, rho=1e3, velocity=(0.5, -1.0),
                  group=1, fibre=(0.2, 1.0))
    m = b.finalize(table=YIELDING)
    g = GEN()
    v0 = m.v0 + 0.5 * torch.randn(m.n, 2, generator=g, dtype=torch.float64)  # shear/stretch so stresses act
    wx, wv = (torch.randn(m.n, 2, generator=g, dtype=torch.float64) for _ in range(2))
    return m, Solver(m), v0, wx, wv


def _loss(solver, x0, v0, wx, wv, params=None, actions=None, K=None):
    ro = Rollout(solver, T, DT, segment=K)
    x, v, _ = ro.run(x0, v0, params, actions)
    return float((wx * x).sum() + (wv * v).sum()), ro


def _fd(f, p, d):
    return (f(p + EPS * d) - f(p - EPS * d)) / (2 * EPS)


def _close(fd, an, rtol=1e-5):
    assert abs(fd - an) <= rtol * max(abs(fd), abs(an)) + 1e-12, (fd, an)
    return abs(fd - an) / max(abs(fd), abs(an), 1e-300)


def _yielded(material, m, ro):
    """How many particles ended the rollout on their yield surface (the return mapping was active), from the final
    F's singular values; None for materials without plasticity."""
    s = torch.linalg.svdvals(ro.final.F)
    d = s.shape[1]
    mu = m.E / (2 * (1 + m.nu))
    la = m.E * m.nu / ((1 + m.nu) * (1 - 2 * m.nu))
    t = m.table[materials.ids(material)]
    eps = torch.log(s)
    dev = eps - eps.mean(1, keepdim=True)
    dn = dev.norm(dim=1)
    if material in ("clay", "mud"):
        return int((2 * mu * dn >= (1 - 1e-9) * t[0]).sum())  # mud relaxes towards it: at or above
    if material == "sand":  # on the cone |dev ε| = −(d·λ + 2μ)/(2μ)·α·tr ε, or at its tip ε = 0 (F a rotation)
        cone = (dn + (d * la + 2 * mu) / (2 * mu) * eps.sum(1) * t[0]).abs() < 1e-9
        return int((cone | (eps.abs().amax(1) < 1e-9)).sum())
    if material == "snow":
        return int((((s - (1 - t[0])).abs() < 1e-12) | ((s - (1 + t[1])).abs() < 1e-12)).any(1).sum())
    return None


@pytest.mark.parametrize("material", list(materials.NAMES))
def test_rollout_gradients_match_finite_differences(material):
    """dL/dx0, dL/dv0, dL/dE and dL/dν (a random direction each) for every material, through 40 substeps, on the
    hand-written stress adjoints (every material has one)."""
    m, s, v0, wx, wv = _case(material)
    assert s.hand_stress
    _, ro = _loss(s, m.x0, v0, wx, wv)
    n_yield = _yielded(material, m, ro)
    assert n_yield is None or n_yield >= m.n // 20, n_yield  # the plastic materials' return mappings act
    g = ro.grad(wx, wv)
    gen = GEN(1)
    dx = torch.randn(m.n, 2, generator=gen, dtype=torch.float64)
    _close(_fd(lambda p: _loss(s, p, v0, wx, wv)[0], m.x0, dx), float((g["x0"] * dx).sum()))
    _close(_fd(lambda p: _loss(s, m.x0, p, wx, wv)[0], v0, dx), float((g["v0"] * dx).sum()))
    dE = m.E * torch.rand(m.n, generator=gen, dtype=torch.float64)
    fd = _fd(lambda p: _loss(s, m.x0, v0, wx, wv, dict(E=p))[0], m.E, dE)
    _close(fd, float((g["E"] * dE).sum()), rtol=1e-4)
    dnu = 0.1 * torch.rand(m.n, generator=gen, dtype=torch.float64)
    fd = _fd(lambda p: _loss(s, m.x0, v0, wx, wv, dict(nu=p))[0], m.nu, dnu)
    _close(fd, float((g["nu"] * dnu).sum()), rtol=1e-4)


@pytest.mark.parametrize("material", [n for n in materials.NAMES if materials.ids(n) in materials.GENERATED_ADJOINT])
def test_hand_stress_adjoints_equal_taichi_generated(material):
    """The SVD-based materials' hand-written stress adjoints against Taichi's generated reverse of the staged
    stress kernel (``Solver(stress_adjoint="generated")``, with svd.py's SVD adjoint), an independent
    implementation: every gradient of a 40-substep rollout, to round-off."""
    m, s, v0, wx, wv = _case(material)
    ref = Solver(m, stress_adjoint="generated")
    assert s.hand_stress and not ref.hand_stress
    out = []
    for solver in (s, ref):
        _, ro = _loss(solver, m.x0, v0, wx, wv)
        out.append(ro.grad(wx, wv))
    for k in ("x0", "v0", "E", "nu", "rho"):
        a, b = out[0][k], out[1][k]
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10 * float(b.abs().max())), (k, float((a - b).abs().max()))


@pytest.mark.parametrize("material,floor", [("elastic", "separate"), ("water", "slip"), ("elastic", "sticky")])
def test_hand_written_adjoints_match_finite_differences(material, floor):
    """The hand-written adjoints (G2P, grid update with every collider kind, Coulomb friction and a clamp box, P2G,
    neo-Hookean/water stress): x0, v0, E, ν and ρ for a body pushed into the floor and the left wall."""
    b = ModelBuilder(res=(16, 16), dx=1 / 16, ppc=2)
    b.add_box((0.19, 0.19), (0.45, 0.4), material=material, E=2e3, nu=0.3, rho=1e3, velocity=(-1.5, -2.0))
    m = b.finalize(boundary=Boundary(floor=floor, floor_friction=0.4, walls="separate", wall_friction=0.2,
                                     clamp=((0.37, 0.3), (0.44, 0.36))))
    s = Solver(m)
    assert s.hand_stress
    g = GEN(3)
    v0 = m.v0 + 0.5 * torch.randn(m.n, 2, generator=g, dtype=torch.float64)
    wx, wv = (torch.randn(m.n, 2, generator=g, dtype=torch.float64) for _ in range(2))
    _, ro = _loss(s, m.x0, v0, wx, wv)
    grads = ro.grad(wx, wv)
    d = torch.randn(m.n, 2, generator=g, dtype=torch.float64)
    _close(_fd(lambda p: _loss(s, p, v0, wx, wv)[0], m.x0, d), float((grads["x0"] * d).sum()))
    _close(_fd(lambda p: _loss(s, m.x0, p, wx, wv)[0], v0, d), float((grads["v0"] * d).sum()))
    for name, scale in (("E", 2e3), ("nu", 0.1), ("rho", 100.0)):
        base = getattr(m, name)
        dp = scale * torch.rand(base.shape, generator=g, dtype=torch.float64)
        fd = _fd(lambda p: _loss(s, m.x0, v0, wx, wv, {name: p})[0], base, dp)
        _close(fd, float((grads[name] * dp).sum()), rtol=1e-4)


def test_actuation_and_material_gradients_match_finite_differences():
    """Muscle path: the actuation sequence (T, G), muscle weights, ν and ρ."""
    m, s, v0, wx, wv = _case("muscle", groups=True)
    gen = GEN(2)
    acts = 0.3 * torch.randn(T, m.n_groups, generator=gen, dtype=torch.float64)
    _, ro = _loss(s, m.x0, v0, wx, wv, actions=acts)
    g = ro.grad(wx, wv)
    da = torch.randn(T, m.n_groups, generator=gen, dtype=torch.float64)
    _close(_fd(lambda p: _loss(s, m.x0, v0, wx, wv, actions=p)[0], acts, da), float((g["actions"] * da).sum()))
    assert float(g["actions"].abs().sum()) > 0
    for name, scale in (("muscle", 1.0), ("nu", 0.1), ("rho", 100.0)):
        base = getattr(m, name)
        d = scale * torch.rand(base.shape, generator=gen, dtype=torch.float64)
        fd = _fd(lambda p: _loss(s, m.x0, v0, wx, wv, {name: p}, actions=acts)[0], base, d)
        _close(fd, float((g[name] * d).sum()), rtol=1e-4)


def test_segmented_checkpointing_equals_full_tape():
    """K = 7 (6 segments, the last one short) gives the same gradients as storing all 40 substeps, also for a
    per-step loss on observed states."""
    m, s, v0, wx, wv = _case("snow", groups=False)
    obs = (0, 13, 27, 40)
    g_obs = torch.randn(len(obs), m.n, 2, generator=GEN(3), dtype=torch.float64)
    out = []
    for K in (T, 7):
        ro = Rollout(s, T, DT, segment=K, observe=obs)
        ro.run(m.x0, v0)
        out.append(ro.grad(wx, wv, g_obs))
    for k in out[0]:
        assert torch.allclose(out[0][k], out[1][k], rtol=1e-12, atol=1e-14), k
    # and the per-step part is right: FD of Σ g_obs·x_obs
    d = torch.randn(m.n, 2, generator=GEN(4), dtype=torch.float64)

    def f(p):
        ro = Rollout(s, T, DT, segment=7, observe=obs)
        x, v, xo = ro.run(p, v0)
        return float((wx * x).sum() + (wv * v).sum() + (g_obs * xo).sum())
    _close(_fd(f, m.x0, d), float((out[1]["x0"] * d).sum()))


def test_svd_adjoint_matches_finite_differences():
    """The hand-written SVD gradient, for losses of U, σ, V through R = U·Vᵀ and σ; also finite and right at
    repeated singular values (F = I + a skew part), where the textbook formula divides 0 by 0."""
    real = backend.real()
    fwd, bwd = svd.kernels(2, real)
    gen = GEN(5)
    n = 64
    F = torch.eye(2, dtype=torch.float64) + 0.3 * torch.randn(n, 2, 2, generator=gen, dtype=torch.float64)
    F[:8] = torch.eye(2, dtype=torch.float64) + 0.2 * torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    mat = torch.full((n,), materials.COROTATED, dtype=torch.int32)
    WR = torch.randn(n, 2, 2, generator=gen, dtype=torch.float64)
    ws = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    ws[:8, 1] = ws[:8, 0]  # at repeated σ only symmetric functions of σ are differentiable

    def run(F):
        U, V = torch.zeros(n, 2, 2, dtype=torch.float64), torch.zeros(n, 2, 2, dtype=torch.float64)
        sig = torch.zeros(n, 2, dtype=torch.float64)
        fwd(F.contiguous(), mat, U, sig, V)
        return U, sig, V

    U, sig, V = run(F)
    assert torch.allclose(U @ torch.diag_embed(sig) @ V.transpose(1, 2), F, atol=1e-13)
    # L = Σ WR·(U Vᵀ) + ws·σ  ⇒  Ū = WR·V, V̄ = WRᵀ·U, σ̄ = ws
    gF = torch.zeros_like(F)
    bwd(U, sig, V, (WR @ V).contiguous(), ws.contiguous(), (WR.transpose(1, 2) @ U).contiguous(), gF)
    assert torch.isfinite(gF).all()
    for i in range(n):
        d = torch.randn(2, 2, generator=gen, dtype=torch.float64)
        Fp, Fm = F.clone(), F.clone()
        Fp[i] += EPS * d
        Fm[i] -= EPS * d
        Lp = [(WR * (u @ v.transpose(1, 2))).sum() + (ws * s).sum() for u, s, v in [run(Fp)]][0]
        Lm = [(WR * (u @ v.transpose(1, 2))).sum() + (ws * s).sum() for u, s, v in [run(Fm)]][0]
        _close(float((Lp - Lm) / (2 * EPS)), float((gF[i] * d).sum()), rtol=1e-6)


def test_torch_controller_gradcheck_through_bridge():
    """A sine controller's torch parameters get the gradient of a CoM loss (torch.autograd.gradcheck)."""
    b = ModelBuilder(res=(16, 16), dx=1 / 16, ppc=2)
    b.add_box((0.3, 0.2), (0.5, 0.35), material="muscle", E=2e3, group=0, fibre=(1.0, 0.0))
    b.add_box((0.5, 0.2), (0.7, 0.35), material="muscle", E=2e3, group=1, fibre=(0.0, 1.0))
    m = b.finalize()
    s = Solver(m)
    steps = 20
    t = torch.arange(steps, dtype=torch.float64)[:, None] * DT
    phases = 2 * np.pi * torch.arange(4, dtype=torch.float64) / 4

    def loss(W, bias):
        basis = torch.sin(200.0 * t + phases)  # (T, 4)
        acts = torch.tanh(basis @ W.T + bias)  # (T, G)
        x, v, _ = rollout(s, steps, DT, actions=acts)
        return x[:, 0].mean() + 0.1 * v[:, 1].mean()

    W = (0.5 * torch.randn(2, 4, generator=GEN(6), dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (W, bias), eps=1e-6, atol=1e-9, rtol=1e-5)
    loss(W, bias).backward()
    assert float(W.grad.abs().sum()) > 0


def test_checkpoint_memory_matches_estimate():
    """The memory formula used for the README's 4000-substep figure counts exactly what a rollout holds:
    T/K checkpoints, K + 1 states and K scratches (each with a gradient buffer)."""
    from engine.physics.checkpoint import memory_estimate

    m, s, v0, wx, wv = _case("elastic")
    ro = Rollout(s, T, DT, segment=8)
    ro.run(m.x0, v0)
    ro.grad(wx, wv)
    held = (sum(c.nbytes() for c in ro.checkpoints) + 2 * sum(st.nbytes() for st in ro._pool_states)
            + 2 * sum(sc.nbytes() for sc in ro._pool_scratch))
    est = memory_estimate(m.n, 2, m.res, T, 8)
    assert est["total"] == held


def test_repeated_grad_recomputes_the_last_segment():
    """run() leaves the last segment's states and intermediates for the first grad(); a second grad() (which
    must recompute it) returns the same gradients."""
    m, s, v0, wx, wv = _case("sand")
    ro = Rollout(s, T, DT, segment=7)
    ro.run(m.x0, v0)
    first = ro.grad(wx, wv)
    second = ro.grad(wx, wv)
    for k in first:
        assert torch.equal(first[k], second[k]), k
