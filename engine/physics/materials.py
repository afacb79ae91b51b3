"""Constitutive models for MLS-MPM: elastic stress and plastic return mapping, one material id each.

Every model maps the trial deformation gradient ``F_tr = (I + dt·C)·F`` (and, for the SVD-based ones, its SVD
``F_tr = U·diag(σ)·Vᵀ``) to the projected gradient ``F_new``, the plastic volume ratio ``Jp_new`` and the Kirchhoff
stress ``τ = P·Fᵀ`` that the P2G transfer needs. All functions are dimension-generic (2D/3D) and differentiable
(no data-dependent loops; the SVD gradient is written by hand in ``svd.py``).

Units: E (Pa), ν (-), ρ (kg/m^d); stresses are Kirchhoff stresses in Pa.
"""

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import taichi as ti

__all__ = ["ELASTIC", "COROTATED", "MUSCLE", "SAND", "SNOW", "CLAY", "WATER", "MUD", "ICE", "NAMES", "ids",
           "MaterialTable", "needs_svd", "lame", "build_stress_kernel", "build_stress", "build_stress_adjoint",
           "HAND_ADJOINT", "GENERATED_ADJOINT", "TABLE_COLUMNS"]

# Material ids (stored per particle as int32).
ELASTIC = 0    # neo-Hookean (Bonet & Wood, "Nonlinear continuum mechanics for FEA")
COROTATED = 1  # fixed-corotated elasticity (Stomakhin et al. 2012, "Energetically consistent invertible elasticity")
MUSCLE = 2     # neo-Hookean + active fibre stress a·E·(F d)(F d)ᵀ (DiffTaichi diffmpm, SoftZoo)
SAND = 3       # Drucker–Prager on Hencky strain (Klár et al. 2016, "Drucker-Prager elastoplasticity for sand animation")
SNOW = 4       # clamped singular values + hardening (Stomakhin et al. 2013, "A material point method for snow simulation")
CLAY = 5       # von Mises on Hencky strain, plasticine (as in PlasticineLab, Huang et al. 2021)
WATER = 6      # weakly compressible fluid, F reset to J^(1/d)·I (Tampubolon et al. 2017 style equation of state)
MUD = 7        # Perzyna viscoplastic von Mises on Hencky strain (rate-dependent yield, cf. Yue et al. 2015)
ICE = 8        # stiff fixed-corotated solid, meant for a low-friction floor

NAMES = {"elastic": ELASTIC, "corotated": COROTATED, "muscle": MUSCLE, "sand": SAND, "snow": SNOW, "clay": CLAY,
         "water": WATER, "mud": MUD, "ice": ICE}

_SVD_MATERIALS = (COROTATED, SAND, SNOW, CLAY, MUD, ICE)
HAND_ADJOINT = (ELASTIC, COROTATED, MUSCLE, SAND, SNOW, CLAY, WATER, MUD, ICE)
"""Materials whose stress gradient ``build_stress_adjoint`` writes by hand: all of them. Taichi's generated reverse
kernel of ``stress`` (which carries every material's branch, costs ~2x the forward and, in 3D, over a minute to
compile) runs only when a solver asks for it (``Solver(stress_adjoint="generated")`` or
``TIDE_STRESS_ADJOINT=generated``, kept to compare against), and then for ``GENERATED_ADJOINT``'s materials."""
GENERATED_ADJOINT = _SVD_MATERIALS
"""The materials that ``stress_adjoint="generated"`` runs through Taichi's generated adjoint (the state before the
SVD-based materials' adjoints were written by hand)."""


def ids(name: str | int) -> int:
    """Material id from its name (``"sand"``) or id; raises ValueError naming the valid names."""
    if isinstance(name, (int, np.integer)):
        if not 0 <= int(name) < len(NAMES):
            raise ValueError(f"unknown material id {name}")
        return int(name)
    try:
        return NAMES[name]
    except KeyError:
        raise ValueError(f"unknown material {name!r}; choose one of {', '.join(NAMES)}") from None


def needs_svd(material_ids) -> bool:
    """Whether any of these material ids needs the SVD of F (neo-Hookean, muscle and water do not)."""
    return bool(np.isin(np.asarray(material_ids), _SVD_MATERIALS).any())


def lame(E, nu):
    """Lamé parameters (μ, λ) from Young's modulus and Poisson ratio (works on floats, arrays and tensors)."""
    return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))


TABLE_COLUMNS = 8


@dataclass
class MaterialTable:
    """Per-material plasticity constants shared by all particles of a material (not differentiated)."""

    sand_friction_deg: float = 30.0
    """Sand internal friction angle φ (degrees); Drucker–Prager α = √(2/3)·2 sin φ / (3 − sin φ)."""
    snow_theta_c: float = 2.5e-2
    """Snow critical compression θc (Stomakhin 2013)."""
    snow_theta_s: float = 7.5e-3
    """Snow critical stretch θs."""
    snow_hardening: float = 10.0
    """Snow hardening ξ: μ, λ scale by exp(ξ·(1 − Jp)). SoftZoo uses 1 for gradient stability."""
    snow_jp_min: float = 0.6
    """Lower clamp of snow's plastic volume ratio Jp (bounds the hardening)."""
    clay_yield: float = 200.0
    """Clay/plasticine von Mises yield stress (Pa); PlasticineLab uses 50–200 with E = 5e3."""
    mud_yield: float = 50.0
    """Mud yield stress (Pa)."""
    mud_viscosity: float = 5.0
    """Mud viscosity η (Pa·s): overstress relaxes with rate 2μ/η (η → 0 gives rate-independent von Mises)."""

    def array(self) -> np.ndarray:
        """(9, TABLE_COLUMNS) float64 table indexed by material id; columns are per-material parameters."""
        t = np.zeros((len(NAMES), TABLE_COLUMNS))
        s = math.sin(math.radians(self.sand_friction_deg))
        t[SAND, 0] = math.sqrt(2.0 / 3.0) * 2.0 * s / (3.0 - s)
        t[SNOW, :4] = (self.snow_theta_c, self.snow_theta_s, self.snow_hardening, self.snow_jp_min)
        t[CLAY, 0] = self.clay_yield
        t[MUD, :2] = (self.mud_yield, self.mud_viscosity)
        return t

    @classmethod
    def names(cls):
        return [f.name for f in fields(cls)]


def build_stress_kernel(dim: int, real):
    """The per-particle stress kernel (see ``build_stress``)."""
    return build_stress(dim, real)[0]


@functools.lru_cache(maxsize=None)
def build_stress(dim: int, real):
    """Return ``(stress, update, stress_serial)``: the per-particle kernel that applies every material's plasticity and computes its stress.

    ``stress(F_tr, U, sig, V, Jp, material, E, nu, act, fibre, table, dt, F_new, Jp_new, tau)``, arrays of
    length N: F_tr/U/V/F_new/tau (N, d, d), sig (N, d), Jp/Jp_new/E/nu/act (N,), material (N,) int32,
    fibre (N, d), table (n_materials, TABLE_COLUMNS). Built per (dim, real) so the kernel is compiled once per
    dimension. ``update`` is the ``ti.func`` it runs per particle (the fused forward P2G inlines it too);
    ``stress_serial`` the same kernel with a serialised loop, whose ``.grad`` CPUs run.
    """
    D = dim
    mat = ti.types.matrix(D, D, real)
    vec = ti.types.vector(D, real)
    A_mat = ti.types.ndarray(dtype=mat, ndim=1)
    A_vec = ti.types.ndarray(dtype=vec, ndim=1)
    A_s = ti.types.ndarray(dtype=real, ndim=1)
    A_i = ti.types.ndarray(dtype=ti.i32, ndim=1)
    A_t = ti.types.ndarray(dtype=real, ndim=2)

    @ti.func
    def diag(d):
        M = ti.Matrix.zero(real, D, D)
        for i in ti.static(range(D)):
            M[i, i] = d[i]
        return M

    @ti.func
    def prod(v):
        r = ti.cast(1.0, real)
        for i in ti.static(range(D)):
            r *= v[i]
        return r

    @ti.func
    def hencky_return(eps, mu, la, m, a0, a1, dt):
        """Plastic projection of the Hencky strain ε = log σ (a d-vector); returns the projected ε."""
        tr = eps.sum()
        dev = eps - tr / D
        dev_norm = ti.sqrt(dev.dot(dev) + 1e-24)
        out = eps
        if m == SAND:
            # Klár 2016 eq. (27), cohesionless: tension (tr ε > 0) projects to the cone tip ε = 0.
            if tr > 0:
                out = ti.Vector.zero(real, D)
            else:
                dgamma = dev_norm + (D * la + 2 * mu) / (2 * mu) * tr * a0
                if dgamma > 0:
                    out = eps - dgamma / dev_norm * dev
        else:
            # von Mises: shrink the deviatoric strain back to the yield surface 2μ|ε_dev| = τ_y.
            dgamma = dev_norm - a0 / (2 * mu)
            if dgamma > 0:
                if m == MUD:
                    # Perzyna relaxation: a fraction 1 − exp(−2μ·dt/η) of the overstress goes per step.
                    dgamma *= 1.0 - ti.exp(-2.0 * mu * dt / ti.max(a1, 1e-12))
                out = eps - dgamma / dev_norm * dev
        return out

    T_ = ti.template()

    @ti.func
    def update(p, F, Up, sig_p, Vp, Jp: T_, material: T_, E: T_, nu: T_, act_p, fibre: T_, table: T_, dt,
               F_new: T_, Jp_new: T_, tau: T_):
        """Particle p: plasticity and stress from its trial gradient F (and F's SVD Up, sig_p, Vp); writes
        F_new[p], Jp_new[p], tau[p]. Shared by the differentiable stress kernel and the fused forward P2G. It
        writes its results instead of returning them: Taichi 1.7 drops gradients from a ``ti.func`` that returns
        a tuple computed under a branch (the per-material FD tests would catch a regression)."""
        m = material[p]
        mu = E[p] / (2 * (1 + nu[p]))
        la = E[p] * nu[p] / ((1 + nu[p]) * (1 - 2 * nu[p]))
        I = ti.Matrix.identity(real, D)
        t = ti.Matrix.zero(real, D, D)
        Fn = F
        jp = Jp[p]
        if m == ELASTIC or m == MUSCLE:
            J = F.determinant()
            t = mu * (F @ F.transpose() - I) + la * ti.log(J) * I
            if m == MUSCLE:
                fd = F @ fibre[p]
                t += act_p * E[p] * fd.outer_product(fd)
        elif m == WATER:
            J = F.determinant()
            Fn = I * ti.pow(J, 1.0 / D)
            t = E[p] * J * (J - 1) * I
        else:
            s = ti.max(sig_p, 1e-6)
            if m == SAND or m == CLAY or m == MUD:
                eps = hencky_return(ti.log(s), mu, la, m, table[m, 0], table[m, 1], dt)
                Fn = Up @ diag(ti.exp(eps)) @ Vp.transpose()
                t = Up @ diag(2 * mu * eps + la * eps.sum()) @ Up.transpose()
            else:
                s_new = s
                if m == SNOW:
                    # Stomakhin 2013: clamp σ to [1 − θc, 1 + θs]; the clamped-away volume goes into Jp,
                    # which hardens μ and λ by exp(ξ(1 − Jp)).
                    s_new = ti.min(ti.max(s, 1.0 - table[m, 0]), 1.0 + table[m, 1])
                    jp = ti.max(jp * prod(s) / prod(s_new), table[m, 3])
                    h = ti.exp(table[m, 2] * (1.0 - jp))
                    mu *= h
                    la *= h
                    Fn = Up @ diag(s_new) @ Vp.transpose()
                J = prod(s_new)
                # fixed corotated (Stomakhin 2012): τ = 2μ(F − R)Fᵀ + λJ(J − 1)I, written in the SVD basis
                t = Up @ diag(2 * mu * (s_new - 1) * s_new) @ Up.transpose() + la * J * (J - 1) * I
        F_new[p] = Fn
        Jp_new[p] = jp
        tau[p] = t

    def make_stress(serial):
        @ti.kernel
        def stress(F_tr: A_mat, U: A_mat, sig: A_vec, V: A_mat, Jp: A_s, material: A_i, E: A_s, nu: A_s,
                   act: A_s, fibre: A_vec, table: A_t, dt: real, F_new: A_mat, Jp_new: A_s, tau: A_mat):
            ti.loop_config(serialize=serial)
            for p in range(F_tr.shape[0]):
                u = ti.Matrix.identity(real, D)
                s = ti.Vector.one(real, D)
                v = ti.Matrix.identity(real, D)
                m = material[p]
                if m != ELASTIC and m != MUSCLE and m != WATER:  # load (in reverse: accumulate) the SVD only here
                    u = U[p]
                    s = sig[p]
                    v = V[p]
                update(p, F_tr[p], u, s, v, Jp, material, E, nu, act[p], fibre, table, dt, F_new, Jp_new, tau)
        return stress

    stress = make_stress(False)
    # The same kernel with its loop serialised, for reverse mode on CPUs: Taichi then turns the adjoint's float
    # atomics into plain adds (about 2x faster here; see kernels.py). Its forward is never launched.
    stress_serial = make_stress(True)

    return stress, update, stress_serial


@functools.lru_cache(maxsize=None)
def build_stress_adjoint(dim: int, real, serial: bool = False, with_svd: bool = True):
    """Hand-written reverse of the deformation update F = (I + dt·C)·F_in and ``stress`` for every material (with
    ``with_svd=False``, for scenes without SVD materials, the SVD-based ids are skipped and their code is not
    compiled). Returns ``(stress_adjoint, stress_grad, muscle_adjoint, muscle_adjoint_loop)``: the kernel
    accumulates into g_C, g_Fin
    (N, d, d), g_Jp, g_E, g_nu (N,), g_fibre (N, d) from the output grads g_Fn (N, d, d), g_Jpn (N,), g_tau (N, d, d),
    and writes g_actp (N,), the grad of each particle's activation a_p = Σ_g w_pg·act_g; ``muscle_adjoint`` maps
    g_actp to the muscle weights' and the activations' grads (``muscle_adjoint_loop(n, ...)`` is its loop over the
    first n particles, for fused kernels). ``stress_grad`` is its per-particle ``ti.func`` (the P2G adjoint inlines
    it). The SVD (U, σ, V) of the trial F is read, not recomputed.

    With J = det F and ∂J/∂F = cof F = J·F⁻ᵀ:
        water    τ = E·J(J−1)·I, F_new = J^(1/d)·I:  ∂L/∂J = tr(ḡ_Fn)·J^(1/d−1)/d + tr(ḡ_τ)·E(2J−1)
        elastic  τ = μ(FFᵀ − I) + λ log J·I:           ∂L/∂F = ḡ_Fn + μ(ḡ_τ + ḡ_τᵀ)F + λ tr(ḡ_τ)·F⁻ᵀ
        muscle   the elastic τ plus a·E·f fᵀ with f = F·d (d the fibre): with S = ḡ_τ + ḡ_τᵀ,
                 ∂L/∂F += a·E·(S f) dᵀ,  ∂L/∂d = a·E·Fᵀ(S f),  ∂L/∂a = E·fᵀḡ_τ f,  ∂L/∂E += a·fᵀḡ_τ f
    (μ, λ from E, ν as in ``lame``).

    SVD-based materials (``svd_stress_grad``) are isotropic: F_new = U·diag(f(σ))·Vᵀ and τ = U·diag(t(σ))·Uᵀ + c(σ)·I
    with f, t, c per material. In the SVD basis, with X = Uᵀḡ_Fn V and Y = Uᵀ sym(ḡ_τ) U, the trial F's grad is
    U·K·Vᵀ where K_ii = ∂L/∂σ_i (the chain through f, t, c, the return mapping and Jp, by hand per material) and,
    for each pair i ≠ j (the rotation part of the SVD's derivative, Xu et al. 2015, "Nonlinear material design
    using principal stretches", written as an adjoint),
        K_ij = α_f·sym(X)_ij + β_f·skew(X)_ij + (α_t + β_t)·Y_ij,
        K_ji = α_f·sym(X)_ij − β_f·skew(X)_ij + (α_t − β_t)·Y_ij
        α_f = (f_i − f_j)/(σ_i − σ_j),  β_f = (f_i + f_j)/(σ_i + σ_j),  α_t = (t_i − t_j)/(σ_i − σ_j),
        β_t = (t_j − t_i)/(σ_i + σ_j).
    The divided differences α are written in closed forms that stay exact as σ_i → σ_j (an undeformed particle has
    σ = 1, 1, 1): fixed-corotated t = 2μ(σ−1)σ gives α_t = 2μ(σ_i + σ_j − 1); on Hencky strain ε = log σ the
    return mappings give ε'_i − ε'_j = b·(ε_i − ε_j) for a per-particle scalar b, so α_t = 2μb/δexp(ε_i, ε_j) and
    α_f = b·δexp(ε'_i, ε'_j)/δexp(ε_i, ε_j) with δexp(x, y) = (eˣ − eʸ)/(x − y) = e^((x+y)/2)·sinh(h)/h,
    h = (x − y)/2; snow's clamp has the divided difference of the clamp. So the gradient has no 0/0 at repeated
    singular values (the SVD adjoint of svd.py clamps that term to 0 there).

    Kinks (the forward is continuous but not differentiable there), one side each, matching the forward's tests:
    sand's tension test ``tr ε > 0`` and every yield test ``Δγ > 0`` take the elastic (unprojected) side at
    equality; snow's σ clamp counts as active at a bound (σ = 1 − θc or 1 + θs: derivative 0) and its Jp floor as
    inactive at equality (Jp = Jp_min: derivative 1); σ ≤ 1e-6 (the forward's floor) gets no gradient.
    tests/physics/test_gradients.py checks every material against central differences in 2D (per particle, on
    deformations that hit each branch, and through rollouts), tests/physics/test_gradients_3d.py in 3D."""
    D = dim
    mat = ti.types.matrix(D, D, real)
    vec = ti.types.vector(D, real)
    A_mat = ti.types.ndarray(dtype=mat, ndim=1)
    A_vec = ti.types.ndarray(dtype=vec, ndim=1)
    A_s = ti.types.ndarray(dtype=real, ndim=1)
    A_w = ti.types.ndarray(dtype=real, ndim=2)
    A_i = ti.types.ndarray(dtype=ti.i32, ndim=1)
    T_ = ti.template()
    PAIRS = [(i, j) for i in range(D) for j in range(i + 1, D)]

    @ti.func
    def expdd(x, y):
        """(eˣ − eʸ)/(x − y), and eˣ at x = y: e^((x+y)/2)·sinh(h)/h with h = (x − y)/2 (series for |h| < 0.1,
        truncation ~h⁸/9!, below f64 round-off)."""
        h = 0.5 * (x - y)
        h2 = h * h
        r = 1.0 + h2 / 6.0 * (1.0 + h2 / 20.0 * (1.0 + h2 / 42.0))
        if ti.abs(h) >= 0.1:
            r = (ti.exp(h) - ti.exp(-h)) / (2.0 * h)
        return ti.exp(0.5 * (x + y)) * r

    @ti.func
    def inv_pos(x):
        return 1.0 / ti.max(x, 1e-6)  # σ_i + σ_j, ≥ 2e-6 unless σ was floored

    @ti.func
    def svd_stress_grad(m, Up, sig, Vp, jp_in, mu, la, a0, a1, a2, a3, dt, gFn, G, g_jpn):
        """The SVD-based materials' adjoint (see ``build_stress_adjoint``) for one particle with trial-F SVD
        (Up, sig, Vp), plastic volume jp_in, Lamé μ, λ and table row (a0..a3). Returns (∂L/∂F_tr, ∂L/∂Jp_in,
        ∂L/∂μ, ∂L/∂λ) from ḡ_Fn, ḡ_τ (= G) and ḡ_Jpn."""
        s = ti.max(sig, 1e-6)
        Y = Up.transpose() @ (0.5 * (G + G.transpose())) @ Up
        gc = G.trace()  # ∂L/∂c for the c·I term
        hencky = m == SAND or m == CLAY or m == MUD
        X = mat(0.0)
        if m == SNOW or hencky:
            X = Up.transpose() @ gFn @ Vp
        xd = vec(0.0)  # diagonals of X and Y
        yd = vec(0.0)
        for k in ti.static(range(D)):
            xd[k] = X[k, k]
            yd[k] = Y[k, k]
        sb = vec(0.0)  # ∂L/∂s
        g_mu = ti.cast(0.0, real)
        g_la = ti.cast(0.0, real)
        g_jp = ti.cast(0.0, real)
        f = s  # new singular values
        t = vec(0.0)  # τ's eigenvalues less c
        eps = vec(0.0)
        ep = vec(0.0)
        b = ti.cast(1.0, real)  # ε'_i − ε'_j = b·(ε_i − ε_j)
        mu_h = mu
        lo = ti.cast(-1.0, real)  # snow's clamp bounds (none for corotated/ice)
        hi = ti.cast(1e30, real)
        if hencky:
            eps = ti.log(s)
            tr = eps.sum()
            dev = eps - tr / D
            nr = ti.sqrt(dev.dot(dev) + 1e-24)
            n = dev / nr
            ep = eps
            gamma = ti.cast(0.0, real)
            dg = vec(0.0)  # ∂γ/∂ε
            dg_mu = ti.cast(0.0, real)
            dg_la = ti.cast(0.0, real)
            plastic = False
            tension = False
            if m == SAND:
                if tr > 0:
                    tension = True
                    ep = vec(0.0)
                    b = 0.0
                else:
                    kap = (D * la + 2 * mu) / (2 * mu)
                    gamma = nr + kap * tr * a0
                    if gamma > 0:
                        plastic = True
                        dg = n + kap * a0
                        dg_la = D / (2 * mu) * tr * a0
                        dg_mu = -D * la / (2 * mu * mu) * tr * a0
            else:
                gamma = nr - a0 / (2 * mu)
                if gamma > 0:
                    plastic = True
                    dg = n
                    dg_mu = a0 / (2 * mu * mu)
                    if m == MUD:
                        eta = ti.max(a1, 1e-12)
                        ex = ti.exp(-2.0 * mu * dt / eta)
                        dg_mu = (1.0 - ex) * dg_mu + gamma * 2.0 * dt / eta * ex
                        gamma *= 1.0 - ex
                        dg *= 1.0 - ex
            if plastic:
                ep = eps - gamma / nr * dev
                b = 1.0 - gamma / nr
            f = ti.exp(ep)
            t = 2 * mu * ep
            ebar = xd * f + 2 * mu * yd + la * gc  # ∂L/∂ε'
            g_mu = 2 * (yd * ep).sum()
            g_la = gc * ep.sum()
            if tension:  # sand in tension: ε' = 0
                ebar = vec(0.0)
            elif plastic:  # ε' = ε − γ·n, n = dev/|dev|: reversed
                q = n.dot(ebar)
                g_mu -= q * dg_mu
                g_la -= q * dg_la
                Pe = ebar - ebar.sum() / D
                ebar = ebar - q * dg - gamma / nr * (Pe - q * n)
            sb = ebar / s
            g_jp = g_jpn  # Jp_new = Jp_in
        else:
            # fixed corotated (with snow's clamp and hardening): f = clamp(σ), τ = U·diag(2μh(f−1)f)·Uᵀ + λhJ(J−1)·I
            jp = jp_in
            h = ti.cast(1.0, real)
            xi = ti.cast(0.0, real)
            jp_raw = jp_in
            Ps = ti.cast(1.0, real)
            Pf = ti.cast(1.0, real)
            if m == SNOW:
                lo = 1.0 - a0
                hi = 1.0 + a1
                xi = a2
                f = ti.min(ti.max(s, lo), hi)
                for i in ti.static(range(D)):
                    Ps *= s[i]
                    Pf *= f[i]
                jp_raw = jp_in * Ps / Pf
                jp = ti.max(jp_raw, a3)
                h = ti.exp(xi * (1.0 - jp))
            mu_h = mu * h
            J = ti.cast(1.0, real)
            for i in ti.static(range(D)):
                J *= f[i]
            t = 2 * mu_h * (f - 1) * f
            fb = vec(0.0)
            for k in ti.static(range(D)):
                Jk = ti.cast(1.0, real)  # J / f_k
                for l in ti.static(range(D)):
                    if ti.static(l != k):
                        Jk *= f[l]
                fb[k] = xd[k] + yd[k] * 2 * mu_h * (2 * f[k] - 1) + gc * la * h * (2 * J - 1) * Jk
            e_mu = (yd * 2 * (f - 1) * f).sum()  # ∂L/∂(μh) and ∂L/∂(λh), per unit μ, λ
            e_la = gc * J * (J - 1)
            g_mu = h * e_mu
            g_la = h * e_la
            g_jp = g_jpn  # Jp_new = Jp_in (corotated, ice)
            if m == SNOW:
                # Jp_new = max(Jp_in·Πσ/Πf, Jp_min), which also hardens μ, λ by h = exp(ξ(1 − Jp_new))
                g_new = g_jpn - xi * h * (mu * e_mu + la * e_la)
                g_jp = 0.0
                if jp_raw >= a3:  # the floor is inactive
                    c = g_new * jp_raw
                    g_jp = g_new * Ps / Pf
                    for k in ti.static(range(D)):
                        fb[k] -= c / f[k]
                        sb[k] += c / s[k]
            for k in ti.static(range(D)):
                if lo < s[k] and s[k] < hi:
                    sb[k] += fb[k]
        for k in ti.static(range(D)):
            if not sig[k] > 1e-6:
                sb[k] = 0.0
        K = mat(0.0)
        for k in ti.static(range(D)):
            K[k, k] = sb[k]
        for ij in ti.static(PAIRS):
            i = ti.static(ij[0])
            j = ti.static(ij[1])
            af = ti.cast(1.0, real)
            at = ti.cast(0.0, real)
            if hencky:
                ee = expdd(eps[i], eps[j])
                af = b * expdd(ep[i], ep[j]) / ee
                at = 2 * mu * b / ee
            else:
                cd = ti.cast(0.0, real)  # the clamp's divided difference
                if s[i] != s[j]:
                    cd = (f[i] - f[j]) / (s[i] - s[j])
                elif lo < s[i] and s[i] < hi:
                    cd = 1.0
                af = cd
                at = 2 * mu_h * (f[i] + f[j] - 1) * cd
            inv = inv_pos(s[i] + s[j])
            bf = (f[i] + f[j]) * inv
            bt = (t[j] - t[i]) * inv
            sX = 0.5 * (X[i, j] + X[j, i])
            kX = 0.5 * (X[i, j] - X[j, i])
            K[i, j] = af * sX + bf * kX + (at + bt) * Y[i, j]
            K[j, i] = af * sX - bf * kX + (at - bt) * Y[i, j]
        g_F = Up @ K @ Vp.transpose()
        if m == COROTATED or m == ICE:
            g_F += gFn  # F_new = F_tr
        return g_F, g_jp, g_mu, g_la

    @ti.func
    def stress_grad(p, C: T_, F_in: T_, dt, material: T_, E: T_, nu: T_, w: T_, act: T_, fibre: T_, U: T_,
                    sig: T_, V: T_, Jp: T_, table: T_, g_Fn: T_, g_Jpn: T_, G, g_Fin: T_, g_Jp: T_, g_E: T_,
                    g_nu: T_, g_fibre: T_, g_actp: T_):
        """Particle p's adjoint from its τ grad G (a d×d matrix); returns its C grad (the caller adds it, so a
        fused P2G adjoint writes g_C once) and writes g_actp[p]. The trial gradient F = (I + dt·C)·F_in and the
        activation a_p are recomputed, not stored; SVD materials read the trial F's SVD (U, sig, V)."""
        g_C = ti.Matrix.zero(real, D, D)
        g_a = ti.cast(0.0, real)
        m = material[p]
        I = ti.Matrix.identity(real, D)
        A = I + dt * C[p]
        g_F = ti.Matrix.zero(real, D, D)
        e, n = E[p], nu[p]
        mu = e / (2 * (1 + n))
        q = (1 + n) * (1 - 2 * n)
        la = e * n / q
        g_mu = ti.cast(0.0, real)
        g_la = ti.cast(0.0, real)
        g_e = ti.cast(0.0, real)
        g_jp = g_Jpn[p]
        active = False
        if m == WATER or m == ELASTIC or m == MUSCLE:
            active = True
            F = A @ F_in[p]
            J = F.determinant()
            F_invT = F.inverse().transpose()
            trG = G.trace()
            if m == WATER:
                gJ = g_Fn[p].trace() * ti.pow(J, 1.0 / D - 1.0) / D + trG * E[p] * (2.0 * J - 1.0)
                g_F = gJ * J * F_invT
                g_e = trG * J * (J - 1.0)
            else:
                g_F = g_Fn[p] + mu * (G + G.transpose()) @ F + la * trG * F_invT
                g_mu = (G * (F @ F.transpose() - I)).sum()
                g_la = trG * ti.log(J)
                if m == MUSCLE:
                    a = ti.cast(0.0, real)
                    for g in range(w.shape[1]):
                        a += w[p, g] * act[g]
                    d = fibre[p]
                    f = F @ d
                    Sf = (G + G.transpose()) @ f
                    fGf = f.dot(G @ f)
                    g_F += a * e * Sf.outer_product(d)
                    g_fibre[p] += a * e * (F.transpose() @ Sf)
                    g_a = e * fGf
                    g_e += a * fGf
        elif ti.static(with_svd):
            active = True
            g_F, gj, g_mu, g_la = svd_stress_grad(m, U[p], sig[p], V[p], Jp[p], mu, la, table[m, 0], table[m, 1],
                                                  table[m, 2], table[m, 3], dt, g_Fn[p], G, g_jp)
            g_jp = gj
        if active:
            g_E[p] += g_e + g_mu / (2 * (1 + n)) + g_la * n / q
            g_nu[p] += -g_mu * e / (2 * (1 + n) ** 2) + g_la * e * (1 + 2 * n * n) / (q * q)
            g_Jp[p] += g_jp
            g_C = dt * g_F @ F_in[p].transpose()  # the deformation update, reversed here too
            g_Fin[p] += A.transpose() @ g_F
        g_actp[p] = g_a
        return g_C

    @ti.kernel
    def stress_adjoint(C: A_mat, F_in: A_mat, dt: real, material: A_i, E: A_s, nu: A_s, w: A_w, act: A_s,
                       fibre: A_vec, U: A_mat, sig: A_vec, V: A_mat, Jp: A_s, table: A_w, g_Fn: A_mat, g_Jpn: A_s,
                       g_tau: A_mat, g_C: A_mat, g_Fin: A_mat, g_Jp: A_s, g_E: A_s, g_nu: A_s, g_fibre: A_vec,
                       g_actp: A_s):
        ti.loop_config(serialize=serial)
        for p in range(F_in.shape[0]):
            g_C[p] += stress_grad(p, C, F_in, dt, material, E, nu, w, act, fibre, U, sig, V, Jp, table, g_Fn, g_Jpn,
                                  g_tau[p], g_Fin, g_Jp, g_E, g_nu, g_fibre, g_actp)

    @ti.func
    def muscle_adjoint_loop(n, w: T_, act: T_, g_actp: T_, g_w: T_, g_act: T_):
        # a_p = Σ_g w_pg·act_g reversed over particles p < n: g_w += g_a·act, g_act += Σ_p g_a·w. Serialised: every
        # particle adds into the few act[g] (plain adds, no contended atomics; ~N·G flops)
        ti.loop_config(serialize=True)
        for p in range(n):
            ga = g_actp[p]
            if ga != 0:
                for g in range(w.shape[1]):
                    g_w[p, g] += ga * act[g]
                    g_act[g] += ga * w[p, g]

    @ti.kernel
    def muscle_adjoint(w: A_w, act: A_s, g_actp: A_s, g_w: A_w, g_act: A_s):
        muscle_adjoint_loop(w.shape[0], w, act, g_actp, g_w, g_act)

    return stress_adjoint, stress_grad, muscle_adjoint, muscle_adjoint_loop
