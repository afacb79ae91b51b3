"""SVD of per-particle deformation gradients, with a reverse-mode gradient written by hand.

Taichi cannot reverse-differentiate ``ti.svd`` (its 3D version iterates), so the solver runs ``forward`` as a plain
kernel and, in the backward pass, calls ``backward`` in its place. The gradient is the classic SVD adjoint
(Townsend 2016, "Differentiating the singular value decomposition"; Ionescu et al. 2015) for F = U·diag(σ)·Vᵀ:

    F̄ = U·( diag(σ̄) + T )·Vᵀ,   T_ij = (A_ij σ_j + B_ij σ_i) / (σ_j² − σ_i²)  (i ≠ j),
    A = UᵀŪ − ŪᵀU,  B = VᵀV̄ − V̄ᵀV.

The naive form divides by σ_j² − σ_i², which is 0/0 at repeated singular values (an undeformed particle has
σ = 1, 1, 1). We split it as

    T_ij = ½(A_ij + B_ij)/(σ_j − σ_i) + ½(A_ij − B_ij)/(σ_j + σ_i).

A loss that depends on U and V only through R = U·Vᵀ and σ (every material here) gives A = −B, so the first term
vanishes identically and the second stays finite: only the genuinely ill-posed part is clamped.
"""

import functools

import taichi as ti

from . import materials

__all__ = ["kernels", "decompose_func"]

_CLAMP = 1e-6  # smallest |σ_j ∓ σ_i| used as a divisor in the ill-posed part


def kernels(dim: int, real):
    """``(forward, backward)`` kernels for dimension ``dim``.

    ``forward(F, material, U, sig, V)``: F/U/V (N, d, d), sig (N, d), material (N,) int32. Particles whose
    material needs no SVD get U = V = I, σ = 1 (their stress never reads them).
    ``backward(U, sig, V, gU, gsig, gV, gF)``: accumulates dL/dF into gF (N, d, d).
    """
    return _build(dim, real)[:2]


def decompose_func(dim: int, real):
    """The per-particle ``ti.func`` ``decompose(F, material_id) -> (U, σ, V)`` behind ``forward`` (forward only:
    kernels that inline it must not be reverse-differentiated)."""
    return _build(dim, real)[2]


@functools.lru_cache(maxsize=None)
def _build(dim: int, real):
    D = dim
    A_mat = ti.types.ndarray(dtype=ti.types.matrix(D, D, real), ndim=1)
    A_vec = ti.types.ndarray(dtype=ti.types.vector(D, real), ndim=1)
    A_i = ti.types.ndarray(dtype=ti.i32, ndim=1)
    svd_ids = materials._SVD_MATERIALS

    @ti.func
    def uses_svd(m):
        hit = False
        for k in ti.static(svd_ids):
            if m == k:
                hit = True
        return hit

    @ti.func
    def svd2(F):
        """Closed-form 2x2 SVD, exact to round-off: polar F = R·S, then one Jacobi rotation diagonalises the
        symmetric S. (``ti.svd`` in 2D skips the rotation when |S01| < 1e-5, an error that shows up in
        finite-difference checks.)"""
        x = F[0, 0] + F[1, 1]
        y = F[1, 0] - F[0, 1]
        r = ti.sqrt(x * x + y * y)
        c = ti.cast(1.0, real)
        s = ti.cast(0.0, real)
        if r > 0:
            c = x / r
            s = y / r
        R = ti.Matrix([[c, -s], [s, c]], real)
        S = R.transpose() @ F
        cj = ti.cast(1.0, real)
        sj = ti.cast(0.0, real)
        s1 = S[0, 0]
        s2 = S[1, 1]
        off = 0.5 * (S[0, 1] + S[1, 0])
        tao = 0.5 * (S[0, 0] - S[1, 1])
        w = ti.sqrt(tao * tao + off * off)
        if off != 0 and ti.abs(tao) + w > 0:  # off² can underflow (|off| ~ 1e-20 in f32): then S is diagonal
            t = off / (tao + w) if tao > 0 else off / (tao - w)
            cj = 1.0 / ti.sqrt(t * t + 1.0)
            sj = -t * cj
            s1 = cj * cj * S[0, 0] - 2 * cj * sj * off + sj * sj * S[1, 1]
            s2 = sj * sj * S[0, 0] + 2 * cj * sj * off + cj * cj * S[1, 1]
        V = ti.Matrix([[cj, sj], [-sj, cj]], real)
        if s1 < s2:
            s1, s2 = s2, s1
            V = ti.Matrix([[-sj, cj], [-cj, -sj]], real)
        return R @ V, ti.Vector([s1, s2], real), V

    @ti.func
    def decompose(F, m):
        """(U, σ, V) of one particle's F; identity for a material that needs no SVD (forward only)."""
        u = ti.Matrix.identity(real, D)
        v = ti.Matrix.identity(real, D)
        s = ti.Vector.one(real, D)
        if uses_svd(m):
            if ti.static(D == 2):
                u, s, v = svd2(F)
            else:
                u, S, v = ti.svd(F, real)
                for i in ti.static(range(D)):
                    s[i] = S[i, i]
        return u, s, v

    @ti.kernel
    def forward(F: A_mat, material: A_i, U: A_mat, sig: A_vec, V: A_mat):
        for p in range(F.shape[0]):
            u, s, v = decompose(F[p], material[p])
            U[p] = u
            sig[p] = s
            V[p] = v

    @ti.func
    def safe_inv(x):
        y = x
        if ti.abs(x) < _CLAMP:
            y = ti.select(x >= 0, _CLAMP, -_CLAMP)
        return 1.0 / y

    @ti.kernel
    def backward(U: A_mat, sig: A_vec, V: A_mat, gU: A_mat, gsig: A_vec, gV: A_mat, gF: A_mat):
        for p in range(U.shape[0]):
            u = U[p]
            v = V[p]
            s = sig[p]
            A = u.transpose() @ gU[p] - gU[p].transpose() @ u
            B = v.transpose() @ gV[p] - gV[p].transpose() @ v
            T = ti.Matrix.zero(real, D, D)
            for i, j in ti.static(ti.ndrange(D, D)):
                if ti.static(i == j):
                    T[i, j] = gsig[p][i]
                else:
                    T[i, j] = (0.5 * (A[i, j] + B[i, j]) * safe_inv(s[j] - s[i])
                               + 0.5 * (A[i, j] - B[i, j]) * safe_inv(s[j] + s[i]))
            gF[p] += u @ T @ v.transpose()

    return forward, backward, decompose
