"""The one-layer z-buffer (hard mode) without tile lists: faces scatter, pixels resolve.

``rasterize(..., faces_per_pixel=1, sigma=0)`` and hard ``render_mesh`` with fixed cameras and lights run here:

1. ``_zb_faces`` (per face): the pixel centres inside the projected triangle (the same barycentric test and
   perspective-correct depth as the tiled K-nearest pass) take an atomic minimum of a key that orders fragments by
   (depth, face id). In f32 the key packs the depth's bits and the face id into one int64; in f64 (the depth needs
   all 64 bits) a second loop in the same launch takes the smallest id among the faces at the minimum depth.
2. ``_zb_resolve`` (per pixel): the winner's fragment (id, barycentrics, depth, signed distance) and, when shading,
   colour, depth, alpha and normal (the face normal and two-sided Lambert shade recomputed from the world
   vertices); it also resets the key buffer, which is kept between calls.
3. ``_zb_backward`` (per face, hard ``render_mesh`` only): each face walks its own pixel box, gathers the gradient
   of the pixels that show it (``HardMesh``'s adjoints of the barycentrics, interpolation and shade) in registers,
   maps it to the world vertices (projection, face normal and Lambert adjoints) and adds nine numbers per face.

Why: on a shared 2-core machine every parallel launch and every torch op over a large tensor is a barrier that
waits for a descheduled thread (several ms each at load ~8). This path costs three launches forward and one
backward, with no tile lists, no sort and no torch op over faces or pixels.

Limit: a face is rasterized by one thread, so a face covering most of a large image (a floor quad) serialises
its pixels (the tiled path in ``raster`` splits such faces across tiles).
"""
import taichi as ti
import torch

from .. import backend
from ..launch import lean
from .camera import Camera
from .raster import _pix_range, _project_vertex

__all__ = ["zbuffer", "ZBuffer", "project_min_z"]

_EMPTY_KEY = 0x7FFFFFFFFFFFFFFF
_EMPTY_ID = 0x7FFFFFFF


@ti.func
def _tri(scr: ti.template(), b, i0, i1, i2, near):
    # the tiled pass' per-face set-up (raster._face_setup) in registers: corner a, barycentric gradients (w0 = 1,
    # w1 = 0 at a), 1/z per corner; ok = 0 for a face with a corner at depth <= near or no area
    ax, ay, az = scr[b, i0, 0], scr[b, i0, 1], scr[b, i0, 2]
    bx, by, bz = scr[b, i1, 0], scr[b, i1, 1], scr[b, i1, 2]
    cx, cy, cz = scr[b, i2, 0], scr[b, i2, 1], scr[b, i2, 2]
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    ok = az > near and bz > near and cz > near and ti.abs(area) >= 1e-12
    ia = 1.0 / ti.select(ok, area, 1.0)
    g = ti.Vector([(by - cy) * ia, (cx - bx) * ia, (cy - ay) * ia, (ax - cx) * ia])
    iz = ti.Vector([1.0 / ti.select(ok, az, 1.0), 1.0 / ti.select(ok, bz, 1.0), 1.0 / ti.select(ok, cz, 1.0)])
    return ok, ax, ay, g, iz


@ti.func
def _span(scr: ti.template(), b, i0, i1, i2, W, H):
    # the pixels whose centres lie in the face's box: raster._pix_range over its corners (the tiled pass' spans)
    x0, x1 = _pix_range(ti.min(scr[b, i0, 0], scr[b, i1, 0], scr[b, i2, 0]),
                        ti.max(scr[b, i0, 0], scr[b, i1, 0], scr[b, i2, 0]), W)
    y0, y1 = _pix_range(ti.min(scr[b, i0, 1], scr[b, i1, 1], scr[b, i2, 1]),
                        ti.max(scr[b, i0, 1], scr[b, i1, 1], scr[b, i2, 1]), H)
    return x0, x1, y0, y1


@ti.func
def _inside_z(ax, ay, g: ti.template(), iz: ti.template(), x, y):
    # barycentric test of the pixel centre and the perspective-correct depth (raster._bary, _clamp_bary, _persp_z)
    dx, dy = x - ax, y - ay
    w0 = 1.0 + g[0] * dx + g[1] * dy
    w1 = g[2] * dx + g[3] * dy
    w2 = 1.0 - w0 - w1
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    c0, c1, c2 = ti.max(w0, 0.0), ti.max(w1, 0.0), ti.max(w2, 0.0)
    s = c0 + c1 + c2
    c0, c1, c2 = c0 / s, c1 / s, c2 / s
    return inside, w0, w1, w2, 1.0 / (c0 * iz[0] + c1 * iz[1] + c2 * iz[2])


@lean
@ti.kernel
def _project_min_z(verts: ti.types.ndarray(), cam: ti.types.ndarray(), screen: ti.types.ndarray(),
                   zmin: ti.types.ndarray(), zero: ti.types.ndarray(), clear: ti.template(), n_ch: int,
                   chunked: ti.template()):
    # raster._project, plus the smallest camera depth (for the near-plane test) and, with ``clear``, zeroing of
    # ``zero`` (Bz, V, 3) (the vertex-gradient buffer the backward adds into: no separate fill). ``chunked`` (CPU):
    # n_ch contiguous runs of the (b, i) pairs, each keeping its minimum in a register and taking one atomic
    # minimum at its end (backend.CPU_SPAN iterations per run, only the first working: see there): a locked
    # compare-exchange per vertex waits for the vertex's stores to drain, ~1/3 of the kernel at 51k faces; the
    # minimum is the same in any order. Else one work item per (b, i) and an atomic minimum each
    B, V = screen.shape[0], screen.shape[1]
    if ti.static(chunked):
        N = B * V
        for it in range(n_ch * _SPAN):
            if it % _SPAN == 0:
                m = zmin[0]                     # inf, or a smaller depth another run already found
                q0, q1, b, i = _run(it // _SPAN, n_ch, N, V)     # (b, i) stepped below
                for _q in range(q0, q1):
                    _project_vertex(verts, cam, screen, b, i)
                    m = ti.min(m, screen[b, i, 2])
                    if ti.static(clear):
                        if b < zero.shape[0]:
                            for j in ti.static(range(3)):
                                zero[b, i, j] = 0.0
                    i += 1
                    if i == V:
                        b, i = b + 1, 0
                ti.atomic_min(zmin[0], m)
    else:
        for b, i in ti.ndrange(B, V):
            _project_vertex(verts, cam, screen, b, i)
            ti.atomic_min(zmin[0], screen[b, i, 2])
            if ti.static(clear):
                if b < zero.shape[0]:
                    for j in ti.static(range(3)):
                        zero[b, i, j] = 0.0


_SPAN = backend.CPU_SPAN


@ti.func
def _run(ch, n_runs, N, W):
    # run ch of n_runs contiguous runs over N items (b, i) laid out in rows of W: its first and end item and the
    # first's (b, i), which the caller steps along the run (i += 1, then the next row at W) instead of dividing per
    # item (an integer division per item was a large share of the per-face and per-vertex loops on this CPU); the
    # bounds in 64 bits (N * n_runs may pass 2^31), no division by 0 when W = 0
    q0 = ti.cast(ti.cast(ch, ti.i64) * N // n_runs, ti.i32)
    q1 = ti.cast(ti.cast(ch + 1, ti.i64) * N // n_runs, ti.i32)
    return q0, q1, q0 // ti.max(W, 1), q0 % ti.max(W, 1)


def cpu_runs(n: int):
    """(n_runs, chunked) for a loop over n items done as contiguous runs (_run): on CPU four runs per thread (a
    thread the OS deschedules on a busy box leaves less behind), each at least ~1k items; elsewhere one item each."""
    if backend.settings().resolved_arch in ("x64", "arm64"):
        nt = int(ti.lang.impl.current_cfg().cpu_max_num_threads)
        return max(1, min(4 * nt, n // 1024)), True
    return 1, False


def project_min_z(verts: torch.Tensor, camera: Camera, zero_like_verts: bool = False):
    """(V, 3) or (B, V, 3) world -> ``(screen (B, V, 3), min_z, zeros)``: ``raster.project`` in one launch that also
    returns the smallest camera depth over every vertex and camera (a float) and, if asked, a zeroed tensor shaped
    like the (batched) vertices (else None)."""
    from .raster import camera_table

    verts = verts.detach().to(backend.torch_dtype())
    verts = (verts.unsqueeze(0) if verts.dim() == 2 else verts).contiguous()
    B = max(camera.batch, verts.shape[0])
    screen = torch.empty(B, verts.shape[1], 3, dtype=verts.dtype, device=verts.device)
    cam = camera_table(camera).to(verts.dtype)
    if cam.shape[0] != B:
        cam = cam.expand(B, -1).contiguous()
    zmin = torch.full((1,), float("inf"), dtype=verts.dtype, device=verts.device)
    zero = torch.empty_like(verts) if zero_like_verts else torch.empty(1, 1, 3, dtype=verts.dtype,
                                                                       device=verts.device)
    n_ch, chunked = cpu_runs(B * verts.shape[1])
    _project_min_z(verts, cam, screen, zmin, zero, bool(zero_like_verts), n_ch, chunked)
    return screen, float(zmin[0]), (zero if zero_like_verts else None)


@lean
@ti.kernel
def _zb_faces(scr: ti.types.ndarray(), faces: ti.types.ndarray(), zkey: ti.types.ndarray(), fid: ti.types.ndarray(),
              near: float, packed: ti.template()):
    # packed (f32): key = (depth bits << 32) | face id; a positive float's bits order like the float
    # else (f64): the depth's own 64 bits first, then (second loop) the smallest id at that depth
    H, W = zkey.shape[1], zkey.shape[2]
    for b, f in ti.ndrange(scr.shape[0], faces.shape[0]):
        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
        # the box first: on a dense mesh most faces hold no pixel centre and need no set-up
        x0, x1, y0, y1 = _span(scr, b, i0, i1, i2, W, H)
        if x0 > x1 or y0 > y1:
            continue
        ok, ax, ay, g, iz = _tri(scr, b, i0, i1, i2, near)
        if ok:
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    inside, _w0, _w1, _w2, z = _inside_z(ax, ay, g, iz, px + 0.5, py + 0.5)
                    if inside:
                        if ti.static(packed):
                            key = (ti.cast(ti.bit_cast(z, ti.i32), ti.i64) << 32) | ti.cast(f, ti.i64)
                            ti.atomic_min(zkey[b, py, px], key)
                        else:
                            ti.atomic_min(zkey[b, py, px], ti.bit_cast(z, ti.i64))
    if ti.static(not packed):
        for b, f in ti.ndrange(scr.shape[0], faces.shape[0]):
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            x0, x1, y0, y1 = _span(scr, b, i0, i1, i2, W, H)
            ok, ax, ay, g, iz = _tri(scr, b, i0, i1, i2, near)
            if ok and x0 <= x1 and y0 <= y1:
                for py in range(y0, y1 + 1):
                    for px in range(x0, x1 + 1):
                        inside, _w0, _w1, _w2, z = _inside_z(ax, ay, g, iz, px + 0.5, py + 0.5)
                        if inside and ti.bit_cast(z, ti.i64) == zkey[b, py, px]:
                            ti.atomic_min(fid[b, py, px], f)


@ti.func
def _face_normal(verts: ti.template(), bv, i0, i1, i2):
    # unit face normal (shading.face_normals: eps 1e-12), the unnormalised cross product, its norm and two edges
    v0 = ti.Vector([verts[bv, i0, 0], verts[bv, i0, 1], verts[bv, i0, 2]])
    e1 = ti.Vector([verts[bv, i1, 0], verts[bv, i1, 1], verts[bv, i1, 2]]) - v0
    e2 = ti.Vector([verts[bv, i2, 0], verts[bv, i2, 1], verts[bv, i2, 2]]) - v0
    m = e1.cross(e2)
    ln = m.norm()
    return m / ti.max(ln, 1e-12), ln, e1, e2


@ti.func
def _lambert(n, ldir: ti.template(), lcol: ti.template(), amb: ti.template()):
    # two-sided Lambert (shading.lambert): ambient + sum_l colour_l |n . d_l|
    s = ti.Vector([amb[0], amb[1], amb[2]])
    for l in range(ldir.shape[0]):
        d = ti.abs(n[0] * ldir[l, 0] + n[1] * ldir[l, 1] + n[2] * ldir[l, 2])
        for c in ti.static(range(3)):
            s[c] += lcol[l, c] * d
    return s


@ti.func
def _hard_bary(scr: ti.template(), b, i0, i1, i2, x, y):
    # differentiable_fragments' steps: screen-space barycentrics at (x, y), clamped to the triangle, then
    # perspective-corrected by 1/z. Returns the raw (w0, w1, w2), the clamped sum, q = w / z, the depth and area.
    ax, ay, az = scr[b, i0, 0], scr[b, i0, 1], scr[b, i0, 2]
    bx, by, bz = scr[b, i1, 0], scr[b, i1, 1], scr[b, i1, 2]
    cx, cy, cz = scr[b, i2, 0], scr[b, i2, 1], scr[b, i2, 2]
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    w0 = ((cx - bx) * (y - by) - (cy - by) * (x - bx)) / area
    w1 = ((ax - cx) * (y - cy) - (ay - cy) * (x - cx)) / area
    w2 = 1.0 - w0 - w1
    c0, c1, c2 = ti.max(w0, 0.0), ti.max(w1, 0.0), ti.max(w2, 0.0)
    s = ti.max(c0 + c1 + c2, 1e-30)
    q0, q1, q2 = c0 / s / az, c1 / s / bz, c2 / s / cz
    Z = 1.0 / ti.max(q0 + q1 + q2, 1e-30)
    return w0, w1, w2, s, q0, q1, q2, Z, area


@lean
@ti.kernel
def _zb_resolve(scr: ti.types.ndarray(), faces: ti.types.ndarray(), zkey: ti.types.ndarray(), fid: ti.types.ndarray(),
                p2f: ti.types.ndarray(), bary: ti.types.ndarray(), zbuf: ti.types.ndarray(), dist: ti.types.ndarray(),
                verts: ti.types.ndarray(), attr: ti.types.ndarray(), bg: ti.types.ndarray(),
                ldir: ti.types.ndarray(), lcol: ti.types.ndarray(), amb: ti.types.ndarray(),
                rgb: ti.types.ndarray(), dep: ti.types.ndarray(), alp: ti.types.ndarray(), nrm: ti.types.ndarray(),
                near: float, ndc2: float, per_face: int, use_shade: int, packed: ti.template(), shade: ti.template(),
                C: ti.template()):
    # fragments as raster._knn writes them for K = 1 (empty: id -1, depth -1, barycentrics and distance 0); with
    # ``shade``, HardMesh's colour (interpolated attr times the face's Lambert shade, background where empty),
    # depth (0 where empty), alpha and the face normal (0 where empty)
    H, W = p2f.shape[1], p2f.shape[2]
    for b, py, px in ti.ndrange(p2f.shape[0], H, W):
        key = zkey[b, py, px]
        f = -1
        if key != ti.i64(_EMPTY_KEY):
            if ti.static(packed):
                f = ti.cast(key - ((key >> 32) << 32), ti.i32)
            else:
                f = fid[b, py, px]
                fid[b, py, px] = _EMPTY_ID
            zkey[b, py, px] = ti.i64(_EMPTY_KEY)
        x, y = px + 0.5, py + 0.5
        p2f[b, py, px, 0] = f
        q = ti.Vector([0.0, 0.0, 0.0])
        zf, d2 = -1.0, 0.0
        if f >= 0:
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            _ok, ax, ay, g, iz = _tri(scr, b, i0, i1, i2, near)
            _inside, w0, w1, w2, zf = _inside_z(ax, ay, g, iz, x, y)
            c0, c1, c2 = ti.max(w0, 0.0), ti.max(w1, 0.0), ti.max(w2, 0.0)
            s = c0 + c1 + c2
            q = ti.Vector([c0 / s * iz[0], c1 / s * iz[1], c2 / s * iz[2]])
            q *= 1.0 / (q[0] + q[1] + q[2])
            # distance to the nearest edge line: w_i^2 times the squared altitude onto edge i (raster._H2)
            ax_, ay_ = scr[b, i0, 0], scr[b, i0, 1]
            bx_, by_ = scr[b, i1, 0], scr[b, i1, 1]
            cx_, cy_ = scr[b, i2, 0], scr[b, i2, 1]
            a2 = ((bx_ - ax_) * (cy_ - ay_) - (by_ - ay_) * (cx_ - ax_)) ** 2
            h0 = a2 / ((cx_ - bx_) ** 2 + (cy_ - by_) ** 2)
            h1 = a2 / ((ax_ - cx_) ** 2 + (ay_ - cy_) ** 2)
            h2 = a2 / ((bx_ - ax_) ** 2 + (by_ - ay_) ** 2)
            d2 = -ti.min(w0 * w0 * h0, w1 * w1 * h1, w2 * w2 * h2) * ndc2
        for j in ti.static(range(3)):
            bary[b, py, px, 0, j] = q[j]
        zbuf[b, py, px, 0] = zf
        dist[b, py, px, 0] = d2
        if ti.static(shade):
            bb = b if bg.shape[0] > 1 else 0
            pp = (py * W + px) if bg.shape[1] > 1 else 0
            v = ti.Vector([bg[bb, pp, c] for c in ti.static(range(C))])
            n = ti.Vector([0.0, 0.0, 0.0])
            Z, a = 0.0, 0.0
            if f >= 0:
                i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                bv = b if verts.shape[0] > 1 else 0
                ba = b if attr.shape[0] > 1 else 0
                n, _ln, _e1, _e2 = _face_normal(verts, bv, i0, i1, i2)
                sh = ti.Vector([1.0, 1.0, 1.0])
                if use_shade:
                    sh = _lambert(n, ldir, lcol, amb)
                _w0, _w1, _w2, _s, q0, q1, q2, Zh, _ar = _hard_bary(scr, b, i0, i1, i2, x, y)
                Z, a = Zh, 1.0
                for c in ti.static(range(C)):
                    val = 0.0
                    if per_face:
                        val = attr[ba, f, c]
                    else:
                        val = (q0 * attr[ba, i0, c] + q1 * attr[ba, i1, c] + q2 * attr[ba, i2, c]) * Zh
                    if ti.static(C == 3):
                        val *= sh[c]
                    v[c] = val
            for c in ti.static(range(C)):
                rgb[b, py, px, c] = v[c]
            dep[b, py, px] = Z
            alp[b, py, px] = a
            for j in ti.static(range(3)):
                nrm[b, py, px, j] = n[j]


@lean
@ti.kernel
def _zb_backward(scr: ti.types.ndarray(), faces: ti.types.ndarray(), p2f: ti.types.ndarray(),
                 verts: ti.types.ndarray(), attr: ti.types.ndarray(), ldir: ti.types.ndarray(),
                 lcol: ti.types.ndarray(), amb: ti.types.ndarray(), cam: ti.types.ndarray(),
                 g_rgb: ti.types.ndarray(), g_dep: ti.types.ndarray(), g_nrm: ti.types.ndarray(),
                 g_verts: ti.types.ndarray(), g_attr: ti.types.ndarray(), near: float, per_face: int, use_shade: int,
                 has_gdep: int, has_gnrm: int, need_verts: int, need_attr: int, C: ti.template()):
    # Per face: the pixels of its box that show it (p2f), each through HardMesh's adjoints (colour = (sum_i b_i
    # attr_i) * shade, b_i = q_i Z, q_i = wn_i / z_i, wn the clamped normalised screen barycentrics, depth Z), summed
    # in registers; then the projection's adjoint (raster._project_bwd, the depth's share too) and the face frame's
    # (|n . d| Lambert, normalisation, cross product) to the three world corners: 9 atomic adds per face that shows.
    H, W = p2f.shape[1], p2f.shape[2]
    for b, f in ti.ndrange(scr.shape[0], faces.shape[0]):
        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
        # does any pixel show this face? (on a dense mesh most faces show none and need no set-up)
        x0, x1, y0, y1 = _span(scr, b, i0, i1, i2, W, H)
        shown = 0
        for py in range(y0, y1 + 1):
            for px in range(x0, x1 + 1):
                if p2f[b, py, px, 0] == f:
                    shown = 1
        if shown:
            bv = b if verts.shape[0] > 1 else 0
            ba = b if attr.shape[0] > 1 else 0
            gba = b if g_attr.shape[0] > 1 else 0
            gbv = b if g_verts.shape[0] > 1 else 0
            n, ln, e1, e2 = _face_normal(verts, bv, i0, i1, i2)
            sh = ti.Vector([1.0, 1.0, 1.0])
            if use_shade:
                sh = _lambert(n, ldir, lcol, amb)
            ax, ay, az = scr[b, i0, 0], scr[b, i0, 1], scr[b, i0, 2]
            bxx, byy, bz = scr[b, i1, 0], scr[b, i1, 1], scr[b, i1, 2]
            cx, cy, cz = scr[b, i2, 0], scr[b, i2, 1], scr[b, i2, 2]
            gs = ti.Vector([0.0 for _ in ti.static(range(9))])              # d/d (x, y, z) of the three screen corners
            gsh = ti.Vector([0.0, 0.0, 0.0])
            gfn = ti.Vector([0.0, 0.0, 0.0])
            ga = ti.Matrix([[0.0 for _ in ti.static(range(C))] for _ in ti.static(range(3))])
            for py in range(y0, y1 + 1):
                for px in range(x0, x1 + 1):
                    if p2f[b, py, px, 0] == f:
                        x, y = px + 0.5, py + 0.5
                        if has_gnrm:
                            for j in ti.static(range(3)):
                                gfn[j] += g_nrm[b, py, px, j]
                        w0, w1, w2, s, q0, q1, q2, Z, area = _hard_bary(scr, b, i0, i1, i2, x, y)
                        b0, b1, b2 = q0 * Z, q1 * Z, q2 * Z
                        gb0, gb1, gb2 = 0.0, 0.0, 0.0
                        for c in ti.static(range(C)):
                            g = g_rgb[b, py, px, c]
                            shc = sh[c] if ti.static(C == 3) else 1.0
                            if per_face:
                                val = attr[ba, f, c]
                                ga[0, c] += g * shc
                                if ti.static(C == 3):
                                    gsh[c] += g * val
                            else:
                                a0, a1, a2 = attr[ba, i0, c], attr[ba, i1, c], attr[ba, i2, c]
                                gv = g * shc
                                ga[0, c] += gv * b0
                                ga[1, c] += gv * b1
                                ga[2, c] += gv * b2
                                gb0 += gv * a0
                                gb1 += gv * a1
                                gb2 += gv * a2
                                if ti.static(C == 3):
                                    gsh[c] += g * (b0 * a0 + b1 * a1 + b2 * a2)
                        if need_verts:
                            gZ = 0.0
                            if has_gdep:
                                gZ = g_dep[b, py, px]
                            dot = gb0 * b0 + gb1 * b1 + gb2 * b2
                            gq0 = Z * (gb0 - dot) - gZ * Z * Z
                            gq1 = Z * (gb1 - dot) - gZ * Z * Z
                            gq2 = Z * (gb2 - dot) - gZ * Z * Z
                            gs[2] += -gq0 * q0 / az
                            gs[5] += -gq1 * q1 / bz
                            gs[8] += -gq2 * q2 / cz
                            gn0, gn1, gn2 = gq0 / az, gq1 / bz, gq2 / cz
                            n0, n1, n2 = ti.max(w0, 0.0) / s, ti.max(w1, 0.0) / s, ti.max(w2, 0.0) / s
                            dn = gn0 * n0 + gn1 * n1 + gn2 * n2
                            gc0 = (gn0 - dn) / s if w0 > 0 else 0.0
                            gc1 = (gn1 - dn) / s if w1 > 0 else 0.0
                            gc2 = (gn2 - dn) / s if w2 > 0 else 0.0
                            gw0, gw1 = gc0 - gc2, gc1 - gc2
                            gE0, gE1 = gw0 / area, gw1 / area
                            gA = -(gw0 * w0 + gw1 * w1) / area
                            gs[0] += gE1 * (y - cy) + gA * (byy - cy)
                            gs[1] += -gE1 * (x - cx) + gA * (cx - bxx)
                            gs[3] += gE0 * (cy - y) + gA * (cy - ay)
                            gs[4] += gE0 * (x - cx) - gA * (cx - ax)
                            gs[6] += gE0 * (y - byy) + gE1 * (ay - y) - gA * (byy - ay)
                            gs[7] += -gE0 * (x - bxx) + gE1 * (x - ax) + gA * (bxx - ax)
            if need_attr:
                if per_face:
                    for c in ti.static(range(C)):
                        ti.atomic_add(g_attr[gba, f, c], ga[0, c])
                else:
                    for c in ti.static(range(C)):
                        ti.atomic_add(g_attr[gba, i0, c], ga[0, c])
                        ti.atomic_add(g_attr[gba, i1, c], ga[1, c])
                        ti.atomic_add(g_attr[gba, i2, c], ga[2, c])
            if need_verts:
                gw = ti.Matrix([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])     # rows: corners
                # projection: u = fx x / z + cx, v = fy y / z + cy, depth z; world = R^T (camera gradient)
                for k in ti.static(range(3)):
                    ii = i0 if k == 0 else (i1 if k == 1 else i2)
                    z = scr[b, ii, 2]
                    if ti.abs(z) < 1e-12:
                        z = 1e-12
                    gu, gv = gs[3 * k], gs[3 * k + 1]
                    gc = ti.Vector([gu * cam[b, 12] / z, gv * cam[b, 13] / z,
                                    -(gu * (scr[b, ii, 0] - cam[b, 14]) + gv * (scr[b, ii, 1] - cam[b, 15])) / z
                                    + gs[3 * k + 2]])
                    for j in ti.static(range(3)):
                        gw[k, j] = cam[b, j] * gc[0] + cam[b, 3 + j] * gc[1] + cam[b, 6 + j] * gc[2]
                # face frame: through |n . d| (sign; 0 at 0), the normalisation and the cross product
                gg = gfn
                if use_shade and ti.static(C == 3):
                    for l in range(ldir.shape[0]):
                        d = ti.Vector([ldir[l, 0], ldir[l, 1], ldir[l, 2]])
                        dd = n.dot(d)
                        sg = ti.select(dd > 0, 1.0, ti.select(dd < 0, -1.0, 0.0))
                        gl = gsh[0] * lcol[l, 0] + gsh[1] * lcol[l, 1] + gsh[2] * lcol[l, 2]
                        gg += gl * sg * d
                gm = gg / 1e-12
                if ln > 1e-12:
                    gm = (gg - n * n.dot(gg)) / ln
                g1, g2 = e2.cross(gm), gm.cross(e1)
                for j in ti.static(range(3)):
                    ti.atomic_add(g_verts[gbv, i0, j], gw[0, j] - g1[j] - g2[j])
                    ti.atomic_add(g_verts[gbv, i1, j], gw[1, j] + g1[j])
                    ti.atomic_add(g_verts[gbv, i2, j], gw[2, j] + g2[j])


@lean
@ti.kernel
def _zb_bg_grad(p2f: ti.types.ndarray(), g_rgb: ti.types.ndarray(), g_bg: ti.types.ndarray(), bg_image: int):
    # the background shows where no face does: per pixel (an image background) or summed (one colour per batch)
    H, W, C = p2f.shape[1], p2f.shape[2], g_rgb.shape[3]
    for b, py, px in ti.ndrange(p2f.shape[0], H, W):
        empty = p2f[b, py, px, 0] < 0
        for c in range(C):
            g = g_rgb[b, py, px, c] if empty else 0.0
            if bg_image:
                g_bg[b, py * W + px, c] = g
            elif empty:
                ti.atomic_add(g_bg[b if g_bg.shape[0] > 1 else 0, 0, c], g)


_BUFFERS: dict = {}
"""Key buffers per (batch, height, width, device), kept between calls: the resolve pass leaves them empty (so no
fill per call). Not for concurrent renders of one size from several Python threads."""


def _keys(B: int, H: int, W: int, device, packed: bool):
    """The (B, H, W) int64 key and int32 id buffers, all empty. A call interrupted between scatter and resolve
    leaves them dirty: they are then refilled."""
    k = (B, H, W, str(device))
    buf = _BUFFERS.get(k)
    if buf is None or buf[2]:
        if len(_BUFFERS) >= 4:                   # a few image sizes at a time (8 bytes per pixel each)
            _BUFFERS.clear()
        zkey = torch.full((B, H, W), _EMPTY_KEY, dtype=torch.int64, device=device)
        fid = torch.full((B, H, W) if not packed else (1, 1, 1), _EMPTY_ID, dtype=torch.int32, device=device)
        buf = [zkey, fid, False]
        _BUFFERS[k] = buf
    elif not packed and buf[1].shape != (B, H, W):
        buf[1] = torch.full((B, H, W), _EMPTY_ID, dtype=torch.int32, device=device)
    return buf


def zbuffer(screen: torch.Tensor, faces: torch.Tensor, width: int, height: int, near: float = 1e-3, shading=None):
    """The nearest face at each pixel centre from projected vertices ``screen`` (B, V, 3) and int32 ``faces``:
    ``(pix_to_face (B, H, W, 1), bary (B, H, W, 1, 3), zbuf, dist (B, H, W, 1))`` as ``rasterize`` with K = 1
    and sigma = 0. With ``shading`` = ``(verts, attr, bg, ldir, lcol, amb, per_face, use_shade)`` it also returns
    ``(rgb (B, H, W, C), depth, alpha (B, H, W), normals (B, H, W, 3))`` (``ZBuffer``'s forward)."""
    from .raster import _ndc2

    B, H, W = screen.shape[0], int(height), int(width)
    dt, dev = screen.dtype, screen.device
    packed = dt == torch.float32
    buf = _keys(B, H, W, dev, packed)
    zkey, fid = buf[0], buf[1]
    p2f = torch.empty(B, H, W, 1, dtype=torch.int32, device=dev)
    bary = torch.empty(B, H, W, 1, 3, dtype=dt, device=dev)
    zbuf = torch.empty(B, H, W, 1, dtype=dt, device=dev)
    dist = torch.empty(B, H, W, 1, dtype=dt, device=dev)
    buf[2] = True
    _zb_faces(screen, faces, zkey, fid, float(near), packed)
    if shading is None:
        d3 = torch.empty(1, 1, 3, dtype=dt, device=dev)
        d2 = torch.empty(1, 3, dtype=dt, device=dev)
        d4 = d3.reshape(1, 1, 1, 3)
        _zb_resolve(screen, faces, zkey, fid, p2f, bary, zbuf, dist, d3, d3, d3, d2, d2, d3.reshape(-1), d4, d3, d3,
                    d4, float(near), _ndc2(W, H), 0, 0, packed, False, 3)
        buf[2] = False
        return p2f, bary, zbuf, dist
    verts, attr, bg, ldir, lcol, amb, per_face, use_shade = shading
    C = attr.shape[2]
    rgb = torch.empty(B, H, W, C, dtype=dt, device=dev)
    dep, alp = torch.empty(B, H, W, dtype=dt, device=dev), torch.empty(B, H, W, dtype=dt, device=dev)
    nrm = torch.empty(B, H, W, 3, dtype=dt, device=dev)
    _zb_resolve(screen, faces, zkey, fid, p2f, bary, zbuf, dist, verts, attr, bg, ldir, lcol, amb, rgb, dep, alp,
                nrm, float(near), _ndc2(W, H), int(per_face), int(use_shade), packed, True, C)
    buf[2] = False
    return (p2f, bary, zbuf, dist), (rgb, dep, alp, nrm)
