"""The hand-written stress adjoints (``materials.build_stress_adjoint``) per particle, against central differences in
f64 of the forward kernels (deform, SVD, ``stress``; in 3D LAPACK's SVD, see ``_forward``), in 2D and 3D: every
material, each output (F_new, Jp_new, τ) on its own, each input (C, F_in, Jp, E, ν). The deformations span elastic and plastic states, so every branch of
each return mapping is hit (the test asserts it), plus particles with repeated singular values (F = c·R), where the
textbook SVD adjoint divides 0 by 0."""
import numpy as np
import pytest
import torch

from engine import backend
from engine.physics import kernels, materials, svd

EPS = 2e-6  # central differences at EPS and EPS/2, Richardson-extrapolated (see the test)
N = 240
DT = 1e-3
F64 = torch.float64


def _rotation(d, gen):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _inputs(dim, material, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(N, dtype=F64).uniform_(np.log(1e-3), np.log(0.35), generator=gen))
    F_in = torch.eye(dim, dtype=F64) + scale[:, None, None] * torch.randn(N, dim, dim, generator=gen, dtype=F64)
    C = 20.0 * scale[:, None, None] * torch.randn(N, dim, dim, generator=gen, dtype=F64)
    n_rep = 16  # repeated singular values: F_tr = c·R exactly (C = 0)
    for i in range(n_rep):
        F_in[i] = (0.8 + 0.01 * i if i % 2 else 1.05 + 0.01 * i) * _rotation(dim, gen)  # off the cone tip
        C[i] = 0.0
    neg = torch.det(F_in) <= 0.05
    F_in[neg] = torch.eye(dim, dtype=F64)
    Jp = torch.empty(N, dtype=F64).uniform_(0.45, 1.5, generator=gen)
    E = torch.empty(N, dtype=F64).uniform_(1e3, 5e3, generator=gen)
    nu = torch.empty(N, dtype=F64).uniform_(0.15, 0.4, generator=gen)
    mat = torch.full((N,), materials.ids(material), dtype=torch.int32)
    return dict(C=C, F_in=F_in, Jp=Jp, E=E, nu=nu), mat


def _forward(dim, inp, mat, table):
    k = kernels.build(dim, backend.real())
    fwd_svd, _ = svd.kernels(dim, backend.real())
    stress = materials.build_stress(dim, backend.real())[0]
    n = mat.shape[0]
    F_tr = torch.zeros(n, dim, dim, dtype=F64)
    k.deform(inp["C"].contiguous(), inp["F_in"].contiguous(), DT, F_tr)
    if dim == 2:
        U, V = torch.zeros(n, dim, dim, dtype=F64), torch.zeros(n, dim, dim, dtype=F64)
        sig = torch.zeros(n, dim, dtype=F64)
        fwd_svd(F_tr, mat, U, sig, V)
    else:
        # ti.svd in 3D iterates a fixed number of sweeps: in f64 it reconstructs F to ~1e-11 near repeated singular
        # values, which would swamp a central difference at these steps. LAPACK's SVD (signs fixed so U, V are
        # rotations) feeds the same stress kernel instead.
        U, sig, Vh = torch.linalg.svd(F_tr)
        V = Vh.transpose(1, 2).clone()
        flip = torch.det(U) < 0  # det F > 0 here, so det V < 0 too
        U[flip, :, -1] *= -1
        V[flip, :, -1] *= -1
        U, sig, V = U.contiguous(), sig.contiguous(), V.contiguous()
    F_new, tau = torch.zeros(n, dim, dim, dtype=F64), torch.zeros(n, dim, dim, dtype=F64)
    Jp_new = torch.zeros(n, dtype=F64)
    zero = torch.zeros(n, dtype=F64)
    stress(F_tr, U, sig, V, inp["Jp"].contiguous(), mat, inp["E"].contiguous(), inp["nu"].contiguous(), zero,
           torch.zeros(n, dim, dtype=F64), table, DT, F_new, Jp_new, tau)
    return dict(F=F_new, Jp=Jp_new, tau=tau), (U, sig, V)


def _per_particle(out, w):
    return sum((w[k] * out[k]).reshape(out[k].shape[0], -1).sum(1) for k in w)


def _branches(material, sig, inp, table):
    """Counts of particles in each branch of the material's return mapping, from the forward's singular values."""
    s = sig.clamp_min(1e-6)
    mu = inp["E"] / (2 * (1 + inp["nu"]))
    la = inp["E"] * inp["nu"] / ((1 + inp["nu"]) * (1 - 2 * inp["nu"]))
    t = table[materials.ids(material)]
    d = s.shape[1]
    if material in ("sand", "clay", "mud"):
        eps = torch.log(s)
        tr = eps.sum(1)
        dev = eps - tr[:, None] / d
        nr = torch.sqrt((dev * dev).sum(1) + 1e-24)
        if material == "sand":
            gamma = nr + (d * la + 2 * mu) / (2 * mu) * tr * t[0]
            return {"tension": int((tr > 0).sum()), "yield": int(((tr <= 0) & (gamma > 0)).sum()),
                    "elastic": int(((tr <= 0) & (gamma <= 0)).sum())}
        gamma = nr - t[0] / (2 * mu)
        return {"yield": int((gamma > 0).sum()), "elastic": int((gamma <= 0).sum())}
    if material == "snow":
        lo, hi = 1 - t[0], 1 + t[1]
        clamped = ((s < lo) | (s > hi)).any(1)
        f = s.clamp(lo, hi)
        jp_raw = inp["Jp"] * s.prod(1) / f.prod(1)  # the Jp floor acts where Jp·Πσ/Πf < Jp_min
        return {"clamped": int(clamped.sum()), "inside": int((~clamped).sum()),
                "floor": int((jp_raw < t[3]).sum()), "free": int((jp_raw >= t[3]).sum())}
    return {"all": s.shape[0]}


@pytest.mark.parametrize("dim", [2, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("material", ["corotated", "ice", "sand", "snow", "clay", "mud", "elastic", "water"])
def test_stress_adjoint_matches_finite_differences(dim, material):
    real = backend.real()
    table = torch.as_tensor(materials.MaterialTable(snow_hardening=3.0, mud_viscosity=0.5).array(), dtype=F64)
    inp, mat = _inputs(dim, material, seed=dim)
    out, (U, sig, V) = _forward(dim, inp, mat, table)
    assert torch.isfinite(out["tau"]).all()
    counts = _branches(material, sig, inp, table)
    assert min(counts.values()) >= 5, counts  # every branch is exercised
    adjoint = materials.build_stress_adjoint(dim, real)[0]
    gen = torch.Generator().manual_seed(7)
    scales = {"C": 1 / DT, "F_in": 1.0, "Jp": 0.5, "E": 2e3, "nu": 0.1}  # steps of ~EPS relative to the inputs
    for name in ("F", "Jp", "tau"):
        w = {name: torch.randn(out[name].shape, generator=gen, dtype=F64)}
        g = {k: torch.zeros_like(v) for k, v in inp.items()}
        g_fibre = torch.zeros(N, dim, dtype=F64)
        g_actp = torch.zeros(N, dtype=F64)
        zeros = lambda k: torch.zeros_like(out[k])  # noqa: E731
        adjoint(inp["C"], inp["F_in"], DT, mat, inp["E"], inp["nu"], torch.zeros(N, 1, dtype=F64),
                torch.zeros(1, dtype=F64), torch.zeros(N, dim, dtype=F64), U, sig, V, inp["Jp"], table,
                w.get("F", zeros("F")), w.get("Jp", zeros("Jp")), w.get("tau", zeros("tau")), g["C"], g["F_in"],
                g["Jp"], g["E"], g["nu"], g_fibre, g_actp)
        for wrt, sc in scales.items():
            d = sc * torch.randn(inp[wrt].shape, generator=gen, dtype=F64)
            fd = [(_per_particle(_forward(dim, {**inp, wrt: inp[wrt] + h * d}, mat, table)[0], w)
                   - _per_particle(_forward(dim, {**inp, wrt: inp[wrt] - h * d}, mat, table)[0], w)) / (2 * h)
                  for h in (EPS, EPS / 2)]
            # Richardson: cancels the O(h²) error, which near repeated singular values or the Drucker–Prager apex
            # (derivatives growing like 1/|σ_i − σ_j|³, 1/|dev ε|³) exceeds 1e-6 at h = 1e-6
            fd = (4 * fd[1] - fd[0]) / 3
            an = (g[wrt] * d).reshape(N, -1).sum(1)
            # relative 1e-6, and an absolute floor at the FD quotient's round-off: the forward (SVD, log, exp) is
            # exact to ~1e-14 of the terms it sums, Σ|w·out|, and the quotient divides that by EPS/2
            base = sum((w[k] * out[k]).abs().reshape(N, -1).sum(1) for k in w)
            excess = (fd - an).abs() - 1e-6 * torch.maximum(fd.abs(), an.abs()) - 1e-8 * base
            worst = int(excess.argmax())
            assert float(excess.max()) <= 0, (material, name, wrt, worst, float(fd[worst]), float(an[worst]),
                                              counts)
