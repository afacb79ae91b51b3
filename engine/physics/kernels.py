"""Taichi kernels of one MLS-MPM substep (Hu et al. 2018, "A moving least squares material point method"),
with APIC transfers (Jiang et al. 2015) and the quadratic B-spline.

One set per (dimension, precision), built on first use: arrays are ``ti.types.ndarray`` so a kernel compiles once
per dimension whatever the particle count or grid size (fields would recompile per solver instance). Taichi also
keys kernels on which arguments require grad, so callers keep that pattern fixed (see ``Solver``).

Substep order (DiffTaichi/PlasticineLab style, every stage a separate kernel so its gradient can be replayed):
    deform   F_tr = (I + dt·C)·F
    svd      F_tr = U·diag(σ)·Vᵀ                       (hand-written gradient, svd.py)
    muscle   a_p = Σ_g w_pg·a_g
    stress   plasticity → F_new, Jp_new; Kirchhoff τ  (materials.py)
    p2g      m_i, (m·v)_i from particles
    grid     v_i = (m·v)_i / m_i + dt·g, then colliders
    g2p      v_p, C_p, x_p ← grid
"""

import functools
from types import SimpleNamespace

import taichi as ti

from . import materials, svd
from .model import SLIP, STICKY

__all__ = ["build"]


@functools.lru_cache(maxsize=None)
def build(dim: int, real) -> SimpleNamespace:
    """Kernels for ``dim`` (2 or 3) in float type ``real``; see the module docstring for the stage order."""
    D = dim
    vec = ti.types.vector(D, real)
    mat = ti.types.matrix(D, D, real)
    P_vec = ti.types.ndarray(dtype=vec, ndim=1)
    P_mat = ti.types.ndarray(dtype=mat, ndim=1)
    P_s = ti.types.ndarray(dtype=real, ndim=1)
    G_vec = ti.types.ndarray(dtype=vec, ndim=D)
    G_s = ti.types.ndarray(dtype=real, ndim=D)
    H_s = ti.types.ndarray(dtype=real, ndim=D - 1)
    H_vec = ti.types.ndarray(dtype=vec, ndim=D - 1)
    W_s = ti.types.ndarray(dtype=real, ndim=2)
    A_i = ti.types.ndarray(dtype=ti.i32, ndim=1)
    STENCIL = (3,) * D

    @ti.func
    def bspline(x, inv_dx, res):
        """Base node, fractional offset and quadratic B-spline weights of a particle at x."""
        Xp = x * inv_dx
        base = ti.cast(Xp - 0.5, ti.i32)
        for d in ti.static(range(D)):  # keep memory safe for a blown-up particle; the guard reports it
            base[d] = ti.min(ti.max(base[d], 0), res[d] - 3)
        fx = Xp - ti.cast(base, real)
        w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
        return base, fx, w

    @ti.kernel
    def deform(C: P_mat, F: P_mat, dt: real, F_tr: P_mat):
        for p in range(F.shape[0]):
            F_tr[p] = (ti.Matrix.identity(real, D) + dt * C[p]) @ F[p]

    @ti.kernel
    def muscle(w: W_s, act: P_s, out: P_s):
        # out must be zeroed; one atomic add per (particle, channel) keeps the gradient a plain transpose
        for p, g in ti.ndrange(w.shape[0], w.shape[1]):
            out[p] += w[p, g] * act[g]

    @ti.kernel
    def p2g(x: P_vec, v: P_vec, C: P_mat, tau: P_mat, vol: P_s, rho: P_s, dx: real, dt: real,
            grid_mv: G_vec, grid_m: G_s):
        for p in range(x.shape[0]):
            inv_dx = 1.0 / dx  # inside the loop: Taichi's autodiff wants kernels made of loops only
            res = grid_m.shape
            base, fx, w = bspline(x[p], inv_dx, res)
            mass = vol[p] * rho[p]
            # MLS-MPM momentum: stress enters as −dt·V·M⁻¹·τ with M⁻¹ = 4/dx² for the quadratic kernel
            affine = -dt * vol[p] * 4.0 * inv_dx * inv_dx * tau[p] + mass * C[p]
            for offs in ti.static(ti.grouped(ti.ndrange(*STENCIL))):
                dpos = (ti.cast(offs, real) - fx) * dx
                weight = ti.cast(1.0, real)
                for d in ti.static(range(D)):
                    weight *= w[offs[d]][d]
                grid_mv[base + offs] += weight * (mass * v[p] + affine @ dpos)
                grid_m[base + offs] += weight * mass

    @ti.func
    def collide(v, n, kind, mu):
        """Velocity after a static collider with outward normal n: sticky, slip or separate, Coulomb μ."""
        vn = v.dot(n)
        out = v
        if kind == STICKY:
            out = ti.Vector.zero(real, D)
        elif kind == SLIP or vn < 0:
            vt = v - vn * n
            if vn < 0 and mu > 0:
                vt_norm = ti.sqrt(vt.dot(vt) + 1e-30)
                vt *= ti.max(0.0, 1.0 + mu * vn / vt_norm)
            out = vt
        return out

    @ti.kernel
    def grid(grid_mv: G_vec, grid_m: G_s, gravity: vec, dt: real, dx: real, bound: ti.i32, heights: H_s,
             normals: H_vec, floor_kind: ti.i32, floor_mu: real, wall_kind: ti.i32, wall_mu: real, clamp_lo: vec, clamp_hi: vec,
             grid_v: G_vec):
        for I in ti.grouped(grid_m):
            v = ti.Vector.zero(real, D)
            m = grid_m[I]
            if m > 0:
                v = grid_mv[I] / m + dt * gravity
                h = 0.0
                n = vec(0.0)
                if ti.static(D == 2):
                    h = heights[I[0]]
                    n = normals[I[0]]
                else:
                    h = heights[I[0], I[2]]
                    n = normals[I[0], I[2]]
                if I[1] * dx < h:
                    v = collide(v, n, floor_kind, floor_mu)
                for d in ti.static(range(D)):
                    e = vec(0.0)
                    e[d] = 1.0
                    if ti.static(d != 1):  # the floor is the heightfield (never below the wall band)
                        if I[d] < bound:
                            v = collide(v, e, wall_kind, wall_mu)
                    if I[d] >= grid_m.shape[d] - bound:
                        v = collide(v, -e, wall_kind, wall_mu)
                xi = ti.cast(I, real) * dx
                if all(xi >= clamp_lo) and all(xi <= clamp_hi):
                    v = vec(0.0)
            grid_v[I] = v

    @ti.kernel
    def g2p(x: P_vec, grid_v: G_vec, dx: real, dt: real, x_out: P_vec, v_out: P_vec, C_out: P_mat):
        for p in range(x.shape[0]):
            inv_dx = 1.0 / dx
            res = grid_v.shape
            base, fx, w = bspline(x[p], inv_dx, res)
            new_v = vec(0.0)
            new_C = mat(0.0)
            for offs in ti.static(ti.grouped(ti.ndrange(*STENCIL))):
                dpos = (ti.cast(offs, real) - fx) * dx
                weight = ti.cast(1.0, real)
                for d in ti.static(range(D)):
                    weight *= w[offs[d]][d]
                gv = grid_v[base + offs]
                new_v += weight * gv
                new_C += 4.0 * inv_dx * inv_dx * weight * gv.outer_product(dpos)
            v_out[p] = new_v
            C_out[p] = new_C
            x_out[p] = x[p] + dt * new_v

    @ti.kernel
    def check(x: P_vec, v: P_vec, F: P_mat, lo: real, hi: vec, step: ti.i32, flag: ti.types.ndarray(dtype=ti.i32, ndim=1)):
        # flag[0]: first bad substep; flag[1]: a non-finite value; flag[2]: a particle outside the domain
        for p in range(x.shape[0]):
            bad_val = 0
            for d in ti.static(range(D)):
                if not (ti.abs(x[p][d]) < 1e30 and ti.abs(v[p][d]) < 1e30):  # false for NaN too
                    bad_val = 1
            if not (ti.abs(F[p].determinant()) < 1e30):
                bad_val = 1
            out = 0
            for d in ti.static(range(D)):
                if x[p][d] < lo or x[p][d] >= hi[d]:
                    out = 1
            if bad_val or out:
                ti.atomic_min(flag[0], step)
                flag[1] = ti.max(flag[1], bad_val)
                flag[2] = ti.max(flag[2], out)

    svd_forward, svd_backward = svd.kernels(dim, real)
    return SimpleNamespace(deform=deform, svd=svd_forward, svd_backward=svd_backward, muscle=muscle,
                           stress=materials.build_stress_kernel(dim, real), p2g=p2g, grid=grid, g2p=g2p, check=check)

