"""``render_mesh``: rasterize + attributes + shading + compositing, hard or soft, in one call."""
import math
from dataclasses import dataclass

import taichi as ti
import torch

from .. import backend, bridge
from ..launch import lean
from .antialias import antialias as _antialias
from .attributes import _texel_coords, face_attributes, interpolate, sample_texture
from .camera import Camera
from .checks import check_finite, check_mesh, check_per
from .clip import CLIP_Z, clip_near
from .raster import (_IL, _IZ, _VXY, TILE, Fragments, LazyFragments, _acc, _bary, _ndc2, _persp_bary, _proj_vjp,
                     _project, _project_bwd, _select, _select_tile, _spread, _tiled, bin_faces, camera_table,
                     differentiable_fragments, expand_background, project, rasterize, soft_composite)
from .shading import DirectionalLights, face_normals, lambert
from .zbuffer import _hard_bary, _lambert, _run, _zb_backward, _zb_bg_grad, cpu_runs, project_min_z, zbuffer

__all__ = ["MeshRender", "render_mesh", "SoftMesh", "stack_meshes", "StackedMeshes"]

_OPAQUE_CUT = True
"""SoftMesh's selection stops behind each pixel's nearest opaque face holding it (raster._select: exact; tests turn
it off to compare)."""

_SPAN = backend.CPU_SPAN
"""Taichi's CPU range-for hands each thread a contiguous block of at least this many iterations (backend.CPU_SPAN;
see _soft_bwd)."""


# ---------------------------------------------------------------------------------------------------------------
# fused soft path: coverage + attribute interpolation + per-face shading + compositing in one kernel
# ---------------------------------------------------------------------------------------------------------------
@ti.func
def _layer_q(attr: ti.template(), faces: ti.template(), b, f, w0, w1, w2, z, per_face, C: ti.template()):
    # the C + 2 channels of a layer (face f, perspective-correct barycentrics w, depth z) before shading:
    # colour/feature (C), depth, and the constant 1 whose composite is alpha (so colour, depth and alpha share one
    # compositing recurrence)
    ba = b if attr.shape[0] > 1 else 0
    v = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
    if per_face:
        for c in ti.static(range(C)):
            v[c] = attr[ba, f, c]
    else:
        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
        for c in ti.static(range(C)):
            v[c] = w0 * attr[ba, i0, c] + w1 * attr[ba, i1, c] + w2 * attr[ba, i2, c]
    v[C] = z
    return v


@ti.func
def _shade_vec(shade: ti.template(), b, f, use_shade, C: ti.template()):
    # per-face multiplier of the colour channels (Lambert irradiance); 1 for depth and alpha
    v = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
    if use_shade:
        bs = b if shade.shape[0] > 1 else 0
        for c in ti.static(range(C)):
            v[c] = shade[bs, f, c]
    return v


@ti.func
def _row_q(pk: ti.template(), b, f, F, w0, w1, w2, z, per_face, C: ti.template()):
    # _layer_q from face f's packed row in batch b (_face_frame_rows): the same sums of the same numbers, without
    # the faces -> attributes gather. The corners of channel c are adjacent (3 c, 3 c + 1, 3 c + 2): with the
    # corners' channels adjacent instead, LLVM vectorised two channels' sums and reassociated the compositing's
    # products differently (rgb off main's by ~1e-7)
    r = (b * F + f) * (4 * C + 4)
    v = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
    if per_face:
        for c in ti.static(range(C)):
            v[c] = pk[r + c]
    else:
        for c in ti.static(range(C)):
            v[c] = w0 * pk[r + 3 * c] + w1 * pk[r + 3 * c + 1] + w2 * pk[r + 3 * c + 2]
    v[C] = z
    return v


@ti.func
def _row_shade(pk: ti.template(), b, f, F, use_shade, C: ti.template()):
    # _shade_vec from face f's packed row (_row_q)
    v = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
    if use_shade:
        r = (b * F + f) * (4 * C + 4) + 3 * C
        for c in ti.static(range(C)):
            v[c] = pk[r + c]
    return v


@ti.func
def _layer_attr(attr: ti.template(), faces: ti.template(), pk: ti.template(), b, f, F, w0, w1, w2, z, per_face,
                packed: ti.template(), C: ti.template()):
    # a layer's C + 2 channels before shading: from face f's packed row (``packed``: _row_q) or through faces and
    # attr (_layer_q)
    v = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
    if ti.static(packed):
        v = _row_q(pk, b, f, F, w0, w1, w2, z, per_face, C)
    else:
        v = _layer_q(attr, faces, b, f, w0, w1, w2, z, per_face, C)
    return v


@ti.func
def _layer_shade(shade: ti.template(), pk: ti.template(), b, f, F, use_shade, packed: ti.template(),
                 C: ti.template()):
    # face f's shade multiplier (C + 2 channels): from its packed row (``packed``: _row_shade) or shade (_shade_vec)
    v = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
    if ti.static(packed):
        v = _row_shade(pk, b, f, F, use_shade, C)
    else:
        v = _shade_vec(shade, b, f, use_shade, C)
    return v


@ti.func
def _row_opac(opac: ti.template(), pk: ti.template(), b, f, F, packed: ti.template(), C: ti.template()):
    # face f's opacity in batch b: from its packed row (``packed``) or opac (B, F)
    a = 0.0
    if ti.static(packed):
        a = pk[(b * F + f) * (4 * C + 4) + 4 * C]
    else:
        a = opac[b, f]
    return a


@ti.func
def _bg_vec(bg: ti.template(), b, py, px, W, C: ti.template()):
    # background behind the last layer: the background colour, depth 0, alpha 0
    v = ti.Vector([0.0 for _ in ti.static(range(C + 2))])
    bb = b if bg.shape[0] > 1 else 0
    pp = (py * W + px) if bg.shape[1] > 1 else 0
    for c in ti.static(range(C)):
        v[c] = bg[bb, pp, c]
    return v


@ti.func
def _tex_q(tex: ti.template(), uvc: ti.template(), b, f, w0, w1, w2, use_tex: ti.template(), C: ti.template()):
    # per-layer multiplier of the colour channels: the bilinear texture colour at the fragment's uv (the corners'
    # uvs interpolated with the perspective-correct barycentrics w, _texel_coords' conventions); 1 for depth, alpha
    v = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
    if ti.static(use_tex):
        bt = b if tex.shape[0] > 1 else 0
        bu = b if uvc.shape[0] > 1 else 0
        uu = w0 * uvc[bu, f, 0, 0] + w1 * uvc[bu, f, 1, 0] + w2 * uvc[bu, f, 2, 0]
        vv = w0 * uvc[bu, f, 0, 1] + w1 * uvc[bu, f, 1, 1] + w2 * uvc[bu, f, 2, 1]
        Ht, Wt = tex.shape[1], tex.shape[2]
        x0, y0, tx, ty = _texel_coords(uu, vv, Ht, Wt)
        x1, y1 = ti.min(x0 + 1, Wt - 1), ti.min(y0 + 1, Ht - 1)
        for c in ti.static(range(C)):
            v[c] = ((1 - ty) * ((1 - tx) * tex[bt, y0, x0, c] + tx * tex[bt, y0, x1, c])
                    + ty * ((1 - tx) * tex[bt, y1, x0, c] + tx * tex[bt, y1, x1, c]))
    return v


@ti.func
def _persp_bary_fast(fd: ti.template(), b, f, w0, w1, w2):
    # raster._persp_bary from the screen barycentrics w (_bary) with one division instead of four (equal up to
    # rounding): the clamped barycentrics' normalisation by their sum cancels in the perspective weights
    # q_i / sum q, and the depth is 1 / sum q times that sum
    w0, w1, w2 = ti.max(w0, 0.0), ti.max(w1, 0.0), ti.max(w2, 0.0)
    q0, q1, q2 = w0 * fd[b, f, _IZ], w1 * fd[b, f, _IZ + 1], w2 * fd[b, f, _IZ + 2]
    iq = 1.0 / (q0 + q1 + q2)
    return q0 * iq, q1 * iq, q2 * iq, (w0 + w1 + w2) * iq


@ti.func
def _composite(fd: ti.template(), faces: ti.template(), attr: ti.template(), shade: ti.template(),
               opac: ti.template(), bg: ti.template(), tex: ti.template(), uvc: ti.template(), fn: ti.template(),
               p2f: ti.template(), cv: ti.template(), rgb: ti.template(), dep: ti.template(), alp: ti.template(),
               nrm: ti.template(), b, py, px, lf: ti.template(), lz: ti.template(), ld: ti.template(), o, s, per_face,
               use_shade, use_tex: ti.template(), sigma, K: ti.template(), C: ti.template(), cut: ti.template(),
               store, pk: ti.template(), packed: ti.template()):
    # one pixel's list lf, lz, ld[o + k s] (slot k; by (z, id)) composited front to back over the background; p2f gets
    # the composited layers (``cut``: -1 behind an opaque one) or the whole list; with ``store`` cv gets each
    # layer's coverage for the backward, negated where the pixel lies outside the face (d > 0: the distance has a
    # gradient there), for every layer p2f names. ``packed``: attributes, shade and opacity from the faces' packed
    # rows pk (_face_frame_rows)
    W, F = p2f.shape[2], faces.shape[0]
    x, y = px + 0.5, py + 0.5
    bn = b if fn.shape[0] > 1 else 0
    for c in ti.static(range(3)):
        nrm[b, py, px, c] = 0.0
    if lf[o] >= 0:
        for c in ti.static(range(3)):
            if ti.static(packed):
                nrm[b, py, px, c] = pk[(b * F + lf[o]) * (4 * C + 4) + 4 * C + 1 + c]
            else:
                nrm[b, py, px, c] = fn[bn, lf[o], c]
    acc = ti.Vector([0.0 for _ in ti.static(range(C + 2))])
    T = 1.0
    for k in range(K):
        f = lf[o + k * s]
        # layers behind a fully opaque one (T = 0 exactly) add nothing: skipped, and with ``cut`` not reported
        # (-1); without it the backward needs them for that opaque layer's opacity gradient
        p2f[b, py, px, k] = f if (T != 0.0 or not ti.static(cut)) else -1
        if f >= 0 and (T != 0.0 or (store and not ti.static(cut))):
            d = ld[o + k * s]
            cov = 1.0
            if d > 0:
                cov = ti.exp(-d / sigma)
            if store:
                cv[b, py, px, k] = -cov if d > 0 else cov
            if T != 0.0:
                a = _row_opac(opac, pk, b, f, F, packed, C) * cov
                # the weights and depth by one division (_persp_bary_fast)
                w0, w1, w2, z = _persp_bary_fast(fd, b, f, *_bary(fd, b, f, x, y))
                acc += (T * a) * _layer_attr(attr, faces, pk, b, f, F, w0, w1, w2, z, per_face, packed, C) \
                    * _layer_shade(shade, pk, b, f, F, use_shade, packed, C) \
                    * _tex_q(tex, uvc, b, f, w0, w1, w2, use_tex, C)
                T *= 1.0 - a
    acc += T * _bg_vec(bg, b, py, px, W, C)
    for c in ti.static(range(C)):
        rgb[b, py, px, c] = acc[c]
    dep[b, py, px] = acc[C]
    alp[b, py, px] = acc[C + 1]


@lean
@ti.kernel
def _soft_fwd(fd: ti.types.ndarray(), offsets: ti.types.ndarray(), counts: ti.types.ndarray(),
              bins: ti.types.ndarray(), faces: ti.types.ndarray(), attr: ti.types.ndarray(),
              shade: ti.types.ndarray(), opac: ti.types.ndarray(), bg: ti.types.ndarray(), tex: ti.types.ndarray(),
              uvc: ti.types.ndarray(), fn: ti.types.ndarray(), p2f: ti.types.ndarray(), cv: ti.types.ndarray(),
              rgb: ti.types.ndarray(), dep: ti.types.ndarray(), alp: ti.types.ndarray(), nrm: ti.types.ndarray(),
              max_d2: float, ndc2: float, per_face: int, use_shade: int, use_tex: ti.template(), sigma: float,
              K: ti.template(), C: ti.template(), tiled: ti.template(), spread: int, cut: ti.template(), store: int,
              pk: ti.types.ndarray(), packed: ti.template()):
    # selection and compositing in one pass per pixel (``tiled``, CPU: per tile of pixels, raster._select_tile):
    # the K-nearest list (raster._select, cut behind the first opaque face holding the pixel) stays local and is
    # composited at once; only the composited layers' face ids and, with ``store``, their signed coverages (cv,
    # _composite) are written for the backward (no per-slot barycentrics or depths in memory). nrm: the nearest
    # face's normal fn (Bn, F, 3), 0 where empty
    H, W = p2f.shape[1], p2f.shape[2]
    if ti.static(tiled):
        # Taichi's CPU range-for hands each thread blocks of >= 512 iterations: ``spread`` iterations per tile
        # (only the first works) keep the tiles balanced over the threads (raster._spread)
        ty_n, tx_n = offsets.shape[1], offsets.shape[2]
        for it in range(p2f.shape[0] * ty_n * tx_n * spread):
            if it % spread == 0:
                t = it // spread
                b, ty, tx = t // (ty_n * tx_n), t // tx_n % ty_n, t % tx_n
                lf, lz, ld = _select_tile(fd, offsets, counts, bins, b, ty, tx, max_d2, ndc2, K, opac, cut)
                for p in range(TILE * TILE):
                    py, px = ty * TILE + p // TILE, tx * TILE + p % TILE
                    if py < H and px < W:
                        _composite(fd, faces, attr, shade, opac, bg, tex, uvc, fn, p2f, cv, rgb, dep, alp, nrm, b,
                                   py, px, lf, lz, ld, p, TILE * TILE, per_face, use_shade, use_tex, sigma, K, C, cut,
                                   store, pk, packed)
    else:
        for b, py, px in ti.ndrange(p2f.shape[0], H, W):
            lf, lz, ld = _select(fd, offsets, counts, bins, b, py, px, max_d2, ndc2, K, opac, cut)
            _composite(fd, faces, attr, shade, opac, bg, tex, uvc, fn, p2f, cv, rgb, dep, alp, nrm, b, py, px,
                       lf, lz, ld, 0, 1, per_face, use_shade, use_tex, sigma, K, C, cut, store, pk, packed)


@ti.func
def _seg_foot(fd: ti.template(), b, f, u, v, x, y):
    # raster._seg_at's steps for the face's edge from vertex u to v: the clamped parameter t of the point q nearest
    # to the pixel p = (x, y) and q - p
    ux, uy = fd[b, f, _VXY + 2 * u], fd[b, f, _VXY + 2 * u + 1]
    ex, ey = fd[b, f, _VXY + 2 * v] - ux, fd[b, f, _VXY + 2 * v + 1] - uy
    t = ti.min(ti.max(((x - ux) * ex + (y - uy) * ey) * fd[b, f, _IL + u], 0.0), 1.0)
    return t, ux + t * ex - x, uy + t * ey - y


@ti.func
def _edge_bits(s0, s1, s2):
    # the edges whose line a pixel with screen barycentrics s is outside of, bit e for the edge from vertex e to
    # e + 1 mod 3 (raster._signed_d2e's qualifying test: the opposite barycentric <= 0)
    return ti.select(s2 <= 0, 1, 0) + ti.select(s0 <= 0, 2, 0) + ti.select(s1 <= 0, 4, 0)


@ti.func
def _near_seg(fd: ti.template(), b, f, m, x, y):
    # for a pixel outside the face: its nearest edge e (from vertex e to e + 1 mod 3) among those whose line it is
    # outside of (m: _edge_bits; raster._signed_d2e's choice, the first on ties), with _seg_foot's t and q - p
    # there. Most layers are outside one edge line only: that edge, no comparison (~3 % of the backward); else
    # only the qualifying edges are evaluated. None qualifies only where the forward's distance was ~0: e = 0,
    # t = 0 and q = p (no gradient)
    e, t, rx, ry = 0, 0.0, 0.0, 0.0
    if m == 1 or m == 2 or m == 4:
        e = m >> 1
        t, rx, ry = _seg_foot(fd, b, f, e, (e + 1) % 3, x, y)
    else:
        best = 1e30
        if m & 1:
            t, rx, ry = _seg_foot(fd, b, f, 0, 1, x, y)
            best = rx * rx + ry * ry
        if m & 2:
            t1, qx, qy = _seg_foot(fd, b, f, 1, 2, x, y)
            d1 = qx * qx + qy * qy
            if d1 < best:
                e, t, rx, ry, best = 1, t1, qx, qy, d1
        if m & 4:
            t1, qx, qy = _seg_foot(fd, b, f, 2, 0, x, y)
            if qx * qx + qy * qy < best:
                e, t, rx, ry = 2, t1, qx, qy
    return e, t, rx, ry


@lean
@ti.kernel
def _soft_bwd(xy: ti.types.ndarray(), fd: ti.types.ndarray(), faces: ti.types.ndarray(), p2f: ti.types.ndarray(),
              cv: ti.types.ndarray(),
              attr: ti.types.ndarray(), shade: ti.types.ndarray(),
              opac: ti.types.ndarray(), bg: ti.types.ndarray(), tex: ti.types.ndarray(), uvc: ti.types.ndarray(),
              g_rgb: ti.types.ndarray(), g_dep: ti.types.ndarray(), g_alp: ti.types.ndarray(),
              gbuf: ti.types.ndarray(), zs: ti.types.ndarray(), g_bg: ti.types.ndarray(), o_attr: int, o_shade: int,
              o_opac: int, o_uv: int, o_bg: int, o_tex: int, per_face: int, use_shade: int, use_tex: ti.template(),
              sigma: float, ndc2: float, n_chunks: int, private: ti.template(), tex_private: ti.template(),
              has_gdep: int, has_galp: int, full: int, need: int, K: ti.template(), C: ti.template(),
              pk: ti.types.ndarray(), packed: ti.template()):
    # ``packed``: each layer's attributes, shade and opacity from the faces' packed rows pk (_face_frame_rows)
    # has_gdep / has_galp: 0 when the loss does not use depth / alpha (their gradient arrays are then dummies)
    # need: bit 0 the attributes', bit 1 the opacity's gradient is wanted (else their regions are dummies)
    # full: p2f holds whole lists and the layers behind T = 0 go into R (an opaque layer's opacity gradient is
    # T (v - R) with R the layers behind it; they add nothing else); otherwise p2f stops where T = 0
    # Linear in K: out_c = sum_k T_k a_k v_kc + T_n bg_c, so d out_c / d a_k = T_k (v_kc - R_kc) with R_kc the
    # composite of the layers behind k over the background, built back to front (R_{k-1} = a_k v_k + (1-a_k) R_k).
    # No division by 1 - a_k (0 inside an opaque face). Only go . R_k enters dL / d a_k = T_k go . (v_k - R_k), so
    # the walk carries that one number (go . R_{k-1} = a_k go . v_k + (1 - a_k) go . R_k), not C + 2 channels.
    # The scattered gradients are regions of one flat buffer gbuf, each with its copies stacked, at offsets
    # 0 (screen xy, (copies * Bx, V, 2)), o_attr ((copies * Ba, V or F, C)), o_shade ((copies * Bs, F, C)), o_opac
    # ((copies * Bo, F)), o_uv ((copies * Bu, F, 6), per face corner), o_bg ((copies * Bg, C), unless the
    # background is an image: then g_bg (B, H*W, C) is written whole) and o_tex ((tex copies * Bt, Ht, Wt, C)).
    # Flat indices from sizes read once per row: Taichi's CPU code reloads an ndarray's pointer and every shape it
    # indexes with after each store (~17 scattered adds per layer); a flat index reloads the pointer alone.
    # ``private`` (CPU): chunk ch takes image rows ch, ch + n_chunks, ... and adds into its own copy with plain
    # adds; otherwise (GPU) every pixel is its own work item and atomics add into one copy.
    # Texture (``use_tex``, compile-time): the texel gradient has n_chunks copies when ``tex_private``, else one
    # copy and atomics (CPU too for a large texture: see _texture_copies_pay).
    H, W = p2f.shape[1], p2f.shape[2]
    Ba, Bs, Bo, Bx, Bg = attr.shape[0], shade.shape[0], opac.shape[0], xy.shape[0], bg.shape[0]
    Bt, Bu, Ht, Wt, Fu = tex.shape[0], uvc.shape[0], tex.shape[1], tex.shape[2], uvc.shape[1]
    Vx, Na, Fs, Fo = xy.shape[1], attr.shape[1], shade.shape[1], opac.shape[1]
    F = faces.shape[0]
    bg_image = g_bg.shape[1] > 1
    inv_sigma = 1.0 / sigma         # a division per layer less (divisions dominated the per-layer maths)
    # Taichi's CPU range-for gives each thread a contiguous block of at least _SPAN iterations: a plain loop over
    # the few chunks would run them all on one thread, so on CPU the loop has _SPAN iterations per chunk and only
    # every _SPAN-th one works (each chunk has its own gradient copy: any schedule gives the same result)
    # Without private copies (GPU) every pixel is its own work item: chunk ch is row ch, split into W items.
    span = ti.static(_SPAN if private else 1)
    npx = 1 if ti.static(private) else W
    for it in range(n_chunks * span * npx):
        if it % span == 0:
            ch = it // span // npx
            px0, px1 = 0, W
            if ti.static(not private):
                px0 = it % npx
                px1 = px0 + 1
            cb = ch if ti.static(private) else 0
            if ti.static(private):
                # the chunk zeroes its own copy first (zs: SoftMesh.backward): no separate fill pass
                for r in range(zs.shape[0]):
                    z0 = zs[r, 0] + cb * zs[r, 1]
                    for i in range(zs[r, 1]):
                        gbuf[z0 + i] = 0.0
            row = ch
            while row < p2f.shape[0] * H:
                b, py = row // H, row % H
                row += n_chunks
                ba = b if Ba > 1 else 0
                bs = b if Bs > 1 else 0
                bo = b if Bo > 1 else 0
                bb = b if Bg > 1 else 0
                bt = b if Bt > 1 else 0
                bu = b if Bu > 1 else 0
                # the pixel's rows of each gradient region in this chunk's copy
                r_attr = o_attr + (cb * Ba + ba) * Na * C
                r_shade = o_shade + (cb * Bs + bs) * Fs * C
                r_opac = o_opac + (cb * Bo + bo) * Fo
                r_xy = (cb * Bx + b) * Vx * 2
                r_uv = o_uv + (cb * Bu + bu) * Fu * 6
                tb = bt
                if ti.static(tex_private):
                    tb = cb * Bt + bt
                r_tex = o_tex + tb * Ht * Wt * C
                # a constant background's gradient: the row's sum in registers, one add per row
                gbg = ti.Vector([0.0 for _ in ti.static(range(C))])
                for px in range(px0, px1):
                    # the layers up to the last one seen (T != 0 before it): behind it T = 0, so neither they nor
                    # anything they add to R (cut by that layer's a = 1) reach the outputs
                    x, y = px + 0.5, py + 0.5
                    # each layer's coverage (signed: negative outside the face) as the forward computed it (cv)
                    la = ti.Vector([0.0 for _ in ti.static(range(K))])
                    lt, lcv, lw0, lw1, lw2 = la, la, la, la, la
                    lm = ti.Vector([0 for _ in ti.static(range(K))])
                    lu = ti.Matrix([[0.0 for _ in ti.static(range(C + 1))] for _ in ti.static(range(K))])
                    n = 0
                    Tn = 1.0
                    while n < K:
                        f = p2f[b, py, px, n]
                        if f < 0 or (Tn == 0.0 and not full):
                            break
                        s = cv[b, py, px, n]
                        a = _row_opac(opac, pk, b, f, F, packed, C) * ti.abs(s)
                        la[n], lt[n], lcv[n] = a, Tn, s
                        Tn *= 1.0 - a
                        s0, s1, s2 = _bary(fd, b, f, x, y)
                        lm[n] = _edge_bits(s0, s1, s2)
                        w0, w1, w2, zk = _persp_bary_fast(fd, b, f, s0, s1, s2)
                        # the weights again only for an attribute or texture gradient
                        if ti.static(use_tex):
                            lw0[n], lw1[n], lw2[n] = w0, w1, w2
                        elif need & 1:
                            lw0[n], lw1[n], lw2[n] = w0, w1, w2
                        q = _layer_attr(attr, faces, pk, b, f, F, w0, w1, w2, zk, per_face, packed, C)
                        for c in ti.static(range(C)):
                            lu[n, c] = q[c]
                        if has_gdep:                        # else the depth channel meets go = 0 (lu's 0)
                            lu[n, C] = zk
                        n += 1
                    go = ti.Vector([0.0 for _ in ti.static(range(C + 2))])
                    for c in ti.static(range(C)):
                        go[c] = g_rgb[b, py, px, c]
                        if bg_image:
                            g_bg[b, py * W + px, c] = go[c] * Tn
                        else:
                            gbg[c] += go[c] * Tn
                    if has_gdep:
                        go[C] = g_dep[b, py, px]
                    if has_galp:
                        go[C + 1] = g_alp[b, py, px]
                    # only go . R enters the gradients: the layers behind k composited over the background, projected
                    # on the output gradient (one number instead of C + 2 per layer)
                    R = go.dot(_bg_vec(bg, b, py, px, W, C))
                    for kk in range(n):
                        k = n - 1 - kk
                        f = p2f[b, py, px, k]
                        a, T = la[k], lt[k]
                        # every read of the layer before its first store (see above)
                        w0, w1, w2, m = lw0[k], lw1[k], lw2[k], lm[k]
                        u = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
                        for c in ti.static(range(C + 1)):
                            u[c] = lu[k, c]
                        # texture: the colour channels times the bilinear texel colour tc at the fragment's uv
                        col = u
                        tc = ti.Vector([1.0 for _ in ti.static(range(C + 2))])
                        t00 = ti.Vector([0.0 for _ in ti.static(range(C))])
                        t01, t10, t11 = t00, t00, t00
                        uu, vv, tx, ty = 0.0, 0.0, 0.0, 0.0
                        x0, y0, x1, y1 = 0, 0, 0, 0
                        if ti.static(use_tex):
                            uu = w0 * uvc[bu, f, 0, 0] + w1 * uvc[bu, f, 1, 0] + w2 * uvc[bu, f, 2, 0]
                            vv = w0 * uvc[bu, f, 0, 1] + w1 * uvc[bu, f, 1, 1] + w2 * uvc[bu, f, 2, 1]
                            x0, y0, tx, ty = _texel_coords(uu, vv, Ht, Wt)
                            x1, y1 = ti.min(x0 + 1, Wt - 1), ti.min(y0 + 1, Ht - 1)
                            for c in ti.static(range(C)):
                                t00[c], t01[c] = tex[bt, y0, x0, c], tex[bt, y0, x1, c]
                                t10[c], t11[c] = tex[bt, y1, x0, c], tex[bt, y1, x1, c]
                                tc[c] = ((1 - ty) * ((1 - tx) * t00[c] + tx * t01[c])
                                         + ty * ((1 - tx) * t10[c] + tx * t11[c]))
                            u = col * tc
                        sh = _layer_shade(shade, pk, b, f, F, use_shade, packed, C)
                        out = lcv[k] < 0                        # outside the face: d > 0
                        cov = ti.abs(lcv[k])
                        gv_ = go.dot(u * sh)
                        ga = T * (gv_ - R)                      # dL / d alpha_k
                        ta = T * a
                        if ta != 0.0:
                            g_u, g_v = 0.0, 0.0                 # dL / d(tx, ty) of the bilinear lookup
                            for c in ti.static(range(C)):
                                gv = go[c] * ta
                                if use_shade:
                                    _acc(gbuf, r_shade + f * C + c, gv * u[c], private)
                                gs = gv * sh[c]                 # dL / d(colour x texture)
                                if ti.static(use_tex):
                                    gt = gs * col[c]            # dL / d(texture colour)
                                    gs = gs * tc[c]
                                    q0, q1 = r_tex + (y0 * Wt) * C + c, r_tex + (y1 * Wt) * C + c
                                    _acc(gbuf, q0 + x0 * C, (1 - ty) * (1 - tx) * gt, tex_private)
                                    _acc(gbuf, q0 + x1 * C, (1 - ty) * tx * gt, tex_private)
                                    _acc(gbuf, q1 + x0 * C, ty * (1 - tx) * gt, tex_private)
                                    _acc(gbuf, q1 + x1 * C, ty * tx * gt, tex_private)
                                    g_u += gt * ((1 - ty) * (t01[c] - t00[c]) + ty * (t11[c] - t10[c]))
                                    g_v += gt * ((1 - tx) * (t10[c] - t00[c]) + tx * (t11[c] - t01[c]))
                                if need & 1:
                                    i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                                    if per_face:
                                        _acc(gbuf, r_attr + f * C + c, gs, private)
                                    else:
                                        _acc(gbuf, r_attr + i0 * C + c, gs * w0, private)
                                        _acc(gbuf, r_attr + i1 * C + c, gs * w1, private)
                                        _acc(gbuf, r_attr + i2 * C + c, gs * w2, private)
                            if ti.static(use_tex):
                                # d(tx, ty) / d(u, v) = (Wt, -Ht), 0 where the lookup is clamped; then the corners'
                                # uvs through the barycentrics
                                fx, fy = uu * Wt - 0.5, (1.0 - vv) * Ht - 0.5
                                g_u = g_u * Wt if 0.0 < fx < Wt - 1.0 else 0.0
                                g_v = -g_v * Ht if 0.0 < fy < Ht - 1.0 else 0.0
                                q = r_uv + f * 6
                                _acc(gbuf, q, g_u * w0, private)
                                _acc(gbuf, q + 1, g_v * w0, private)
                                _acc(gbuf, q + 2, g_u * w1, private)
                                _acc(gbuf, q + 3, g_v * w1, private)
                                _acc(gbuf, q + 4, g_u * w2, private)
                                _acc(gbuf, q + 5, g_v * w2, private)
                        if need & 2:
                            _acc(gbuf, r_opac + f, ga * cov, private)
                        if out:
                            # the nearest edge (e, e + 1), its foot's parameter t and q - p, from the face record
                            e, t, rx, ry = _near_seg(fd, b, f, m, x, y)
                            # d(alpha)/d(d2) = -alpha / sigma; d2 = ndc2 |p - q|^2 with q the closest point of the
                            # nearest edge (u, u + e), q = u + t e (t clamped to the segment, held fixed:
                            # d|p - q|^2/dq . dq/dt = 0 inside it): raster._edge_grad's steps
                            gd = -ga * a * inv_sigma * ndc2
                            qu = r_xy + faces[f, e] * 2
                            qv = r_xy + faces[f, (e + 1) % 3] * 2
                            _acc(gbuf, qu, gd * 2.0 * rx * (1.0 - t), private)
                            _acc(gbuf, qu + 1, gd * 2.0 * ry * (1.0 - t), private)
                            _acc(gbuf, qv, gd * 2.0 * rx * t, private)
                            _acc(gbuf, qv + 1, gd * 2.0 * ry * t, private)
                        R = a * gv_ + (1.0 - a) * R
                if not bg_image:
                    for c in ti.static(range(C)):
                        _acc(gbuf, o_bg + (cb * Bg + bb) * C + c, gbg[c], private)


@lean
@ti.kernel
def _fill0(buf: ti.types.ndarray()):
    # torch.zeros' fill is an OpenMP region; on a busy 2-core box it waited ~20 ms for 266k floats at load ~9
    for i in range(buf.shape[0]):
        buf[i] = 0.0


@lean
@ti.kernel
def _copy_flat(src: ti.types.ndarray(), dst: ti.types.ndarray()):
    # dst = src (1-D), without torch's OpenMP copy
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@lean
@ti.kernel
def _fill_rows(src: ti.types.ndarray(), buf: ti.types.ndarray(), F: int):
    # buf ((B, F) flat) = src (1 or B, 1 or F) broadcast: torch's copy of an expanded tensor is an OpenMP region (51k
    # faces: 3-11 ms waiting on a descheduled thread where the copy itself takes microseconds). A flat loop with
    # the broadcast decided once: a 2-D loop reading src's shapes per element took ~4 ns an element
    rb, rf = src.shape[0] > 1, src.shape[1] > 1
    if not rb and not rf:
        v = src[0, 0]
        for j in range(buf.shape[0]):
            buf[j] = v
    else:
        for j in range(buf.shape[0]):
            buf[j] = src[j // F if rb else 0, j % F if rf else 0]


@lean
@ti.kernel
def _sum_copies(buf: ti.types.ndarray(), segs: ti.types.ndarray(), out: ti.types.ndarray(), nc: int):
    # out = each segment's nc stacked copies summed, segments back to back: segs rows (offset in buf, length)
    for j in range(out.shape[0]):
        s, base = 0, 0
        while j - base >= segs[s, 1]:
            base += segs[s, 1]
            s += 1
        k = j - base
        n = segs[s, 1]
        o = segs[s, 0]
        acc = buf[o + k]
        for c in range(1, nc):
            acc += buf[o + c * n + k]
        out[j] = acc


@lean
@ti.kernel
def _soft_project_bwd(screen: ti.types.ndarray(), cam: ti.types.ndarray(), g_xy: ti.types.ndarray(),
                      g_verts: ti.types.ndarray(), nc: int):
    # raster._project_bwd from nc stacked copies of the (B, V, 2) screen gradient (g_xy flat), written whole (no
    # zeroed buffer): each vertex sums its copies and, for one mesh seen by B cameras, its B views
    B, V = screen.shape[0], screen.shape[1]
    Bv = g_verts.shape[0]
    for bv, i in ti.ndrange(Bv, V):
        g = _views_vjp(screen, cam, g_xy, bv, i, B, V, Bv, nc)
        for j in ti.static(range(3)):
            g_verts[bv, i, j] = g[j]


@ti.func
def _views_vjp(screen: ti.template(), cam: ti.template(), g_xy: ti.template(), bv, i, B, V, Bv, nc):
    # world gradient of vertex i of mesh bv from nc stacked copies of the (B, V, 2) screen gradient (g_xy flat, from
    # its start): its copies summed per view, each view through raster._proj_vjp, and for one mesh seen by B
    # cameras (Bv == 1) its B views summed
    acc = ti.Vector([0.0, 0.0, 0.0])
    for b in range(B):
        if Bv == 1 or b == bv:
            gu, gv = 0.0, 0.0
            for c in range(nc):
                q = ((c * B + b) * V + i) * 2
                gu += g_xy[q]
                gv += g_xy[q + 1]
            acc += _proj_vjp(screen, cam, b, i, gu, gv)
    return acc



@lean
@ti.kernel
def _soft_tail_bwd(screen: ti.types.ndarray(), cam: ti.types.ndarray(), verts: ti.types.ndarray(),
                   faces: ti.types.ndarray(), ldir: ti.types.ndarray(), lcol: ti.types.ndarray(),
                   buf: ti.types.ndarray(), g_fn: ti.types.ndarray(), fbuf: ti.types.ndarray(),
                   g_verts: ti.types.ndarray(), o_sh: int, nc: int, n_fc: int, n_v: int, use_shade: int,
                   has_gfn: int, private: ti.template()):
    # SoftMesh's vertex gradient when it shades itself (``frame``): g_verts ((Bv, V, 3) flat) = the projection's
    # VJP of the screen gradient (nc stacked copies of (B, V, 2) at the start of buf) + _face_frame's VJP of the
    # shade gradient (nc copies of (Bv, F, 3) at buf[o_sh:], summed here) and of the normals' gradient g_fn
    # ((Bv, F, 3) flat, with has_gfn); verts and faces flat. ``private`` (CPU): chunk ch of n_fc contiguous runs of
    # the faces adds into its own vertex copy, fbuf[ch * Bv * V * 3:], and the vertex loop sums the copies; else
    # the vertex loop runs first and each face adds with atomics. One launch replaces _sum_copies (shade),
    # _soft_project_bwd and FaceShade's backward.
    B, V, F = screen.shape[0], screen.shape[1], faces.shape[0] // 3
    Bv = verts.shape[0] // (3 * V)
    M = Bv * V * 3
    span = ti.static(_SPAN if private else 1)
    if ti.static(private):
        for i in range(n_fc * M):
            fbuf[i] = 0.0
    else:
        for bv, i in ti.ndrange(Bv, V):
            g = _views_vjp(screen, cam, buf, bv, i, B, V, Bv, nc)
            for c in ti.static(range(3)):
                g_verts[(bv * V + i) * 3 + c] = g[c]
    for it in range(n_fc * span):
        if it % span == 0:
            if ti.static(private):
                _frame_faces(verts, faces, ldir, lcol, g_fn, buf, fbuf, it // span, n_fc, Bv, F, V, o_sh, nc,
                             use_shade, has_gfn, True)
            else:
                _frame_faces(verts, faces, ldir, lcol, g_fn, buf, g_verts, it // span, n_fc, Bv, F, V, o_sh, nc,
                             use_shade, has_gfn, False)
    if ti.static(private):
        # n_v contiguous runs of the vertices (zbuffer.cpu_runs), (bv, i) stepped
        for it in range(n_v * span):
            if it % span == 0:
                q0, q1, bv, i = _run(it // span, n_v, Bv * V, V)
                for _q in range(q0, q1):
                    g = _views_vjp(screen, cam, buf, bv, i, B, V, Bv, nc)
                    for c in ti.static(range(3)):
                        q = (bv * V + i) * 3 + c
                        acc = g[c]
                        for ch in range(n_fc):
                            acc += fbuf[ch * M + q]
                        g_verts[q] = acc
                    i += 1
                    if i == V:
                        bv, i = bv + 1, 0

class SoftMesh(bridge.Op):
    """Fused soft mesh rendering: each pixel's K-nearest selection, coverage, interpolation, shading and
    compositing in one pass (``_soft_fwd``: the list stays in registers, only its face ids and, when a gradient may
    be asked for (``store``), each composited layer's coverage are written); the backward (``_soft_bwd``) takes the
    coverages as stored and recomputes each kept face's barycentrics and depth (and its nearest edge, where the
    pixel is outside the face and the distance has a gradient) from the binned faces' records. Gradients of
    attributes and opacity are computed only when asked for (``attr_grad``, ``opac_grad``).

    Inputs: verts (Bv, V, 3) world; attr (Ba, V or F, C) per-vertex or per-face colours/features; shade
    (Bs, F, C) per-face multiplier (Lambert irradiance) or a (1, 1, 1) dummy; opacity (Bo, F); background
    (Bg, 1 or H*W, C); texture (Bt, Ht, Wt, C) and per-corner uvs (Bu, F, 3, 2), multiplying the colours (bilinear,
    ``attributes._texel_coords``' conventions), or dummies when ``use_tex`` is off; then the non-differentiable
    camera table (B, 16), faces, screen (B, V, 3) = project(verts) and the binned faces (``raster.bin_faces``:
    records, tile offsets, counts and entries). With
    ``screen_input`` the first input is instead the projected vertices (B, V, 3) from the differentiable
    ``Camera.project`` (camera gradients: torch carries them from the screen positions). Outputs:
    colour (B, H, W, C), depth (B, H, W) (alpha-weighted, over 0) and alpha (B, H, W), as separate tensors so that
    autograd never slices one (a slice's backward zero-fills and copies a whole image), the nearest face's normal
    (B, H, W, 3) from the face normals input fn (Bn, F, 3) (after uvc), and the face ids (B, H, W, K) int32 of
    the composited layers, front to back (-1 behind an opaque layer, where the selection stopped: the returned
    ``LazyFragments`` select the full K-nearest lists again if read), or with ``full_lists`` (set when the opacity
    needs a gradient) the whole K-nearest lists: the gradient of a face with opacity exactly 1 depends on the
    layers behind it. Gradients: verts (through coverage and the
    projection), attr, shade, opacity, background, texels, uvs, face normals. Barycentrics and depths stay detached,
    as in DBW.
    """

    name = "soft_mesh"
    fresh_grads = True              # backward allocates every gradient it returns, per call
    none_grads = True               # unused depth / alpha gradients arrive as None (no image-sized zeros)

    def __init__(self, sigma: float, width: int, height: int, per_face: bool, use_shade: bool, use_tex: bool,
                 screen_input: bool, K: int, max_d2: float, full_lists: bool = False, store: bool = True,
                 attr_grad: bool = True, opac_grad: bool = True, frame=None):
        if sigma <= 0:
            raise ValueError(f"soft rendering needs sigma > 0, got {sigma}")
        self.sigma, self.ndc2, self.W, self.H = float(sigma), _ndc2(width, height), width, height
        self.per_face, self.use_shade, self.use_tex = int(per_face), int(use_shade), int(use_tex)
        self.screen_input = bool(screen_input)
        self.K, self.max_d2 = int(K), float(max_d2)
        # full_lists (opacity needs a gradient): no opaque cut, whole lists to the backward, where the opacity
        # gradient of a face with opacity exactly 1 needs the layers behind it
        self.cut = bool(_OPAQUE_CUT and not full_lists)
        # store (a gradient may be asked for): the forward keeps each composited layer's coverage for the backward
        self.store = bool(store)
        # gradients nobody asks for are neither scattered nor zeroed and summed (constant colours: 3-9 adds a layer)
        self.need = int(bool(attr_grad)) | 2 * int(bool(opac_grad))
        # frame (fixed lights (L, 3) directions, (L, 3) colours, (3,) ambient; zero-size when unlit): the op makes
        # the face normals and shade from the world vertices itself (the shade and fn inputs are ignored) and its
        # backward adds their vertex gradient in the same launch as the projection's (_soft_tail_bwd)
        if frame is not None and screen_input:
            raise ValueError("SoftMesh: frame needs world vertices (screen_input off)")
        self.frame = frame

    def forward(self, verts, attr, shade, opacity, background, tex, uvc, fn, cam, faces, screen, fd, offsets, counts,
                bins):
        B, K = screen.shape[0], self.K
        H, W, C = self.H, self.W, attr.shape[2]
        kw = dict(dtype=attr.dtype, device=attr.device)
        # with ``frame`` (and no texture) the face frame kernel writes each face's packed row of corner attributes,
        # shade, opacity and normal, which the compositing and the backward read (_face_frame_rows): one cache line
        # per layer instead of faces, three attribute rows, shade and opacity, and no separate packing pass (a
        # separate one cost ~1.1 ms at 51k faces)
        pk = torch.zeros(1, **kw)
        if self.frame is not None and not self.use_tex:
            # fn and shade are never written (the rows hold them): their shapes size their gradients
            fn = torch.empty(verts.shape[0], faces.shape[0], 3, **kw)
            shade = torch.empty_like(fn) if self.use_shade else torch.ones(1, 1, 1, **kw)
            pk = torch.empty(B * faces.shape[0] * (4 * C + 4), **kw)
            _face_frame_rows(verts.view(-1), faces.view(-1), *self.frame, attr.reshape(-1), opacity.reshape(-1), pk,
                             self.use_shade, self.per_face, verts.shape[0], verts.shape[1], attr.shape[0],
                             attr.shape[1], C, *cpu_runs(B * faces.shape[0]))
        elif self.frame is not None:
            fn, shade = _face_frame_of(verts, faces, *self.frame, self.use_shade)
        rgb, dep, alp = torch.empty(B, H, W, C, **kw), torch.empty(B, H, W, **kw), torch.empty(B, H, W, **kw)
        p2f = torch.empty(B, H, W, K, dtype=torch.int32, device=attr.device)
        nrm = torch.empty(B, H, W, 3, **kw)
        # the layers' signed coverage (written where p2f names a face): the backward needs no distances or exp
        cv = torch.empty(B, H, W, K, **kw) if self.store else torch.empty(1, 1, 1, 1, **kw)
        _soft_fwd(fd, offsets, counts, bins, faces, attr, shade, opacity, background, tex, uvc, fn, p2f, cv, rgb, dep,
                  alp, nrm, self.max_d2, self.ndc2, self.per_face, self.use_shade, self.use_tex, self.sigma, self.K, C,
                  _tiled(), _spread(offsets.numel()), self.cut, int(self.store), pk, pk.numel() > 1)
        saved = (verts, attr, shade, opacity, background, tex, uvc, cam, faces, screen, p2f, cv, fd, fn.shape, pk)
        return (rgb, dep, alp, nrm, p2f), saved

    def backward(self, saved, grads):
        verts, attr, shade, opacity, background, tex, uvc, cam, faces, screen, p2f, cv, fd, fn_shape, pk = saved
        if not self.store:
            raise RuntimeError("SoftMesh was built with store=False (no gradient expected) but backward ran")
        B, H, W, K = p2f.shape
        # private copies while zeroing and summing them costs less than the pixels' K layers (fewer copies, down
        # to 2, where that fits: at 51k faces and 256^2, 4 copies beat 8 by ~20 % and atomics too), else atomics;
        # at most two per CPU thread (the chunks take interleaved rows, so two even them out: at 51k faces 4
        # copies instead of 8 cut the backward's kernels by ~10-14 % at 256^2 and 512^2, same at 5k)
        n_chunks, private = _scatter_copies(B * H)
        if private:
            n_chunks = min(n_chunks, 2 * max(1, int(ti.lang.impl.current_cfg().cpu_max_num_threads)))
            fit = 4 * B * H * W * K // max(1, 2 * B * screen.shape[1] + attr.numel() * (self.need & 1)
                                            + shade.numel() + opacity.numel() * (self.need >> 1) + uvc.numel())
            n_chunks, private = (min(n_chunks, fit), True) if fit >= 2 else (max(B * H, 1), False)
        nc = n_chunks if private else 1
        kw = dict(dtype=attr.dtype, device=attr.device)
        # scattered gradients: nc copies stacked on dim 0 of each, all views of one zeroed buffer (one fill, not
        # one per array: on a busy 2-core box each torch op over a large tensor waits ~10-25 ms for a descheduled
        # OpenMP thread), summed over the copies by one launch (_sum_copies)
        tex_private = private and (not self.use_tex or _texture_copies_pay(nc, tex.numel(), B * H * W * attr.shape[2]))
        bg_image = background.shape[1] > 1
        shapes = [(B, screen.shape[1], 2), tuple(attr.shape) if self.need & 1 else (1, 1, 1), tuple(shade.shape),
                  tuple(opacity.shape) if self.need & 2 else (1, 1), tuple(uvc.shape)]
        if not bg_image:
            shapes.append(tuple(background.shape))
        copies = [nc] * len(shapes)
        shapes.append(tuple(tex.shape))
        copies.append(nc if tex_private else 1)
        sizes = [math.prod(sh) for sh in shapes]
        buf = torch.empty(sum(n * c for n, c in zip(sizes, copies)), **kw)
        if not private:
            _fill0(buf)
        # with private copies each chunk zeroes its own copy of each region in _soft_bwd (zs rows: the region's
        # offset and its size per copy); a region with one shared copy (a texture too large for copies) here
        views, off, zrows = [], 0, []
        for sh, n, c in zip(shapes, sizes, copies):
            views.append(buf[off:off + n * c].view(c * sh[0], *sh[1:]))
            if private and c == nc:
                zrows.append((off, n))
            elif private and n * c > 0:
                _fill0(buf[off:off + n * c])
            off += n * c
        zs = torch.tensor(zrows if zrows else [(0, 0)], dtype=torch.int32, device=buf.device)
        g_xy, g_attr, g_shade, g_opac, g_uv = views[:5]
        g_tex = views[-1]
        g_bg = views[5] if not bg_image else torch.empty(B, H * W, background.shape[2], **kw)
        g_rgb, g_dep, g_alp, g_nrm = grads[:4]          # the face ids have no gradient
        g_fn = None
        if g_nrm is not None:
            # the nearest face's normal: each pixel's gradient back to its face
            g_fn = torch.zeros(fn_shape, dtype=g_nrm.dtype, device=g_nrm.device)
            _gather_normals_bwd(p2f, g_nrm, g_fn)
        if g_rgb is None:
            g_rgb = torch.zeros(B, H, W, attr.shape[2], **kw)
        dummy = torch.zeros(1, 1, 1, **kw)
        o = [(v.data_ptr() - buf.data_ptr()) // buf.element_size() for v in views]
        _soft_bwd(screen, fd, faces, p2f, cv, attr, shade, opacity, background, tex, uvc, g_rgb,
                  dummy if g_dep is None else g_dep, dummy if g_alp is None else g_alp, buf, zs,
                  g_bg if bg_image else dummy, o[1], o[2], o[3], o[4], 0 if bg_image else o[5], o[-1],
                  self.per_face, self.use_shade, self.use_tex, self.sigma, self.ndc2, n_chunks, private, tex_private,
                  int(g_dep is not None), int(g_alp is not None), int(not self.cut), self.need, self.K, attr.shape[2],
                  pk, pk.numel() > 1)
        if nc > 1:
            # every array but g_xy (projected by _soft_project_bwd) and an untouched texture, in one launch
            # (with ``frame``, _soft_tail_bwd sums the shade's copies itself)
            skip = [g_tex] * (not self.use_tex) + [g_attr] * (not self.need & 1) + [g_opac] * (not self.need & 2)
            skip += [g_shade] * (self.frame is not None)
            parts = [(v, n, c) for v, n, c in zip(views[1:], sizes[1:], copies[1:])
                     if c > 1 and all(v is not x for x in skip)]
        if nc > 1 and parts:
            segs = torch.tensor([[(v.data_ptr() - buf.data_ptr()) // buf.element_size(), n] for v, n, _c in parts],
                                dtype=torch.int64, device=buf.device)
            out = torch.empty(sum(n for _v, n, _c in parts), **kw)
            _sum_copies(buf, segs, out, nc)
            off, summed = 0, {}
            for v, n, _c in parts:
                summed[id(v)] = out[off:off + n].view(v.shape[0] // nc, *v.shape[1:])
                off += n
            g_attr, g_shade, g_opac, g_uv, g_tex = (summed.get(id(v), v) for v in (g_attr, g_shade, g_opac, g_uv,
                                                                                   g_tex))
            if not bg_image:
                g_bg = summed[id(views[5])]
        if self.screen_input:
            # the first input was the projected (B, V, 3) (u, v, z): its gradient is g_xy (depth stays detached)
            if nc > 1:
                g_xy = g_xy.reshape(nc, -1, *g_xy.shape[1:]).sum(0)
            g_verts = torch.cat([g_xy, g_xy.new_zeros(*g_xy.shape[:2], 1)], -1)
        elif self.frame is not None and verts.numel() > 0:
            # the projection's and the face frame's vertex gradients in one launch (g_xy starts buf)
            g_verts = torch.empty(verts.shape, **kw)
            n_fc, f_private = _frame_copies(verts.shape[0] * faces.shape[0])
            fbuf = torch.empty(n_fc * verts.numel(), **kw) if f_private else g_verts.view(-1)
            ldir, lcol, _amb = self.frame
            _soft_tail_bwd(screen, cam, verts.view(-1), faces.view(-1), ldir, lcol, buf,
                           dummy.view(-1) if g_fn is None else g_fn.view(-1), fbuf, g_verts.view(-1), o[2], nc, n_fc,
                           cpu_runs(verts.shape[0] * verts.shape[1])[0], self.use_shade, int(g_fn is not None),
                           f_private)
            g_shade = g_fn = None
        else:
            g_verts = torch.empty(verts.shape, **kw)
            if verts.numel() > 0:       # no vertices: nothing to launch (the kernels index by V)
                _soft_project_bwd(screen, cam, g_xy.reshape(-1), g_verts, nc)
        if bg_image and background.shape[0] == 1 and B > 1:
            g_bg = g_bg.sum(0, keepdim=True)
        tex_grads = (g_tex, g_uv) if self.use_tex else (None, None)
        return ((g_verts, g_attr if self.need & 1 else None, g_shade if self.use_shade else None,
                 g_opac if self.need & 2 else None, g_bg) + tex_grads + (g_fn,) + (None,) * 7)


# ---------------------------------------------------------------------------------------------------------------
# fused hard path: barycentrics, interpolation, per-face shading and the background in one kernel, with the
# barycentrics' hand-written gradients to the projected vertices (interior gradients, as nvdiffrast)
# ---------------------------------------------------------------------------------------------------------------
@lean
@ti.kernel
def _hard_fwd(scr: ti.types.ndarray(), faces: ti.types.ndarray(), p2f: ti.types.ndarray(), attr: ti.types.ndarray(),
              shade: ti.types.ndarray(), bg: ti.types.ndarray(), fn: ti.types.ndarray(), rgb: ti.types.ndarray(),
              dep: ti.types.ndarray(), alp: ti.types.ndarray(), nrm: ti.types.ndarray(), per_face: int, use_shade: int,
              with_normals: ti.template(), C: ti.template()):
    # with_normals: also write each pixel's face normal fn (Bn, F, 3) into nrm (B, H, W, 3), 0 where empty
    W = p2f.shape[2]
    for b, py, px in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2]):
        f = p2f[b, py, px, 0]
        v = _bg_vec(bg, b, py, px, W, C)
        if ti.static(with_normals):
            bn = b if fn.shape[0] > 1 else 0
            for c in ti.static(range(3)):
                nrm[b, py, px, c] = fn[bn, f, c] if f >= 0 else 0.0
        if f >= 0:
            ba = b if attr.shape[0] > 1 else 0
            bsc = b if scr.shape[0] > 1 else 0
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            _w0, _w1, _w2, _s, q0, q1, q2, Z, _a = _hard_bary(scr, bsc, i0, i1, i2, px + 0.5, py + 0.5)
            sh = _shade_vec(shade, b, f, use_shade, C)
            for c in ti.static(range(C)):
                if per_face:
                    v[c] = attr[ba, f, c] * sh[c]
                else:
                    v[c] = (q0 * attr[ba, i0, c] + q1 * attr[ba, i1, c] + q2 * attr[ba, i2, c]) * Z * sh[c]
            v[C] = Z
            v[C + 1] = 1.0
        for c in ti.static(range(C)):
            rgb[b, py, px, c] = v[c]
        dep[b, py, px] = v[C]
        alp[b, py, px] = v[C + 1]


@lean
@ti.kernel
def _hard_bwd(scr: ti.types.ndarray(), faces: ti.types.ndarray(), p2f: ti.types.ndarray(), attr: ti.types.ndarray(),
              shade: ti.types.ndarray(), bg: ti.types.ndarray(), g_rgb: ti.types.ndarray(), g_dep: ti.types.ndarray(),
              g_nrm: ti.types.ndarray(), g_scr: ti.types.ndarray(), g_attr: ti.types.ndarray(),
              g_shade: ti.types.ndarray(), g_fn: ti.types.ndarray(), g_bg: ti.types.ndarray(), per_face: int,
              use_shade: int, n_chunks: int, has_gdep: int, has_gnrm: int, private: ti.template(),
              with_normals: ti.template(), C: ti.template()):
    # has_gdep / has_gnrm: 0 when the loss does not use depth / normals (their gradient arrays are then dummies)
    # chunking and private gradient copies as _soft_bwd (chunk ch takes rows ch, ch + n_chunks, ...)
    H, W = p2f.shape[1], p2f.shape[2]
    Ba, Bs, Bx, Bg = attr.shape[0], shade.shape[0], scr.shape[0], bg.shape[0]
    Bn = g_fn.shape[0] // n_chunks if ti.static(private) else g_fn.shape[0]     # g_fn holds n_chunks copies
    bg_image = g_bg.shape[1] > 1
    span = ti.static(_SPAN if private else 1)
    npx = 1 if ti.static(private) else W
    for it in range(n_chunks * span * npx):
        if it % span == 0:
            ch = it // span // npx
            px0, px1 = 0, W
            if ti.static(not private):
                px0 = it % npx
                px1 = px0 + 1
            cb = ch if ti.static(private) else 0
            row = ch
            while row < p2f.shape[0] * H:
                b, py = row // H, row % H
                row += n_chunks
                ba = b if Ba > 1 else 0
                bs = b if Bs > 1 else 0
                bx = b if Bx > 1 else 0
                bb = b if Bg > 1 else 0
                for px in range(px0, px1):
                    f = p2f[b, py, px, 0]
                    if f < 0:
                        for c in ti.static(range(C)):
                            if bg_image:
                                g_bg[b, py * W + px, c] = g_rgb[b, py, px, c]
                            else:
                                _acc(g_bg, (cb * Bg + bb, 0, c), g_rgb[b, py, px, c], private)
                    else:
                        if bg_image:
                            for c in ti.static(range(C)):
                                g_bg[b, py * W + px, c] = 0.0
                        if ti.static(with_normals) and has_gnrm:
                            bn = b if Bn > 1 else 0
                            for c in ti.static(range(3)):
                                _acc(g_fn, (cb * Bn + bn, f, c), g_nrm[b, py, px, c], private)
                        x, y = px + 0.5, py + 0.5
                        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                        w0, w1, w2, s, q0, q1, q2, Z, area = _hard_bary(scr, bx, i0, i1, i2, x, y)
                        sh = _shade_vec(shade, b, f, use_shade, C)
                        b0, b1, b2 = q0 * Z, q1 * Z, q2 * Z
                        # colour = (sum_i b_i attr_i) * shade: gradients to attr, shade and the barycentrics b_i
                        gb0, gb1, gb2 = 0.0, 0.0, 0.0
                        for c in ti.static(range(C)):
                            g = g_rgb[b, py, px, c]
                            val = 0.0
                            if per_face:
                                val = attr[ba, f, c]
                                _acc(g_attr, (cb * Ba + ba, f, c), g * sh[c], private)
                            else:
                                a0, a1, a2 = attr[ba, i0, c], attr[ba, i1, c], attr[ba, i2, c]
                                val = b0 * a0 + b1 * a1 + b2 * a2
                                gv = g * sh[c]
                                _acc(g_attr, (cb * Ba + ba, i0, c), gv * b0, private)
                                _acc(g_attr, (cb * Ba + ba, i1, c), gv * b1, private)
                                _acc(g_attr, (cb * Ba + ba, i2, c), gv * b2, private)
                                gb0 += gv * a0
                                gb1 += gv * a1
                                gb2 += gv * a2
                            if use_shade:
                                _acc(g_shade, (cb * Bs + bs, f, c), g * val, private)
                        # b_i = q_i Z, Z = 1 / sum q: dL/dq_j = Z (gb_j - sum_i gb_i b_i) - gZ Z^2
                        gZ = 0.0
                        if has_gdep:
                            gZ = g_dep[b, py, px]
                        dot = gb0 * b0 + gb1 * b1 + gb2 * b2
                        gq0 = Z * (gb0 - dot) - gZ * Z * Z
                        gq1 = Z * (gb1 - dot) - gZ * Z * Z
                        gq2 = Z * (gb2 - dot) - gZ * Z * Z
                        az, bz, cz = scr[bx, i0, 2], scr[bx, i1, 2], scr[bx, i2, 2]
                        # q_j = wn_j / z_j: to the depths and the normalised clamped barycentrics wn = c / s
                        _acc(g_scr, (cb * Bx + bx, i0, 2), -gq0 * q0 / az, private)
                        _acc(g_scr, (cb * Bx + bx, i1, 2), -gq1 * q1 / bz, private)
                        _acc(g_scr, (cb * Bx + bx, i2, 2), -gq2 * q2 / cz, private)
                        gn0, gn1, gn2 = gq0 / az, gq1 / bz, gq2 / cz
                        n0, n1, n2 = ti.max(w0, 0.0) / s, ti.max(w1, 0.0) / s, ti.max(w2, 0.0) / s
                        dn = gn0 * n0 + gn1 * n1 + gn2 * n2
                        gc0 = (gn0 - dn) / s if w0 > 0 else 0.0
                        gc1 = (gn1 - dn) / s if w1 > 0 else 0.0
                        gc2 = (gn2 - dn) / s if w2 > 0 else 0.0
                        # w2 = 1 - w0 - w1; w0 = E0 / A, w1 = E1 / A (edge functions over twice the area)
                        gw0, gw1 = gc0 - gc2, gc1 - gc2
                        gE0, gE1 = gw0 / area, gw1 / area
                        gA = -(gw0 * w0 + gw1 * w1) / area
                        ax, ay = scr[bx, i0, 0], scr[bx, i0, 1]
                        bxx, byy = scr[bx, i1, 0], scr[bx, i1, 1]
                        cx, cy = scr[bx, i2, 0], scr[bx, i2, 1]
                        r = cb * Bx + bx
                        _acc(g_scr, (r, i0, 0), gE1 * (y - cy) + gA * (byy - cy), private)
                        _acc(g_scr, (r, i0, 1), -gE1 * (x - cx) + gA * (cx - bxx), private)
                        _acc(g_scr, (r, i1, 0), gE0 * (cy - y) + gA * (cy - ay), private)
                        _acc(g_scr, (r, i1, 1), gE0 * (x - cx) - gA * (cx - ax), private)
                        _acc(g_scr, (r, i2, 0), gE0 * (y - byy) + gE1 * (ay - y) - gA * (byy - ay), private)
                        _acc(g_scr, (r, i2, 1), -gE0 * (x - bxx) + gE1 * (x - ax) + gA * (bxx - ax), private)


class HardMesh(bridge.Op):
    """Fused hard mesh rendering of a 1-layer z-buffer: perspective-correct barycentrics recomputed from the
    projected vertices (``differentiable_fragments``' steps), interpolated colours times the per-face shade, the
    background where no face is; depth and alpha.

    Inputs: screen (Bx, V, 3) ``(u, v, z)`` from the differentiable ``Camera.project``; attr (Ba, V or F, C);
    shade (Bs, F, C) or a (1, 1, 1) dummy; background (Bg, 1 or H*W, C); then faces and pix_to_face
    (B, H, W, 1). Outputs colour (B, H, W, C), depth (B, H, W) (0 where empty) and alpha (B, H, W) (0/1, no
    gradient). Gradients: screen positions and depths (through each face's interior), attr, shade, background.
    """

    name = "hard_mesh"
    fresh_grads = True
    none_grads = True

    def __init__(self, per_face: bool, use_shade: bool):
        self.per_face, self.use_shade = int(per_face), int(use_shade)

    def forward(self, screen, attr, shade, background, faces, p2f):
        B, H, W, _ = p2f.shape
        C = attr.shape[2]
        kw = dict(dtype=attr.dtype, device=attr.device)
        rgb, dep, alp = torch.empty(B, H, W, C, **kw), torch.empty(B, H, W, **kw), torch.empty(B, H, W, **kw)
        _hard_fwd(screen, faces, p2f, attr, shade, background, torch.zeros(1, 1, 3, **kw), rgb, dep, alp,
                  torch.zeros(1, 1, 1, 3, **kw), self.per_face,
                  self.use_shade, False, C)
        return (rgb, dep, alp), (screen, attr, shade, background, faces, p2f)

    def backward(self, saved, grads):
        screen, attr, shade, background, faces, p2f = saved
        B, H, W, _ = p2f.shape
        n_chunks, private = _hard_copies(B, H, W, screen.numel() + attr.numel() + shade.numel())
        nc = n_chunks if private else 1
        kw = dict(dtype=attr.dtype, device=attr.device)
        g_scr = torch.zeros(nc * screen.shape[0], *screen.shape[1:], **kw)
        g_attr = torch.zeros(nc * attr.shape[0], *attr.shape[1:], **kw)
        g_shade = torch.zeros(nc * shade.shape[0], *shade.shape[1:], **kw)
        bg_image = background.shape[1] > 1
        g_bg = (torch.empty(B, H * W, background.shape[2], **kw) if bg_image
                else torch.zeros(nc * background.shape[0], 1, background.shape[2], **kw))
        g_rgb, g_dep, _g_alp = grads
        g_rgb = torch.zeros(B, H, W, attr.shape[2], **kw) if g_rgb is None else g_rgb
        dummy = torch.zeros(1, 1, 1, 3, **kw)
        _hard_bwd(screen, faces, p2f, attr, shade, background, g_rgb, dummy[0] if g_dep is None else g_dep, dummy,
                  g_scr, g_attr, g_shade, torch.zeros(n_chunks, 1, 3, **kw), g_bg, self.per_face, self.use_shade,
                  n_chunks, int(g_dep is not None), 0, private, False, attr.shape[2])
        if nc > 1:
            g_scr, g_attr, g_shade = (g.reshape(nc, -1, *g.shape[1:]).sum(0) for g in (g_scr, g_attr, g_shade))
            if not bg_image:
                g_bg = g_bg.reshape(nc, -1, *g_bg.shape[1:]).sum(0)
        if bg_image and background.shape[0] == 1 and B > 1:
            g_bg = g_bg.sum(0, keepdim=True)
        return g_scr, g_attr, g_shade if self.use_shade else None, g_bg, None, None


@lean
@ti.kernel
def _face_frame(verts: ti.types.ndarray(), faces: ti.types.ndarray(), ldir: ti.types.ndarray(),
                lcol: ti.types.ndarray(), amb: ti.types.ndarray(), fn: ti.types.ndarray(), shade: ti.types.ndarray(),
                use_shade: int, Bn: int, V: int):
    # face_normals + lambert (two-sided) per face: fn = normalize(cross(v1 - v0, v2 - v0)) (eps 1e-12),
    # shade_c = ambient_c + sum_l color_lc |fn . d_l|; verts ((Bn, V, 3)), faces ((F, 3)), fn and shade (Bn, F, 3)
    # flat. One flat loop over (b, f), the shade summed in registers, every store last and flat (Taichi's CPU code
    # reloads an ndarray's pointer and shapes after each store): ~1/3 less than a 2-D loop storing as it goes
    F = faces.shape[0] // 3
    for j in range(Bn * F):
        b, f = j // F, j % F
        _i0, _i1, _i2, n = _frame_normal(verts, faces, b, f, V)
        sh = _face_lambert(ldir, lcol, amb, n, use_shade)
        for c in ti.static(range(3)):
            fn[j * 3 + c] = n[c]
        if use_shade:
            for c in ti.static(range(3)):
                shade[j * 3 + c] = sh[c]


@lean
@ti.kernel
def _face_frame_rows(verts: ti.types.ndarray(), faces: ti.types.ndarray(), ldir: ti.types.ndarray(),
                     lcol: ti.types.ndarray(), amb: ti.types.ndarray(), attr: ti.types.ndarray(),
                     opac: ti.types.ndarray(), pk: ti.types.ndarray(), use_shade: int, per_face: int, Bn: int,
                     V: int, Ba: int, Va: int, C: ti.template(), n_ch: int, chunked: ti.template()):
    # _face_frame for SoftMesh (``frame``) as one packed row per (b, f) of opac (B, F), all that its compositing and
    # backward read of a face besides its record (4 C + 4 numbers, 64 bytes for C = 3, instead of faces, three
    # attribute rows, shade, opacity and normal): the corners' attributes attr (Ba, V, C) channel by channel (3 c + k:
    # channel c of corner k; per_face: the face's attr (Ba, F, C) in the first C), the shade (3 C.., min(C, 3)
    # numbers; shading needs C = 3), the opacity (4 C) and the unit normal (4 C + 1..); pk (B, F, 4 C + 4) flat.
    # Rows b >= Bn (one mesh, several cameras) recompute mesh 0's frame. The same normal and shade arithmetic as
    # _face_frame (bit-identical).
    # chunked (CPU): n_ch contiguous runs of the rows (_SPAN iterations per run, only the first working), (b, f)
    # stepped along each run: a division per row (j // F) cost ~1/4 of the kernel on this CPU. Else one row per
    # work item
    F = faces.shape[0] // 3
    N = opac.shape[0]
    if ti.static(chunked):
        for it in range(n_ch * _SPAN):
            if it % _SPAN == 0:
                j0, j1, b, f = _run(it // _SPAN, n_ch, N, F)     # (b, f) stepped below
                for j in range(j0, j1):
                    i0, i1, i2, n = _frame_normal(verts, faces, b if Bn > 1 else 0, f, V)
                    _frame_row(ldir, lcol, amb, attr, opac, pk, j, b, f, Ba, Va, i0, i1, i2, n, use_shade,
                               per_face, C)
                    f += 1
                    if f == F:
                        b, f = b + 1, 0
    else:
        for j in range(N):
            b, f = j // F, j % F
            i0, i1, i2, n = _frame_normal(verts, faces, b if Bn > 1 else 0, f, V)
            _frame_row(ldir, lcol, amb, attr, opac, pk, j, b, f, Ba, Va, i0, i1, i2, n, use_shade, per_face, C)


@ti.func
def _frame_normal(verts: ti.template(), faces: ti.template(), bn, f, V):
    # face f's corner ids and unit normal in mesh bn
    i0, i1, i2, _v0, e1, e2 = _corners(verts, faces, bn, f, V)
    n = e1.cross(e2)
    n = n / ti.max(n.norm(), 1e-12)
    return i0, i1, i2, n


@ti.func
def _face_lambert(ldir: ti.template(), lcol: ti.template(), amb: ti.template(), n, use_shade):
    # zbuffer._lambert's two-sided shade of unit normal n, zeros when unlit
    sh = ti.Vector([0.0, 0.0, 0.0])
    if use_shade:
        sh = _lambert(n, ldir, lcol, amb)
    return sh


@ti.func
def _frame_row(ldir: ti.template(), lcol: ti.template(), amb: ti.template(), attr: ti.template(),
               opac: ti.template(), pk: ti.template(), j, b, f, Ba, Va, i0, i1, i2, n, use_shade, per_face,
               C: ti.template()):
    # row j = (b, f) of _face_frame_rows from face f's corners and unit normal n: shade, then the row, stored last;
    # attr ((Ba, Va, C)) and opac ((B, F)) flat (one offset per corner instead of a 3-D index per number)
    ba = b if Ba > 1 else 0
    sh = _face_lambert(ldir, lcol, amb, n, use_shade)
    row = ti.Vector([0.0 for _ in ti.static(range(4 * C + 4))])
    if per_face:
        q = (ba * Va + f) * C
        for c in ti.static(range(C)):
            row[c] = attr[q + c]
    else:
        q0, q1, q2 = (ba * Va + i0) * C, (ba * Va + i1) * C, (ba * Va + i2) * C
        for c in ti.static(range(C)):
            row[3 * c], row[3 * c + 1], row[3 * c + 2] = attr[q0 + c], attr[q1 + c], attr[q2 + c]
    for c in ti.static(range(min(C, 3))):
        row[3 * C + c] = sh[c]
    row[4 * C] = opac[j]
    for c in ti.static(range(3)):
        row[4 * C + 1 + c] = n[c]
    for c in ti.static(range(4 * C + 4)):
        pk[j * (4 * C + 4) + c] = row[c]


@ti.func
def _corners(verts: ti.template(), faces: ti.template(), b, f, V):
    # face f's corner ids, first corner and edges (v1 - v0, v2 - v0) in mesh b; verts ((Bv, V, 3)) and faces
    # ((F, 3)) flat
    i0, i1, i2 = faces[3 * f], faces[3 * f + 1], faces[3 * f + 2]
    r0, r1, r2 = (b * V + i0) * 3, (b * V + i1) * 3, (b * V + i2) * 3
    v0 = ti.Vector([verts[r0], verts[r0 + 1], verts[r0 + 2]])
    e1 = ti.Vector([verts[r1], verts[r1 + 1], verts[r1 + 2]]) - v0
    e2 = ti.Vector([verts[r2], verts[r2 + 1], verts[r2 + 2]]) - v0
    return i0, i1, i2, v0, e1, e2


@ti.func
def _frame_vjp(verts: ti.template(), faces: ti.template(), ldir: ti.template(), lcol: ti.template(), b, f, V, g, gsh,
               use_shade):
    # _face_frame's vector-Jacobian product for face f of batch b: the gradient g (3-vector) of its unit normal
    # plus, with use_shade, that of its shade gsh (3-vector) through |fn . d| (sign; 0 at 0 as torch's abs), the
    # normalisation and the cross product. Returns the corners i0, i1, i2 and the gradients g1, g2 of corners 1
    # and 2 (corner 0 gets -(g1 + g2)); verts and faces flat (_corners)
    i0, i1, i2, _v0, e1, e2 = _corners(verts, faces, b, f, V)
    m = e1.cross(e2)
    ln = m.norm()
    il = 1.0 / ti.max(ln, 1e-12)        # one division (the normal's three and the projection's)
    n = m * il
    if use_shade:
        for l in range(ldir.shape[0]):
            d = ti.Vector([ldir[l, 0], ldir[l, 1], ldir[l, 2]])
            dot = n.dot(d)
            sg = ti.select(dot > 0, 1.0, ti.select(dot < 0, -1.0, 0.0))
            g += (gsh[0] * lcol[l, 0] + gsh[1] * lcol[l, 1] + gsh[2] * lcol[l, 2]) * sg * d
    gm = g * il
    if ln > 1e-12:
        gm = (g - n * n.dot(g)) * il
    return i0, i1, i2, e2.cross(gm), gm.cross(e1)


@ti.func
def _frame_faces(verts: ti.template(), faces: ti.template(), ldir: ti.template(), lcol: ti.template(),
                 g_fn: ti.template(), g_sh: ti.template(), out: ti.template(), ch, n_chunks, Bv, F, V, o_sh, n_sh,
                 use_shade, has_gfn, private: ti.template()):
    # the face frame's backward for chunk ch of n_chunks: with ``private`` (CPU) the ch-th contiguous run of the
    # (b, f) pairs adds with plain adds into vertex copy ch of out ((n_chunks * Bv, V, 3) flat), else face ch alone
    # adds with atomics into out ((Bv, V, 3) flat). The normals' gradient is g_fn ((Bv, F, 3) flat, with has_gfn),
    # the shade's the sum of n_sh stacked copies of (Bv, F, 3) at g_sh[o_sh:]
    N = Bv * F
    j0, j1, b, f = ch, ch + 1, ch // ti.max(F, 1), ch % ti.max(F, 1)      # face ch alone
    if ti.static(private):
        j0, j1, b, f = _run(ch, n_chunks, N, F)                         # (b, f) stepped below
    cb = ch if ti.static(private) else 0
    for j in range(j0, j1):
        g = ti.Vector([0.0, 0.0, 0.0])
        if has_gfn:
            g = ti.Vector([g_fn[j * 3], g_fn[j * 3 + 1], g_fn[j * 3 + 2]])
        gsh = ti.Vector([0.0, 0.0, 0.0])
        if use_shade:
            for c in range(n_sh):
                q = o_sh + (c * N + j) * 3
                gsh += ti.Vector([g_sh[q], g_sh[q + 1], g_sh[q + 2]])
        i0, i1, i2, g1, g2 = _frame_vjp(verts, faces, ldir, lcol, b, f, V, g, gsh, use_shade)
        r = (cb * Bv + b) * V
        _corner_adds(out, (r + i0) * 3, (r + i1) * 3, (r + i2) * 3, g1, g2, ti.static(not private))
        f += 1
        if f == F:
            b, f = b + 1, 0


@ti.func
def _corner_adds(out: ti.template(), q0, q1, q2, g1, g2, atomic: ti.template()):
    # a face's corner gradients (_frame_vjp) added at flat offsets q0, q1, q2 of out: plain adds into a private
    # copy, or atomics
    for c in ti.static(range(3)):
        if ti.static(atomic):
            ti.atomic_add(out[q1 + c], g1[c])
            ti.atomic_add(out[q2 + c], g2[c])
            ti.atomic_sub(out[q0 + c], g1[c] + g2[c])
        else:
            out[q1 + c] = out[q1 + c] + g1[c]
            out[q2 + c] = out[q2 + c] + g2[c]
            out[q0 + c] = out[q0 + c] - (g1[c] + g2[c])


@lean
@ti.kernel
def _face_frame_bwd(verts: ti.types.ndarray(), faces: ti.types.ndarray(), ldir: ti.types.ndarray(),
                    lcol: ti.types.ndarray(), g_fn: ti.types.ndarray(), g_shade: ti.types.ndarray(),
                    g_pass: ti.types.ndarray(), buf: ti.types.ndarray(), g_verts: ti.types.ndarray(), use_shade: int,
                    has_gfn: int, init: int, has_pass: int, n_chunks: int, V: int, private: ti.template()):
    # through |fn . d| (sign; 0 at 0 as torch's abs), the normalisation and the cross product to the corners, added
    # to g_verts (Bv, V, 3) (g_fn, g_shade (Bv, F, 3), g_pass, buf and g_verts flat: 3-D indexing cost more here);
    # with ``init`` g_verts starts as g_pass (has_pass) or 0, else as it is
    # ``private`` (CPU): chunk ch takes the ch-th of n_chunks contiguous runs of the (b, f) pairs and adds with plain
    # adds into its own copy, rows ch * Bv.. of buf (n_chunks * Bv, V, 3), summed into g_verts at the end (copy 0
    # starts as g_verts' start); otherwise every face is its own work item and atomics add into g_verts (the float
    # atomics were ~25 % of this kernel on CPU). One launch: the three loops run one after the other.
    F, Bv = faces.shape[0] // 3, verts.shape[0] // (3 * V)
    M = Bv * V * 3
    span = ti.static(_SPAN if private else 1)
    for i in range(M):
        v0 = g_pass[i] if has_pass else 0.0
        if not init:
            v0 = g_verts[i]
        if ti.static(private):
            buf[i] = v0
            for ch in range(1, n_chunks):
                buf[ch * M + i] = 0.0
        elif init:
            g_verts[i] = v0
    for it in range(n_chunks * span):
        if it % span == 0:
            if ti.static(private):
                _frame_faces(verts, faces, ldir, lcol, g_fn, g_shade, buf, it // span, n_chunks, Bv, F, V, 0, 1,
                             use_shade, has_gfn, True)
            else:
                _frame_faces(verts, faces, ldir, lcol, g_fn, g_shade, g_verts, it // span, n_chunks, Bv, F, V, 0, 1,
                             use_shade, has_gfn, False)
    if ti.static(private):
        for i in range(M):
            acc = buf[i]
            for ch in range(1, n_chunks):
                acc += buf[ch * M + i]
            g_verts[i] = acc


@lean
@ti.kernel
def _project_z_bwd(cam: ti.types.ndarray(), g_scr: ti.types.ndarray(), g_verts: ti.types.ndarray()):
    # z = R[2] . X + t[2]: the depth's share of the world gradient
    for b, i in ti.ndrange(g_scr.shape[0], g_scr.shape[1]):
        bv = b if g_verts.shape[0] > 1 else 0
        gz = g_scr[b, i, 2]
        for j in ti.static(range(3)):
            g_verts[bv, i, j] += cam[b, 6 + j] * gz


class HardMeshWorld(bridge.Op):
    """``HardMesh`` from world vertices, all in Taichi: the projection, face normals and two-sided Lambert shade
    per face (``face_normals``, ``lambert``) and their gradients to the vertices are kernels too, so no torch op
    runs per face or per pixel. For fixed cameras and lights (their gradients need the torch path).

    Inputs: verts (Bv, V, 3), attr (Ba, V or F, C), background (Bg, 1 or H*W, C), light directions (L, 3), colours
    (L, 3) and ambient (3,) (zero-size when unlit), then the camera table (B, 16), faces and pix_to_face.
    Outputs: colour, depth, alpha (no gradient) and the nearest face's normal (B, H, W, 3)."""

    name = "hard_mesh_world"
    fresh_grads = True
    none_grads = True

    def __init__(self, per_face: bool, use_shade: bool):
        self.per_face, self.use_shade = int(per_face), int(use_shade)

    def forward(self, verts, attr, background, ldir, lcol, amb, cam, faces, p2f):
        B, H, W, _ = p2f.shape
        C = attr.shape[2]
        kw = dict(dtype=attr.dtype, device=attr.device)
        screen = torch.empty(B, verts.shape[1], 3, **kw)
        _project(verts, cam, screen)
        fn, shade = _face_frame_of(verts, faces, ldir, lcol, amb, self.use_shade)
        rgb, dep, alp = torch.empty(B, H, W, C, **kw), torch.empty(B, H, W, **kw), torch.empty(B, H, W, **kw)
        nrm = torch.empty(B, H, W, 3, **kw)
        _hard_fwd(screen, faces, p2f, attr, shade, background, fn, rgb, dep, alp, nrm, self.per_face, self.use_shade,
                  True, C)
        return (rgb, dep, alp, nrm), (verts, attr, shade, background, ldir, lcol, cam, faces, p2f, screen)

    def backward(self, saved, grads):
        verts, attr, shade, background, ldir, lcol, cam, faces, p2f, screen = saved
        B, H, W, _ = p2f.shape
        n_chunks, private = _hard_copies(B, H, W, screen.numel() + attr.numel() + shade.numel() + 3 * verts.shape[0]
                                         * faces.shape[0])
        nc = n_chunks if private else 1
        kw = dict(dtype=attr.dtype, device=attr.device)
        Bv = verts.shape[0]
        g_scr = torch.zeros(nc * B, *screen.shape[1:], **kw)
        g_attr = torch.zeros(nc * attr.shape[0], *attr.shape[1:], **kw)
        g_shade = torch.zeros(nc * shade.shape[0], *shade.shape[1:], **kw)
        g_fn = torch.zeros(nc * Bv, faces.shape[0], 3, **kw)
        bg_image = background.shape[1] > 1
        g_bg = (torch.empty(B, H * W, background.shape[2], **kw) if bg_image
                else torch.zeros(nc * background.shape[0], 1, background.shape[2], **kw))
        g_rgb, g_dep, _g_alp, g_nrm = grads
        g_rgb = torch.zeros(B, H, W, attr.shape[2], **kw) if g_rgb is None else g_rgb
        dummy = torch.zeros(1, 1, 1, 3, **kw)
        _hard_bwd(screen, faces, p2f, attr, shade, background, g_rgb, dummy[0] if g_dep is None else g_dep,
                  dummy if g_nrm is None else g_nrm, g_scr, g_attr, g_shade, g_fn, g_bg, self.per_face,
                  self.use_shade, n_chunks, int(g_dep is not None), int(g_nrm is not None), private, True,
                  attr.shape[2])
        if nc > 1:
            g_scr, g_attr, g_shade, g_fn = (g.reshape(nc, -1, *g.shape[1:]).sum(0)
                                            for g in (g_scr, g_attr, g_shade, g_fn))
            if not bg_image:
                g_bg = g_bg.reshape(nc, -1, *g_bg.shape[1:]).sum(0)
        if bg_image and background.shape[0] == 1 and B > 1:
            g_bg = g_bg.sum(0, keepdim=True)
        g_verts = torch.zeros_like(verts)
        _project_bwd(screen, cam, g_scr, g_verts)
        _project_z_bwd(cam, g_scr, g_verts)
        if not self.use_shade:
            g_shade = torch.zeros(Bv, faces.shape[0], 3, **kw)
        gv = g_verts.view(-1)
        _face_frame_bwd(verts.view(-1), faces.view(-1), ldir, lcol, g_fn.reshape(-1), g_shade.reshape(-1), gv, gv, gv,
                        self.use_shade, 1, 0, 0, max(1, verts.shape[0] * faces.shape[0]), verts.shape[1], False)
        return g_verts, g_attr, g_bg, None, None, None, None, None, None


class FaceShade(bridge.Op):
    """Unit face normals and two-sided Lambert shade per face (``face_normals`` + ``lambert``) as Taichi kernels
    with a hand-written backward to the vertices (``_face_frame``): no face-sized torch ops. For fixed lights.
    Inputs verts (Bv, V, 3), light directions (L, 3), colours (L, 3), ambient (3,), faces; outputs fn, shade
    (Bv, F, 3) (shade a (1, 1, 1) ones dummy when ``use_shade`` is off) and, with ``passthrough``, the vertices
    again: an op that takes them from here instead of from the caller's tensor hands its vertex gradient to this
    backward, which adds its own to it in a Taichi launch (torch would otherwise sum the two: a vertex-sized OpenMP
    region, which waited 2-6 ms for 26k vertices on this 2-core box)."""

    name = "face_shade"
    fresh_grads = True
    none_grads = True

    def __init__(self, use_shade: bool, passthrough: bool = False):
        self.use_shade = int(use_shade)
        self.passthrough = bool(passthrough)

    def forward(self, verts, ldir, lcol, amb, faces):
        fn, shade = _face_frame_of(verts, faces, ldir, lcol, amb, self.use_shade)
        return (fn, shade) + ((verts,) if self.passthrough else ()), (verts, ldir, lcol, faces)

    def backward(self, saved, grads):
        verts, ldir, lcol, faces = saved
        g_fn, g_shade = grads[:2]
        g_pass = grads[2] if self.passthrough else None
        use = self.use_shade and g_shade is not None
        if g_fn is None and not use and g_pass is None:
            return None, None, None, None, None
        g_verts = torch.empty_like(verts)
        if g_fn is None and not use:
            _copy_flat(g_pass.view(-1), g_verts.view(-1))
            return g_verts, None, None, None, None
        has_gfn = g_fn is not None
        kw = dict(dtype=verts.dtype, device=verts.device)
        g_fn = torch.empty(1, 1, 3, **kw) if g_fn is None else g_fn
        g_shade = g_fn if not use else g_shade                     # not read when ``use`` is off
        n_chunks, private = _frame_copies(verts.shape[0] * faces.shape[0])
        buf = torch.empty(n_chunks * verts.numel(), **kw) if private else g_verts.view(-1)
        g_pass = g_verts if g_pass is None else g_pass                 # not read without a passed gradient
        _face_frame_bwd(verts.view(-1), faces.view(-1), ldir, lcol, g_fn.reshape(-1), g_shade.reshape(-1),
                        g_pass.view(-1), buf, g_verts.view(-1), int(use), int(has_gfn), 1,
                        int(self.passthrough and grads[2] is not None), n_chunks, verts.shape[1], private)
        return g_verts, None, None, None, None


def _face_frame_of(verts, faces, ldir, lcol, amb, use_shade):
    """(fn, shade): unit face normals and Lambert shade (Bv, F, 3) of world vertices (Bv, V, 3) by ``_face_frame``
    (lights as ``_fixed_frame`` gives them); shade is a (1, 1, 1) ones dummy when ``use_shade`` is off."""
    kw = dict(dtype=verts.dtype, device=verts.device)
    fn = torch.empty(verts.shape[0], faces.shape[0], 3, **kw)
    shade = torch.empty_like(fn) if use_shade else torch.ones(1, 1, 1, **kw)
    _face_frame(verts.view(-1), faces.view(-1), ldir, lcol, amb, fn.view(-1), shade.view(-1), int(use_shade),
                fn.shape[0], verts.shape[1])
    return fn, shade


def _fixed_frame(lights, dt, dev):
    """(directions (L, 3), colours (L, 3), ambient (3,)) of lights without gradients (zero-size tables when unlit),
    or None if any light needs a gradient (torch shades then)."""
    if lights is None:
        return (torch.zeros(0, 3, dtype=dt, device=dev),) * 2 + (torch.zeros(3, dtype=dt, device=dev),)
    if any(x.requires_grad for x in (lights.direction, lights.color, lights.ambient)):
        return None
    return tuple(x.detach().to(dev, dt).contiguous() for x in (lights.direction, lights.color, lights.ambient))


def _face_shade(verts, faces, lights, dt, dev, passthrough: bool = False):
    """(fn, shade or a (1, 1, 1) ones dummy): Taichi ``FaceShade`` for fixed lights, else torch (light gradients).
    With ``passthrough`` also the vertices to use downstream (``FaceShade``'s passthrough output, or ``verts``)."""
    frame = _fixed_frame(lights, dt, dev)
    if frame is None:
        fn = face_normals(verts, faces)
        return (fn, lambert(fn, lights)) + ((verts,) if passthrough else ())
    ldir, lcol, amb = frame
    through = passthrough and verts.requires_grad
    out = bridge.apply(FaceShade(lights is not None, through), verts, ldir, lcol, amb, faces)
    fn, shade = out[0], out[1] if lights is not None else torch.ones(1, 1, 1, dtype=dt, device=dev)
    if not passthrough:
        return fn, shade
    return fn, shade, out[2] if through else verts


@lean
@ti.kernel
def _gather_normals(fn: ti.types.ndarray(), p2f: ti.types.ndarray(), nrm: ti.types.ndarray()):
    for b, py, px in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2]):
        f = p2f[b, py, px, 0]
        bn = b if fn.shape[0] > 1 else 0
        for c in ti.static(range(3)):
            nrm[b, py, px, c] = fn[bn, f, c] if f >= 0 else 0.0


@lean
@ti.kernel
def _gather_normals_bwd(p2f: ti.types.ndarray(), g_nrm: ti.types.ndarray(), g_fn: ti.types.ndarray()):
    for b, py, px in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2]):
        f = p2f[b, py, px, 0]
        if f >= 0:
            bn = b if g_fn.shape[0] > 1 else 0
            for c in ti.static(range(3)):
                ti.atomic_add(g_fn[bn, f, c], g_nrm[b, py, px, c])


class NearestNormals(bridge.Op):
    """(Bn, F, 3) face normals and pix_to_face (B, H, W, K) -> (B, H, W, 3) the nearest face's normal per pixel, 0
    where empty; one Taichi kernel each way (torch's where / cat / index_select chain cost several image-sized
    ops)."""

    name = "nearest_normals"
    fresh_grads = True
    none_grads = True

    def forward(self, fn, p2f):
        B, H, W, _ = p2f.shape
        nrm = torch.empty(B, H, W, 3, dtype=fn.dtype, device=fn.device)
        _gather_normals(fn, p2f, nrm)
        return (nrm,), (fn.shape, p2f)

    def backward(self, saved, grads):
        shape, p2f = saved
        if grads[0] is None:
            return None, None
        g_fn = torch.zeros(shape, dtype=grads[0].dtype, device=grads[0].device)
        _gather_normals_bwd(p2f, grads[0], g_fn)
        return g_fn, None


def _scatter_copies(n_rows: int):
    """(n_chunks, private) for the backward scatter: private gradient copies on CPU, else atomics. Four chunks per
    CPU thread (the copies are per-vertex/face, small) even out rows of unequal cost (a mesh fills the middle
    rows) and a thread the OS deschedules on a busy machine."""
    if backend.settings().resolved_arch in ("x64", "arm64"):
        return max(1, min(4 * int(ti.lang.impl.current_cfg().cpu_max_num_threads), n_rows)), True
    return max(n_rows, 1), False


def _frame_copies(n_faces: int):
    """(n_chunks, private) for the face frame's backward scatter to the vertices (``n_faces`` = batch x faces): on
    CPU one private vertex copy per thread (zeroing and summing them costs less than atomics); on the GPU one work
    item per face, atomics."""
    n_chunks, private = _scatter_copies(n_faces)
    return (max(1, min(n_chunks // 4, n_faces)), True) if private else (max(1, n_faces), False)


def _hard_copies(B: int, H: int, W: int, scattered: int):
    """``_scatter_copies`` for the hard backward, where each pixel scatters into one face: private copies only while
    zeroing and summing them (``scattered`` entries each) costs less than the image; else atomics into one copy
    (a 51k-face mesh at 128^2 spent more on 8 copies than on the pixels)."""
    n_chunks, private = _scatter_copies(B * H)
    if private and n_chunks * scattered > 4 * B * H * W:
        return max(B * H, 1), False
    return n_chunks, private


def _texture_copies_pay(n_copies: int, texels: int, pixels: int) -> bool:
    """Whether the CPU backward scatters texel gradients into private copies (else atomics into one copy, as on the
    GPU). Zeroing and summing the copies costs their size, atomics cost per scatter (more where many pixels share
    texels): measured at 128^2 px, 8 copies, fwd+bwd, copies win at a 256^2 RGB texture (~21 vs ~24 ms), break even
    at 512^2 and lose at 1024^2 (~55 vs ~25 ms). ``texels`` and ``pixels`` count channel entries."""
    return n_copies * texels <= 64 * pixels


@dataclass
class MeshRender:
    """Output of ``render_mesh``.

    rgb: (B, H, W, C) composited colour/features (C = 3 for colours).
    alpha: (B, H, W) coverage in [0, 1] (hard: 0/1).
    depth: (B, H, W) camera depth z of the nearest face (hard) or the alpha-weighted depth (soft, not divided by
        alpha); 0 where empty.
    normals: (B, H, W, 3) world unit normal of the nearest face; 0 where empty.
    fragments: the ``Fragments`` used.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor
    fragments: Fragments


def render_mesh(verts: torch.Tensor, faces: torch.Tensor, camera: Camera, *, colors=None, face_colors=None,
                uvs=None, texture=None, lights: DirectionalLights | None = None, mode: str = "soft",
                sigma: float = 1e-4, faces_per_pixel: int = 8, opacity=1.0, background=0.0,
                antialias: bool = False) -> MeshRender:
    """Render a triangle mesh (or B meshes sharing ``faces``) from B cameras.

    Faces crossing a camera's near plane are clipped at camera depth ``clip.CLIP_Z`` (differentiably);
    the returned fragments refer to the original faces and their barycentrics.

    Args:
        verts: (V, 3) or (B, V, 3) world positions.
        faces: (F, 3) int vertex indices.
        colors: (V, C) or (B, V, C) per-vertex colours/features of any width C.
        face_colors: (F, C) or (B, F, C) per-face colours/features (used if ``colors`` is None).
        uvs: (V, 2) per-vertex or (F, 3, 2) per-corner texture coordinates; with ``texture`` (Ht, Wt, C) or
            (B, Ht, Wt, C). Texture colour multiplies ``colors`` if both are given.
        lights: ambient + Lambert directional lights (flat shading by face normals); None = unlit.
        mode: "hard" (z-buffer, 1 layer) or "soft" (K layers). Both give gradients to colours, features,
            texels and uvs. Hard mode reaches vertex positions and the camera through each face's interior
            (barycentrics and depth, as nvdiffrast) and, with ``antialias``, through the silhouettes; soft mode
            reaches them through the blurred coverage too, and gives opacity gradients.
        sigma: soft blur in squared NDC units (DBW: 1e-4 coarse, 5e-6 fine).
        faces_per_pixel: K in soft mode.
        opacity: scalar, (F,) or (B, F) per-face opacity in [0, 1] (soft mode).
        background: scalar, (C,), (B, C) or an image (B, H, W, C).
        antialias: hard mode: blend rgb and alpha across silhouette edges (``antialias.antialias``), which gives
            silhouettes gradients w.r.t. vertex positions and the camera.
    """
    backend.ensure()
    dt, dev = backend.torch_dtype(), backend.torch_device()
    _check_inputs(verts, faces, camera, colors, face_colors, uvs, texture, opacity)
    if mode not in ("hard", "soft"):
        raise ValueError(f"render_mesh mode must be 'hard' or 'soft', got {mode!r}")
    if antialias and mode != "hard":
        raise ValueError("render_mesh: antialias=True applies to mode='hard' (soft coverage is already smooth)")
    if texture is not None and uvs is None:
        raise ValueError("render_mesh: a texture needs uvs (V, 2) or (F, 3, 2)")
    # everything onto the backend's device: CPU inputs with arch=cuda would otherwise meet CUDA faces/cameras
    verts = verts.to(device=dev, dtype=dt)
    colors, face_colors, uvs, texture = (None if x is None else x.to(device=dev, dtype=dt)
                                         for x in (colors, face_colors, uvs, texture))
    faces = faces.to(device=dev, dtype=torch.int32)
    if mode == "hard" and texture is None:
        fast = _render_hard_z(verts, faces, camera, colors, face_colors, lights, background, antialias)
        if fast is not None:
            return fast
    if mode == "soft":
        # one projection serves the near-plane test and the rasterizer
        screen, zmin, _ = project_min_z(verts, camera)
        if zmin >= CLIP_Z + 1e-5 * (1.0 + CLIP_Z):
            return _render_mesh(verts, faces, camera, colors, face_colors, uvs, texture, lights, mode, sigma,
                                faces_per_pixel, opacity, background, antialias, screen=screen)
    clip = clip_near(verts, faces, camera)
    if clip is None:
        return _render_mesh(verts, faces, camera, colors, face_colors, uvs, texture, lights, mode, sigma,
                            faces_per_pixel, opacity, background, antialias)
    # faces crossing the near plane: render the clipped mesh, report fragments of the original faces
    if colors is not None:
        colors = clip.vertex_attr(colors)
    if face_colors is not None:
        face_colors = clip.face_attr(face_colors, 0 if face_colors.dim() == 2 else 1)
    if uvs is not None:
        uvs = clip.corner_attr(uvs if uvs.dim() == 3 else face_attributes(uvs, faces)[0])
    op = torch.as_tensor(opacity, dtype=dt, device=dev)
    if op.dim() >= 1:
        opacity = clip.face_attr(op, op.dim() - 1)
    r = _render_mesh(clip.verts, clip.faces, camera, colors, face_colors, uvs, texture, lights, mode, sigma,
                     faces_per_pixel, opacity, background, antialias)
    return MeshRender(r.rgb, r.alpha, r.depth, r.normals, clip.fragments(r.fragments))


@dataclass
class StackedMeshes:
    """B different meshes as one batch that ``render_mesh`` can draw (see ``stack_meshes``).

    verts: (B, V1 + ... + VB, 3): row b holds mesh b's vertices in place and every other mesh's at camera b's
        centre, so their faces are skipped in that view. faces: (F1 + ... + FB, 3) into the stacked vertices.
    vert_offsets, face_offsets: (B + 1,) where each mesh's vertices / faces start (``pix_to_face`` of the
        fragments indexes the stacked faces: mesh b's local face id is ``p2f - face_offsets[b]``).
    """

    verts: torch.Tensor
    faces: torch.Tensor
    vert_offsets: torch.Tensor
    face_offsets: torch.Tensor

    def per_vertex(self, values) -> torch.Tensor:
        """A list of B per-vertex arrays (V_b, C) -> (V1 + ... + VB, C) for ``colors=`` (or uvs)."""
        return torch.cat(list(values), 0)

    per_face = per_vertex
    """A list of B per-face arrays (F_b, ...) -> (F1 + ... + FB, ...) for ``face_colors=`` or ``opacity=``."""


def stack_meshes(verts: list, faces: list, camera: Camera) -> StackedMeshes:
    """Batch B meshes with different vertex and face counts for B cameras (mesh b seen by camera b).

    ``render_mesh`` shares one face list across a batch; this stacks every mesh into one list and, in batch row b,
    parks the other meshes' vertices at camera b's centre (depth 0, so the rasterizer skips their faces).
    Gradients reach each mesh's own vertices. Costs B times the total face count in the per-face set-up.
    """
    B = len(verts)
    if len(faces) != B or camera.batch != B:
        raise ValueError(f"stack_meshes: {len(verts)} vertex arrays, {len(faces)} face arrays and {camera.batch} "
                         "cameras; they must be equal")
    for v, f in zip(verts, faces):
        check_mesh(v, f, "stack_meshes")
    nv = torch.tensor([0] + [v.shape[0] for v in verts]).cumsum(0)
    nf = torch.tensor([0] + [f.shape[0] for f in faces]).cumsum(0)
    allv = torch.cat([v.reshape(-1, 3) for v in verts], 0)                                # (Vt, 3)
    owner = torch.repeat_interleave(torch.arange(B), nv.diff()).to(allv.device)             # (Vt,)
    own = owner[None, :] == torch.arange(B, device=allv.device)[:, None]                    # (B, Vt)
    centre = camera.center.detach().to(allv.device, allv.dtype)[:, None, :]                  # (B, 1, 3)
    stacked = torch.where(own[..., None], allv[None], centre)
    fs = torch.cat([f.long() + int(nv[b]) for b, f in enumerate(faces)], 0)
    return StackedMeshes(stacked, fs, nv, nf)


def _check_inputs(verts, faces, camera, colors, face_colors, uvs, texture, opacity):
    fn = "render_mesh"
    check_mesh(verts, faces, fn)
    V, F = verts.shape[-2], faces.shape[0]
    B = max(camera.batch, verts.shape[0] if verts.dim() == 3 else 1)
    check_per("colors", colors, V, "v", fn, B)
    check_per("face_colors", face_colors, F, "f", fn, B)
    if uvs is not None and uvs.dim() == 3:
        if uvs.shape != (F, 3, 2):
            raise ValueError(f"{fn}: per-corner uvs must be (F, 3, 2) = ({F}, 3, 2), got {tuple(uvs.shape)}")
    elif uvs is not None and (uvs.dim() != 2 or uvs.shape != (V, 2)):
        raise ValueError(f"{fn}: uvs must be (V, 2) = ({V}, 2) or (F, 3, 2), got {tuple(uvs.shape)}")
    if texture is not None and texture.dim() not in (3, 4):
        raise ValueError(f"{fn}: texture must be (Ht, Wt, C) or (B, Ht, Wt, C), got {tuple(texture.shape)}")
    check_per("opacity", torch.as_tensor(opacity), F, "f", fn, B, trailing=0)
    for name, x in (("colors", colors), ("face_colors", face_colors), ("uvs", uvs), ("texture", texture)):
        if x is not None:
            check_finite(name, x, fn)


def _render_mesh(verts, faces, camera, colors, face_colors, uvs, texture, lights, mode, sigma, faces_per_pixel,
                 opacity, background, antialias=False, screen=None) -> MeshRender:
    """``render_mesh`` after near-plane clipping: no face crosses ``z = CLIP_Z``; uvs may be per-corner and
    batched (B, F, 3, 2). Inputs are validated and already on the backend's device and dtype (faces int32)."""
    dt, dev = backend.torch_dtype(), backend.torch_device()
    if verts.dim() == 2:
        verts = verts.unsqueeze(0)
    hard = mode == "hard"
    if hard:
        fused = _render_hard_fused(verts, faces, camera, colors, face_colors, uvs, texture, lights, background,
                                   antialias)
        if fused is not None:
            return fused
    if not hard:
        fused = _render_soft_fused(verts, faces, camera, colors, face_colors, uvs, texture, lights, sigma,
                                   faces_per_pixel, opacity, background, screen)
        if fused is not None:
            return fused
    frags = rasterize(verts, faces, camera, faces_per_pixel=1 if hard else faces_per_pixel, clip=False,
                      sigma=0.0 if hard else sigma)
    screen = None
    if hard and torch.is_grad_enabled() and (verts.requires_grad or _camera_needs_grad(camera)):
        # barycentrics and depth from torch's projection: interior shading gradients reach the geometry
        screen = camera.project(verts)
        frags = differentiable_fragments(frags, screen, faces)
    p2f = frags.pix_to_face
    B, H, W, K = p2f.shape
    mask = (p2f >= 0)

    feats = None
    if colors is not None:
        feats = interpolate(frags, face_attributes(colors.to(dt), faces))
    elif face_colors is not None:
        fc = face_colors.to(dt)
        fc = fc.unsqueeze(0) if fc.dim() == 2 else fc
        feats = interpolate(frags, fc[:, :, None].expand(-1, -1, 3, -1))
    if texture is not None:
        uvs = uvs.to(dt)
        face_uv = uvs if uvs.dim() >= 3 else face_attributes(uvs, faces)[0]
        tex = sample_texture(texture.to(dt), interpolate(frags, face_uv), frags)
        feats = tex if feats is None else feats * tex
    if feats is None:
        feats = torch.ones(B, H, W, K, 3, dtype=dt, device=dev)

    fn = face_normals(verts, faces).expand(B, -1, -1)                                       # (B, F, 3)

    def gather_normals(p2f_k):
        # (B, H, W, k) face ids -> (B, H, W, k, 3) normals, 0 in empty slots
        idx = p2f_k.clamp_min(0).long().reshape(B, -1, 1).expand(-1, -1, 3)
        return torch.gather(fn, 1, idx).reshape(*p2f_k.shape, 3) * (p2f_k >= 0)[..., None]

    if lights is not None:
        pix_n = gather_normals(p2f)
        feats = feats * lambert(pix_n, lights)
    else:
        pix_n = gather_normals(p2f[..., :1])          # only the nearest layer is reported

    C = feats.shape[-1]
    if hard:
        m = mask[..., 0].to(dt)
        bg = expand_background(background, B, H, W, C, dt, dev)
        rgb = feats[..., 0, :] * m[..., None] + bg * (1 - m[..., None])
        if antialias:
            screen = camera.project(verts) if screen is None else screen
            aa = _antialias(torch.cat([rgb, m[..., None]], -1), frags, screen, faces)
            rgb, m = aa[..., :C], aa[..., C]
        depth = torch.where(mask[..., 0], frags.zbuf[..., 0], torch.zeros_like(frags.zbuf[..., 0]))
        return MeshRender(rgb, m, depth, pix_n[..., 0, :], frags)

    # soft: composite colour and depth together (depth channel over a zero background)
    z = torch.where(mask, frags.zbuf, torch.zeros_like(frags.zbuf)).unsqueeze(-1)
    bg = expand_background(background, B, H, W, C, dt, dev)
    bgz = torch.cat([bg, torch.zeros(B, H, W, 1, dtype=dt, device=dev)], -1)
    screen = camera.project(verts)
    out, alpha, _layers = soft_composite(screen, faces, frags, torch.cat([feats, z], -1), opacity, bgz, sigma, W, H)
    return MeshRender(out[..., :C], alpha, out[..., C], pix_n[..., 0, :], frags)


def _camera_needs_grad(camera: Camera) -> bool:
    return any(x.requires_grad for x in (camera.R, camera.t, camera.fx, camera.fy, camera.cx, camera.cy))


def _background_rows(bg: torch.Tensor, C: int, H: int, W: int) -> torch.Tensor:
    """A background as the kernels read it: a colour (C,) -> (1, 1, C); per-batch colours (B, C) -> (B, 1, C);
    images (B, H, W, C) -> (B, H*W, C). Raises ValueError when its channels are not C."""
    if bg.dim() <= 1:
        bg = bg.reshape(1, 1, -1).expand(1, 1, C)
    elif bg.dim() == 2:
        bg = bg.reshape(bg.shape[0], 1, -1)
    else:
        bg = bg.reshape(-1, H * W, bg.shape[-1])
    if bg.shape[-1] != C:
        raise ValueError(f"background has {bg.shape[-1]} channels but the colours have {C}")
    return bg


def _render_soft_fused(verts, faces, camera, colors, face_colors, uvs, texture, lights, sigma, faces_per_pixel,
                       opacity, background, screen=None):
    """Soft ``render_mesh`` as Taichi projection + binning + one ``SoftMesh`` op (no per-pixel torch glue).
    Returns None for inputs it does not cover (lights on features that are not 3 wide; colours and a texture of
    different widths, or a texture batch other than 1 or B)."""
    dt, dev = verts.dtype, verts.device
    H, W = camera.height, camera.width
    F = faces.shape[0]
    per_face = colors is None
    if texture is not None:
        tex = texture.to(dt)
        tex = tex.unsqueeze(0) if tex.dim() == 3 else tex
        if tex.shape[1] < 2 or tex.shape[2] < 2:
            raise ValueError(f"texture must be at least 2x2 texels, got {tuple(tex.shape[1:3])}")
        uvs = uvs.to(dt)
        uvc = uvs if uvs.dim() == 4 else (uvs if uvs.dim() == 3 else face_attributes(uvs, faces)[0]).unsqueeze(0)
    if colors is not None:
        attr = colors.to(dt)
    elif face_colors is not None:
        attr = face_colors.to(dt)
    else:
        attr = torch.ones(1, F, 3 if texture is None else tex.shape[-1], dtype=dt, device=dev)
    attr = attr.unsqueeze(0) if attr.dim() == 2 else attr
    C = attr.shape[-1]
    if lights is not None and C != 3:
        return None
    if texture is not None and tex.shape[-1] != C:
        return None
    screen = project(verts, camera) if screen is None else screen
    B = screen.shape[0]
    if texture is None:
        tex, uvc = torch.zeros(1, 2, 2, C, dtype=dt, device=dev), torch.zeros(1, 1, 3, 2, dtype=dt, device=dev)
    elif tex.shape[0] not in (1, B):
        return None
    bins = bin_faces(screen.contiguous(), faces.contiguous(), W, H, sigma)
    cam = camera_table(camera).to(dt)
    cam = cam.expand(B, -1) if cam.shape[0] != B else cam
    # fixed lights and camera: the op shades the faces itself and adds the shading's vertex gradient to the
    # projection's in one launch; else the vertices pass through FaceShade (or torch, for light gradients), whose
    # backward adds the shading's vertex gradient to the op's (no torch sum)
    frame = _fixed_frame(lights, dt, dev) if not _camera_needs_grad(camera) else None
    if frame is None:
        fn, shade, verts = _face_shade(verts, faces, lights, dt, dev, passthrough=True)       # (Bv, F, 3)
    else:
        fn = shade = torch.ones(1, 1, 1, dtype=dt, device=dev)                                 # made by the op
    opac = torch.as_tensor(opacity, dtype=dt, device=dev)
    opac = opac.reshape(1, -1) if opac.dim() <= 1 else opac
    if opac.shape != (B, F):                                                          # the kernels read row b
        if opac.requires_grad:
            opac = opac.expand(B, F)
        else:
            full = torch.empty(B, F, dtype=dt, device=dev)
            _fill_rows(opac.contiguous(), full.view(-1), F)
            opac = full
    bg = _background_rows(torch.as_tensor(background, dtype=dt, device=dev), C, H, W)
    # camera gradients: the op takes torch's differentiable projection as its geometry input
    geo = camera.project(verts) if _camera_needs_grad(camera) else verts
    store = torch.is_grad_enabled() and any(x.requires_grad for x in (geo, attr, shade, opac, bg, tex, uvc, fn))
    op = SoftMesh(sigma, W, H, per_face, lights is not None, texture is not None, geo is not verts, faces_per_pixel,
                  bins.max_d2, full_lists=opac.requires_grad, store=store, attr_grad=attr.requires_grad,
                  opac_grad=opac.requires_grad, frame=frame)
    rgb, depth, alpha, normals, p2f = bridge.apply(op, geo, attr, shade, opac, bg, tex, uvc, fn, cam, faces, screen,
                                                   bins.fd, bins.offsets, bins.counts, bins.bins)
    # the op's p2f holds only the composited layers (its selection stops behind an opaque one): the fragments are
    # the full K-nearest lists, selected again if anyone reads them
    frags = LazyFragments(bins, faces_per_pixel, p2f.shape[:3])
    return MeshRender(rgb, alpha, depth, normals, frags)


def _render_hard_fused(verts, faces, camera, colors, face_colors, uvs, texture, lights, background, antialias):
    """Hard ``render_mesh`` as the Taichi z-buffer + one ``HardMesh`` op (no per-pixel torch glue): barycentrics,
    interpolation, shading and background in one kernel, their gradients in one more. Returns None for inputs it
    does not cover (a texture; lights on features that are not 3 wide)."""
    if texture is not None:
        return None
    dt, dev = verts.dtype, verts.device
    H, W = camera.height, camera.width
    F = faces.shape[0]
    per_face = colors is None
    if colors is not None:
        attr = colors.to(dt)
    elif face_colors is not None:
        attr = face_colors.to(dt)
    else:
        attr = torch.ones(1, F, 3, dtype=dt, device=dev)
    attr = attr.unsqueeze(0) if attr.dim() == 2 else attr
    C = attr.shape[-1]
    if lights is not None and C != 3:
        return None
    frags = rasterize(verts, faces, camera, faces_per_pixel=1, clip=False, sigma=0.0)
    B = frags.pix_to_face.shape[0]
    bg = _background_rows(torch.as_tensor(background, dtype=dt, device=dev), C, H, W)
    frame = _fixed_frame(lights, dt, dev) if not _camera_needs_grad(camera) else None
    if frame is not None:
        # fixed camera and lights: projection, normals and shading in Taichi too (no per-face torch ops)
        cam = camera_table(camera).to(dt)
        cam = cam.expand(B, -1).contiguous() if cam.shape[0] != B else cam
        ldir, lcol, amb = frame
        rgb, depth, alpha, normals = bridge.apply(HardMeshWorld(per_face, lights is not None), verts, attr, bg, ldir,
                                                  lcol, amb, cam, faces, frags.pix_to_face)
        alpha = alpha.detach()
        if antialias:
            aa = _antialias(torch.cat([rgb, alpha[..., None]], -1), frags, camera.project(verts), faces)
            rgb, alpha = aa[..., :C], aa[..., C]
        return MeshRender(rgb, alpha, depth, normals, frags)
    fn, shade = _face_shade(verts, faces, lights, dt, dev)                                   # (Bv, F, 3)
    screen = camera.project(verts)                      # differentiable: torch carries vertex and camera gradients
    rgb, depth, alpha = bridge.apply(HardMesh(per_face, lights is not None), screen, attr, shade, bg, faces,
                                     frags.pix_to_face)
    alpha = alpha.detach()
    if antialias:
        aa = _antialias(torch.cat([rgb, alpha[..., None]], -1), frags, screen, faces)
        rgb, alpha = aa[..., :C], aa[..., C]
    return MeshRender(rgb, alpha, depth, bridge.apply(NearestNormals(), fn, frags.pix_to_face), frags)


class ZBufferMesh(bridge.Op):
    """Hard mesh rendering on the scatter z-buffer (``zbuffer``) for fixed cameras and lights: the faces' depth keys,
    then one pass per pixel for the fragment, colour (interpolated attributes times two-sided Lambert shade), depth,
    alpha and normal; the backward is one pass per face (``_zb_backward``). Gradients as ``HardMeshWorld``.

    Inputs: verts (Bv, V, 3), attr (Ba, V or F, C), background (Bg, 1 or H*W, C), light directions (L, 3), colours
    (L, 3) and ambient (3,) (zero-size when unlit), the camera table (B, 16), faces (F, 3) int32 and the projected
    vertices (B, V, 3) (no gradient: the op differentiates the projection itself).
    Outputs: colour (B, H, W, C), depth, alpha (B, H, W), normals (B, H, W, 3), then the fragments (pix_to_face,
    bary, zbuf, dist with K = 1; detach them: they carry no gradient).
    ``g_verts``: a zeroed (Bv, V, 3) buffer the backward adds into (zeroed by the projection launch), or None.
    """

    name = "zbuffer_mesh"
    fresh_grads = True
    none_grads = True

    def __init__(self, width: int, height: int, per_face: bool, use_shade: bool, g_verts, need_attr: bool,
                 need_bg: bool):
        self.W, self.H = int(width), int(height)
        self.per_face, self.use_shade = int(per_face), int(use_shade)
        self.g_verts, self.need_attr, self.need_bg = g_verts, bool(need_attr), bool(need_bg)
        self.need_verts = g_verts is not None

    def forward(self, verts, attr, background, ldir, lcol, amb, cam, faces, screen):
        frags, out = zbuffer(screen, faces, self.W, self.H, shading=(verts, attr, background, ldir, lcol, amb,
                                                                   self.per_face, self.use_shade))
        return (*out, *frags), (verts, attr, background, ldir, lcol, amb, cam, faces, screen, frags[0])

    def backward(self, saved, grads):
        verts, attr, background, ldir, lcol, amb, cam, faces, screen, p2f = saved
        g_rgb, g_dep, _g_alp, g_nrm = grads[:4]
        B, H, W, _ = p2f.shape
        kw = dict(dtype=verts.dtype, device=verts.device)
        C = attr.shape[2]
        if g_rgb is None:
            g_rgb = torch.zeros(B, H, W, C, **kw)
        need_verts = self.need_verts
        g_verts = self.g_verts
        self.g_verts = None                          # a second backward (retain_graph) gets a fresh buffer
        if g_verts is None:
            g_verts = torch.zeros_like(verts) if need_verts else torch.zeros(1, 1, 3, **kw)
        g_attr = torch.zeros_like(attr) if self.need_attr else torch.zeros(1, 1, C, **kw)
        dummy = torch.zeros(1, 1, 1, 3, **kw)
        if need_verts or self.need_attr:
            _zb_backward(screen, faces, p2f, verts, attr, ldir, lcol, amb, cam, g_rgb,
                         dummy[0] if g_dep is None else g_dep, dummy if g_nrm is None else g_nrm, g_verts, g_attr,
                         1e-3, self.per_face, self.use_shade, int(g_dep is not None), int(g_nrm is not None),
                         int(need_verts), int(self.need_attr), C)
        g_bg = None
        if self.need_bg:
            bg_image = background.shape[1] > 1
            g_bg = (torch.empty(B, H * W, C, **kw) if bg_image else torch.zeros(background.shape[0], 1, C, **kw))
            _zb_bg_grad(p2f, g_rgb, g_bg, int(bg_image))
            if bg_image and background.shape[0] == 1 and B > 1:
                g_bg = g_bg.sum(0, keepdim=True)
        return (g_verts if need_verts else None, g_attr if self.need_attr else None, g_bg,
                None, None, None, None, None, None)


def _render_hard_z(verts, faces, camera, colors, face_colors, lights, background, antialias):
    """Hard ``render_mesh`` on the scatter z-buffer (``ZBufferMesh``): one projection (which also tests the near
    plane and zeroes the vertex-gradient buffer), the faces' depth keys, one pass per pixel; no torch op over faces
    or pixels. Returns None where it does not apply (camera or light gradients, lights on features that are not 3
    wide, a face crossing the near plane): the caller takes the general path."""
    dt, dev = verts.dtype, verts.device
    frame = _fixed_frame(lights, dt, dev) if not _camera_needs_grad(camera) else None
    if frame is None:
        return None
    H, W = camera.height, camera.width
    F = faces.shape[0]
    per_face = colors is None
    if colors is not None:
        attr = colors
    elif face_colors is not None:
        attr = face_colors
    else:
        attr = torch.ones(1, F, 3, dtype=dt, device=dev)
    attr = attr.unsqueeze(0) if attr.dim() == 2 else attr
    C = attr.shape[-1]
    if lights is not None and C != 3:
        return None
    grad = torch.is_grad_enabled()
    v3 = verts.unsqueeze(0) if verts.dim() == 2 else verts
    need_verts = grad and verts.requires_grad
    screen, zmin, g_verts = project_min_z(v3, camera, zero_like_verts=need_verts)
    if zmin < CLIP_Z + 1e-5 * (1.0 + CLIP_Z):
        return None                                   # a vertex near or behind the plane: maybe a face to clip
    bg_t = torch.as_tensor(background, dtype=dt, device=dev)
    bg = _background_rows(bg_t, C, H, W)
    B = screen.shape[0]
    cam = camera_table(camera).to(dt)
    cam = cam.expand(B, -1).contiguous() if cam.shape[0] != B else cam
    ldir, lcol, amb = frame
    op = ZBufferMesh(W, H, per_face, lights is not None, g_verts, grad and attr.requires_grad,
                     grad and bg_t.requires_grad)
    rgb, depth, alpha, normals, p2f, bary, zbuf, dist = bridge.apply(op, v3, attr, bg, ldir, lcol, amb, cam, faces,
                                                                     screen)
    frags = Fragments(p2f, bary.detach(), zbuf.detach(), dist.detach())
    alpha = alpha.detach()
    if antialias:
        aa = _antialias(torch.cat([rgb, alpha[..., None]], -1), frags, camera.project(verts), faces)
        rgb, alpha = aa[..., :C], aa[..., C]
    return MeshRender(rgb, alpha, depth, normals, frags)
