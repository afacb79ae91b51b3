"""Triangle rasterization in Taichi: a K-nearest-faces z-buffer (hard) and soft coverage compositing.

Two stages, so that only a small kernel is differentiable:

1. ``rasterize`` (not differentiable): per-face constants are computed once (barycentric gradients, 1/z per
   vertex, edge altitudes and lengths), faces are binned into 4x4-pixel tiles in front-to-back order (each
   entry with a mask of the tile pixels in the face's box grown by the blur radius), then each pixel keeps the
   K faces nearest the camera among those that cover it (hard) or lie within the blur radius (soft); in soft
   mode faces that contain the pixel centre are kept before blur-only ones, so a dense mesh cannot crowd the
   covering face out of the K (which made alpha ~0 inside silhouettes). Output:
   ``Fragments`` with face ids, perspective-correct barycentrics, depths and signed distances.
   The hard one-layer case (K = 1, sigma = 0) skips the tiles: faces scatter an atomic minimum of a (depth, face
   id) key per pixel and one pass per pixel resolves it (``zbuffer``), the same selection in fewer launches.
2. ``soft_composite`` (differentiable, hand-written backward): recomputes each kept face's signed 2D distance
   from the projected vertices, turns it into coverage ``alpha = opacity * exp(-max(d, 0) / sigma)``
   (Differentiable Blocks World; d is the squared distance in NDC units, positive outside), and composites the
   K layers front to back over a background. Gradients reach vertex positions through ``d``, and colours,
   opacities and the background directly. Barycentrics stay detached, as in DBW.

NDC units follow PyTorch3D: the shorter image side spans 2, so ``sigma = 1e-4`` blurs edges by ~0.01 of the
half-height (about half a pixel at 128 px).
"""

import math
from dataclasses import dataclass

import numpy as np
import taichi as ti
import torch

from .. import backend, bridge
from ..launch import lean
from .camera import Camera

__all__ = ["Fragments", "LazyFragments", "Bins", "bin_faces", "rasterize", "rasterize_screen",
           "differentiable_fragments", "face_corners", "project", "camera_table", "soft_composite", "expand_background",
           "SoftComposite", "blur_radius_px", "TILE"]

TILE = 4
"""Tile edge in pixels for face binning (small tiles: each pixel scans fewer faces that miss it; TILE^2 <= 16:
the two pixel masks of a tile-list entry share an int32)."""

_CUTOFF = math.log(1e4)
"""Soft coverage below exp(-_CUTOFF) = 1e-4 of a face's opacity is dropped (the face is not kept)."""


@dataclass
class Fragments:
    """Per-pixel lists of up to K faces, sorted front to back.

    Selection: the nearest faces containing the pixel centre first, then the nearest faces within the blur
    radius (soft mode), each class ordered by (depth, face id).

    pix_to_face: (B, H, W, K) int32 face index into ``faces``; -1 where the slot is empty.
    bary: (B, H, W, K, 3) perspective-correct barycentrics (clamped to the triangle for pixels outside it).
    zbuf: (B, H, W, K) camera depth z of the face at the pixel; -1 where empty.
    dist: (B, H, W, K) signed squared 2D distance in NDC units from the pixel centre to the face (< 0 inside).
    """

    pix_to_face: torch.Tensor
    bary: torch.Tensor
    zbuf: torch.Tensor
    dist: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W, K) bool: slot holds a face."""
        return self.pix_to_face >= 0


# ---------------------------------------------------------------------------------------------------------------
# Taichi helpers
# ---------------------------------------------------------------------------------------------------------------
@ti.func
def _edge(ax, ay, bx, by, px, py):
    # twice the signed area of (a, b, p)
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


@ti.func
def _seg_dist2(px, py, ax, ay, bx, by):
    ex, ey = bx - ax, by - ay
    L = ex * ex + ey * ey
    t = 0.0
    if L > 0:
        t = ti.min(ti.max(((px - ax) * ex + (py - ay) * ey) / L, 0.0), 1.0)
    qx, qy = ax + t * ex - px, ay + t * ey - py
    return qx * qx + qy * qy


@ti.func
def _project_vertex(verts: ti.template(), cam: ti.template(), screen: ti.template(), b, i):
    """Pinhole projection (Camera.project) of vertex i for camera b into ``screen[b, i]`` (pixel x, y and camera
    depth); cam rows are R (9), t (3), fx, fy, cx, cy."""
    bv = b if verts.shape[0] > 1 else 0
    X = ti.Vector([verts[bv, i, 0], verts[bv, i, 1], verts[bv, i, 2]])
    pc = ti.Vector([0.0, 0.0, 0.0])
    for r in ti.static(range(3)):
        pc[r] = cam[b, 3 * r] * X[0] + cam[b, 3 * r + 1] * X[1] + cam[b, 3 * r + 2] * X[2] + cam[b, 9 + r]
    z = pc[2]
    if ti.abs(z) < 1e-12:
        z = 1e-12
    screen[b, i, 0] = cam[b, 12] * pc[0] / z + cam[b, 14]
    screen[b, i, 1] = cam[b, 13] * pc[1] / z + cam[b, 15]
    screen[b, i, 2] = pc[2]


@lean
@ti.kernel
def _project(verts: ti.types.ndarray(), cam: ti.types.ndarray(), screen: ti.types.ndarray()):
    for b, i in ti.ndrange(screen.shape[0], screen.shape[1]):
        _project_vertex(verts, cam, screen, b, i)


@lean
@ti.kernel
def _project_bwd(screen: ti.types.ndarray(), cam: ti.types.ndarray(), g_xy: ti.types.ndarray(),
                 g_verts: ti.types.ndarray()):
    for b, i in ti.ndrange(screen.shape[0], screen.shape[1]):
        bv = b if g_verts.shape[0] > 1 else 0
        g = _proj_vjp(screen, cam, b, i, g_xy[b, i, 0], g_xy[b, i, 1])
        for j in ti.static(range(3)):
            g_verts[bv, i, j] += g[j]


@ti.func
def _proj_vjp(screen: ti.template(), cam: ti.template(), b, i, gu, gv):
    # world gradient (3-vector) of vertex i seen by camera b from its screen gradient (gu, gv): u = fx x/z + cx,
    # so d u / d(x, y, z)_cam = (fx / z, 0, -(u - cx) / z), and the world gradient is R^T g_cam
    z = screen[b, i, 2]
    if ti.abs(z) < 1e-12:
        z = 1e-12
    gc = ti.Vector([gu * cam[b, 12] / z, gv * cam[b, 13] / z,
                    -(gu * (screen[b, i, 0] - cam[b, 14]) + gv * (screen[b, i, 1] - cam[b, 15])) / z])
    return ti.Vector([cam[b, 0] * gc[0] + cam[b, 3] * gc[1] + cam[b, 6] * gc[2],
                      cam[b, 1] * gc[0] + cam[b, 4] * gc[1] + cam[b, 7] * gc[2],
                      cam[b, 2] * gc[0] + cam[b, 5] * gc[1] + cam[b, 8] * gc[2]])


def camera_table(camera: Camera) -> torch.Tensor:
    """(B, 16) rows ``R (9), t (3), fx, fy, cx, cy`` for the Taichi projection kernels (detached: camera
    gradients go through ``Camera.project`` in torch)."""
    B = camera.batch
    cols = [camera.R.reshape(B, 9), camera.t.reshape(B, 3), camera.fx.reshape(B, 1), camera.fy.reshape(B, 1),
            camera.cx.reshape(B, 1), camera.cy.reshape(B, 1)]
    return torch.cat(cols, 1).detach().contiguous()


def project(verts: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Not differentiable: (V, 3) or (B, V, 3) world -> (B, V, 3) ``(u, v, z)`` as ``Camera.project``, in one
    Taichi kernel (no torch op chain between kernels)."""
    verts = verts.detach().to(backend.torch_dtype())
    verts = (verts.unsqueeze(0) if verts.dim() == 2 else verts).contiguous()
    B = max(camera.batch, verts.shape[0])
    screen = torch.empty(B, verts.shape[1], 3, dtype=verts.dtype, device=verts.device)
    cam = camera_table(camera).to(verts.dtype)
    if cam.shape[0] != B:
        cam = cam.expand(B, -1).contiguous()
    _project(verts, cam, screen)
    return screen


# per-face record written once by _face_setup (in _bin_setup), read by binning and the K-nearest pass (one row per
# face):
_BOX = 0      # 4: bbox grown by the blur margin (xmin, xmax, ymin, ymax); empty (1, -1, 1, -1) if the face is skipped
_VXY = 4      # 6: screen vertices a, b, c (x, y)
_WGR = 10     # 4: barycentric gradients d w0 / d(x, y), d w1 / d(x, y) (w0 = 1, w1 = 0 at vertex a)
_IZ = 14      # 3: 1 / z of each vertex (1/z is affine in screen space)
_H2 = 17      # 3: squared altitude onto the edge opposite each vertex: line distance^2 = w_i^2 h2_i
_IL = 20      # 3: 1 / |edge|^2 of the edges (a, b), (b, c), (c, a)
_ZMIN = 23    # 1: nearest vertex depth (a lower bound on the face's depth anywhere)
_NREC = 24
_CHUNK = 32   # tile-list entries mask-tested per compaction step in _knn
_IN_SHIFT = 16  # a tile-list entry's mask: bits 0..15 the tile pixels in the face's grown box, 16.. those it may hold
_IN_EPS = 1e-4  # _inside_bits marks a pixel when every barycentric is >= -_IN_EPS (a superset of _select's test)


@ti.func
def _face_setup(screen: ti.template(), faces: ti.template(), fd: ti.template(), b, f, r, margin, near):
    # face f's record at fd[r:r + _NREC] (fd flat); a face is skipped (empty box, never binned) if a vertex is at
    # depth <= near or it has no area. Each value is stored once (a flat index needs no shape reloads per store).
    i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
    ax, ay, az = screen[b, i0, 0], screen[b, i0, 1], screen[b, i0, 2]
    bx, by, bz = screen[b, i1, 0], screen[b, i1, 1], screen[b, i1, 2]
    cx, cy, cz = screen[b, i2, 0], screen[b, i2, 1], screen[b, i2, 2]
    area = _edge(ax, ay, bx, by, cx, cy)
    if az > near and bz > near and cz > near and ti.abs(area) >= 1e-12:
        fd[r + _BOX] = ti.min(ax, bx, cx) - margin
        fd[r + _BOX + 1] = ti.max(ax, bx, cx) + margin
        fd[r + _BOX + 2] = ti.min(ay, by, cy) - margin
        fd[r + _BOX + 3] = ti.max(ay, by, cy) + margin
        fd[r + _VXY], fd[r + _VXY + 1] = ax, ay
        fd[r + _VXY + 2], fd[r + _VXY + 3] = bx, by
        fd[r + _VXY + 4], fd[r + _VXY + 5] = cx, cy
        ia = 1.0 / area
        fd[r + _WGR], fd[r + _WGR + 1] = (by - cy) * ia, (cx - bx) * ia
        fd[r + _WGR + 2], fd[r + _WGR + 3] = (cy - ay) * ia, (ax - cx) * ia
        fd[r + _IZ], fd[r + _IZ + 1], fd[r + _IZ + 2] = 1.0 / az, 1.0 / bz, 1.0 / cz
        lab = (bx - ax) ** 2 + (by - ay) ** 2
        lbc = (cx - bx) ** 2 + (cy - by) ** 2
        lca = (ax - cx) ** 2 + (ay - cy) ** 2
        a2 = area * area
        fd[r + _H2], fd[r + _H2 + 1], fd[r + _H2 + 2] = a2 / lbc, a2 / lca, a2 / lab
        fd[r + _IL], fd[r + _IL + 1], fd[r + _IL + 2] = 1.0 / lab, 1.0 / lbc, 1.0 / lca
        fd[r + _ZMIN] = ti.min(az, bz, cz)
    else:
        for j in ti.static(range(_NREC)):
            fd[r + j] = 0.0
        fd[r + _BOX], fd[r + _BOX + 1], fd[r + _BOX + 2], fd[r + _BOX + 3] = 1.0, -1.0, 1.0, -1.0


@ti.func
def _pix_range(lo, hi, n):
    # inclusive range [p0, p1] of the pixels p in [0, n) whose centre p + 0.5 lies in [lo, hi] (empty: p0 > p1),
    # decided by the same float comparisons as a direct test of each centre
    lo, hi = ti.min(ti.max(lo, -2.0), n + 2.0), ti.min(ti.max(hi, -2.0), n + 2.0)
    p0 = ti.cast(ti.ceil(lo - 0.5), ti.i32)
    if p0 + 0.5 < lo:
        p0 += 1
    if p0 - 0.5 >= lo:
        p0 -= 1
    p1 = ti.cast(ti.floor(hi - 0.5), ti.i32)
    if p1 + 0.5 > hi:
        p1 -= 1
    if p1 + 1.5 <= hi:
        p1 += 1
    return ti.max(p0, 0), ti.min(p1, n - 1)


@ti.func
def _bary_at(ax, ay, g0, g1, g2, g3, x, y):
    # screen-space barycentrics of (x, y) from corner a and the gradients of w0, w1 (_WGR)
    dx, dy = x - ax, y - ay
    w0 = 1.0 + g0 * dx + g1 * dy
    w1 = g2 * dx + g3 * dy
    return w0, w1, 1.0 - w0 - w1


_NSPAN = 10
"""Columns of a face's spans row (_bin_setup, GPU): x0, x1, y0, y1 (grown box), u0, u1, v0, v1 (own box), tiles,
tile rows."""
_NPK = 8
"""Words of a face's packed binning record (_setup_face's pk)."""
_TASK = backend.CPU_SPAN
"""Loop iterations per task of the CPU binning's few-task loops (set-up chunks, bands of tile rows): see
backend.CPU_SPAN; iteration i of such a loop does task i / _TASK if i % _TASK == 0 (an idle iteration costs
~1 ns)."""
_BM = 8
"""Own boxes up to _BM x _BM pixels get their inside bits as a bitmap at set-up."""


@ti.func
def _words(lo, hi):
    # two int32 words as one int64 (lo first in memory)
    return ti.cast(ti.cast(lo, ti.u32), ti.i64) | (ti.cast(hi, ti.i64) << 32)


@ti.func
def _setup_face(screen: ti.template(), faces: ti.template(), fd: ti.template(), pk: ti.template(), b, f, F, margin,
                near, W, H):
    # face f's record (_face_setup; fd flat (B * F * _NREC)) and packed binning record (pk, B * F * _NPK, for
    # _bin_lists): x0 | x1 << 16, y0 | y1 << 16, u0 | u1 << 16, v0 | v1 << 16 (1 if the own box holds no pixel
    # centre), then, for an own box of at most _BM x _BM pixels, the pixels it may hold (every barycentric >=
    # -_IN_EPS: _inside_bits' test) as a bitmap (bit (py - v0) * _BM + px - u0 of words 4, 5), else word 6 = 1
    # (_bin_lists tests those itself). Returns the pixels (x0, x1, y0, y1) whose centres lie in the face's grown
    # box (every tile holding one of them gets the face; empty if not binned) and those in its own box grown by
    # 0.01 px (u0, u1, v0, v1: the inside test covers those).
    r = (b * F + f) * _NREC
    _face_setup(screen, faces, fd, b, f, r, margin, near)
    x0, x1 = _pix_range(fd[r + _BOX], fd[r + _BOX + 1], W)
    y0, y1 = _pix_range(fd[r + _BOX + 2], fd[r + _BOX + 3], H)
    ax, ay, bx, by = fd[r + _VXY], fd[r + _VXY + 1], fd[r + _VXY + 2], fd[r + _VXY + 3]
    cx, cy = fd[r + _VXY + 4], fd[r + _VXY + 5]
    u0, u1 = _pix_range(ti.min(ax, bx, cx) - 0.01, ti.max(ax, bx, cx) + 0.01, W)
    v0, v1 = _pix_range(ti.min(ay, by, cy) - 0.01, ti.max(ay, by, cy) + 0.01, H)
    uu, vv, lo, hi, big = 0, 1, 0, 0, 0
    if u0 <= u1 and v0 <= v1:
        uu, vv = u0 | (u1 << 16), v0 | (v1 << 16)
        if u1 - u0 < _BM and v1 - v0 < _BM:
            g0, g1, g2, g3 = fd[r + _WGR], fd[r + _WGR + 1], fd[r + _WGR + 2], fd[r + _WGR + 3]
            for py in range(v0, v1 + 1):
                bits = 0
                if u1 - u0 < _BM // 2:
                    for c in ti.static(range(_BM // 2)):
                        w0, w1, w2 = _bary_at(ax, ay, g0, g1, g2, g3, u0 + c + 0.5, py + 0.5)
                        bits |= ti.select((w0 >= -_IN_EPS) & (w1 >= -_IN_EPS) & (w2 >= -_IN_EPS), 1 << c, 0)
                else:
                    for c in ti.static(range(_BM)):
                        w0, w1, w2 = _bary_at(ax, ay, g0, g1, g2, g3, u0 + c + 0.5, py + 0.5)
                        bits |= ti.select((w0 >= -_IN_EPS) & (w1 >= -_IN_EPS) & (w2 >= -_IN_EPS), 1 << c, 0)
                bits &= (1 << (u1 - u0 + 1)) - 1
                k = py - v0
                if k < 32 // _BM:
                    lo |= bits << (_BM * k)
                else:
                    hi |= bits << (_BM * (k - 32 // _BM))
        else:
            big = 1
    q = (b * F + f) * (_NPK // 2)
    pk[q], pk[q + 1] = _words(x0 | (x1 << 16), y0 | (y1 << 16)), _words(uu, vv)
    pk[q + 2], pk[q + 3] = _words(lo, hi), ti.cast(big, ti.i64)
    return x0, x1, y0, y1, u0, u1, v0, v1


@lean
@ti.kernel
def _bin_setup(screen: ti.types.ndarray(), faces: ti.types.ndarray(), fd: ti.types.ndarray(),
               spans: ti.types.ndarray(), pk: ti.types.ndarray(), F: int, margin: float, near: float, W: int, H: int):
    # GPU: each face's records (_setup_face), then its spans row (spans flat (B * F * _NSPAN)): x0, x1, y0, y1,
    # u0, u1, v0, v1 as _setup_face returns them, its number of tiles and of tile rows (0 if not binned)
    for b, f in ti.ndrange(screen.shape[0], F):
        x0, x1, y0, y1, u0, u1, v0, v1 = _setup_face(screen, faces, fd, pk, b, f, F, margin, near, W, H)
        nt, nr = 0, 0
        if x0 <= x1 and y0 <= y1:
            nr = y1 // TILE - y0 // TILE + 1
            nt = nr * (x1 // TILE - x0 // TILE + 1)
        s = (b * F + f) * _NSPAN
        spans[s], spans[s + 1], spans[s + 2], spans[s + 3] = x0, x1, y0, y1
        spans[s + 4], spans[s + 5], spans[s + 6], spans[s + 7] = u0, u1, v0, v1
        spans[s + 8], spans[s + 9] = nt, nr


@lean
@ti.kernel
def _bin_setup_cpu(screen: ti.types.ndarray(), faces: ti.types.ndarray(), fd: ti.types.ndarray(),
                   pk: ti.types.ndarray(), keys: ti.types.ndarray(), ids: ti.types.ndarray(),
                   cs: ti.types.ndarray(), F: int, nch: int, cw: int, margin: float, near: float, W: int, H: int,
                   ty_n: int, wide: ti.template()):
    # CPU: each face's records (_setup_face) and what _bin_lists' first pass needs, gathered per chunk of faces
    # (one task per chunk of consecutive faces, no atomics): keys[b, 0, f] its depth key and ids[b, 0, f] = f if
    # it is binned, else -1 (keys, ids (B, 2, F)); cs (B, nch, tiles_y + 2): per chunk, the differences over the
    # tile rows of its faces' tile entries (a face adds its number of tile columns at its first tile row and takes
    # it off after its last) and then its number of tile entries (a chunk's row is cw >= tiles_y + 2 words, whole
    # cache lines: no false sharing between the chunks' tasks)
    C = (F + nch - 1) // nch
    for it in range(screen.shape[0] * nch * _TASK):
        if it % _TASK == 0:
            b, ch = it // _TASK // nch, it // _TASK % nch
            c0 = (b * nch + ch) * cw
            for r in range(ty_n + 2):
                cs[c0 + r] = 0
            tot = 0
            for f in range(ch * C, ti.min(F, ch * C + C)):
                x0, x1, y0, y1, u0, u1, v0, v1 = _setup_face(screen, faces, fd, pk, b, f, F, margin, near, W, H)
                i = b * 2 * F + f
                ids[i] = -1
                if x0 <= x1 and y0 <= y1:
                    keys[i], ids[i] = ti.cast(_depth_key(fd[(b * F + f) * _NREC + _ZMIN], wide), ti.i64), f
                    nc = x1 // TILE - x0 // TILE + 1
                    r0, r1 = c0 + y0 // TILE, c0 + y1 // TILE + 1
                    cs[r0] = cs[r0] + nc
                    cs[r1] = cs[r1] - nc
                    tot += nc * (r1 - r0)
            cs[c0 + ty_n + 1] = tot


@ti.func
def _tile_mask(x0, x1, y0, y1, ty, tx):
    # bit (row * TILE + column) for the pixels of tile (ty, tx) inside the pixel span [x0, x1] x [y0, y1]
    rlo, rhi = ti.max(y0 - ty * TILE, 0), ti.min(y1 - ty * TILE, TILE - 1)
    clo, chi = ti.max(x0 - tx * TILE, 0), ti.min(x1 - tx * TILE, TILE - 1)
    cols = ((1 << (chi + 1)) - 1) ^ ((1 << clo) - 1)
    mask = 0
    for r in range(rlo, rhi + 1):
        mask |= cols << (r * TILE)
    return mask


@ti.func
def _inside_bits(fd: ti.template(), spans: ti.template(), b, f, s, ty, tx):
    # bits _IN_SHIFT.. of an entry's mask: the pixels of tile (ty, tx) whose centre may lie inside face f (every
    # barycentric >= -_IN_EPS, a superset of _select's test), among those in the face's own box grown by 0.01 px
    # (spans row s, columns 4..7: rounding cannot move a centre that _select finds inside out of either)
    m = 0
    for py in range(ti.max(spans[b, s, 6], ty * TILE), ti.min(spans[b, s, 7], ty * TILE + TILE - 1) + 1):
        for px in range(ti.max(spans[b, s, 4], tx * TILE), ti.min(spans[b, s, 5], tx * TILE + TILE - 1) + 1):
            w0, w1, w2 = _bary(fd, b, f, px + 0.5, py + 0.5)
            if w0 >= -_IN_EPS and w1 >= -_IN_EPS and w2 >= -_IN_EPS:
                m |= 1 << ((py % TILE) * TILE + px % TILE + _IN_SHIFT)
    return m


_RADIX = 12
"""Bits per pass of _bin_lists' radix sort of the faces' depth keys (12: the 51k-face bench torus's keys span
23 bits, 2 passes instead of 3 with 11; the sort is the serial part of the binning)."""
_NPASS = 6
"""Most radix passes (64-bit keys)."""
_REP = ((1 << TILE * TILE) - 1) // ((1 << TILE) - 1)
"""Bit 0 of every pixel row of a tile's mask: (columns) * _REP repeats a column mask in each row."""


_KEY_INT = {False: (ti.i32, ti.u32), True: (ti.i64, ti.u64)}
"""_depth_key's signed and unsigned integer types of the float's width (f32, f64)."""


@ti.func
def _depth_key(z, wide: ti.template()):
    # an unsigned 64-bit key with the order of the depth z (f32, or f64 if wide): the float's bits with negative
    # values' magnitude bits flipped, the sign bit flipped (so signed order becomes unsigned), -0 as +0
    it, ut = _KEY_INT[wide]
    i = ti.bit_cast(z, it)
    top = ti.cast(1, it) << ti.static(63 if wide else 31)
    if i == top:
        i = 0
    if i < 0:
        i ^= ~top
    return ti.cast(ti.cast(i ^ top, ut), ti.u64)


@ti.func
def _bitmap_lanes(bm, k0):
    # the set-up bitmap bm (u64, row k at bits 8k..8k+7, bit c: own-box column u0 + c) as 4 pixel rows of a tile row
    # in 16-bit lanes: lane pr holds bitmap row k0 + pr (0 outside the bitmap's 8 rows)
    rl = ti.cast(0, ti.u64)
    for pr in ti.static(range(TILE)):
        k = k0 + pr
        byte = (bm >> ti.cast(_BM * ti.min(ti.max(k, 0), _BM - 1), ti.u64)) & 0xFF
        rl |= ti.select((k >= 0) & (k < _BM), byte, ti.cast(0, ti.u64)) << (16 * pr)
    return rl


@ti.func
def _lane_slice(rl, sh):
    # a tile's own bits (mask bits _IN_SHIFT..) from _bitmap_lanes' rows: tile column c is own-box column c + sh
    # (sh = the tile's first column - u0, >= -3): 4-bit slices of the lanes gathered into 16 bits
    sl = ti.select(sh >= 0, rl >> ti.cast(ti.min(sh, _BM), ti.u64),
                   rl << ti.cast(ti.min(-sh, TILE), ti.u64)) & ti.u64(0x000F000F000F000F)
    sl = (sl | (sl >> 12)) & ti.u64(0x000000FF000000FF)
    return ti.cast((sl | (sl >> 24)) & 0xFFFF, ti.i32) << _IN_SHIFT


@lean
@ti.kernel
def _bin_lists(fd: ti.types.ndarray(), cs: ti.types.ndarray(), start: ti.types.ndarray(),
               keys: ti.types.ndarray(), ids: ti.types.ndarray(), hist: ti.types.ndarray(),
               pk: ti.types.ndarray(), rows: ti.types.ndarray(), srt: ti.types.ndarray(),
               srt2: ti.types.ndarray(), sty: ti.types.ndarray(),
               hl: ti.types.ndarray(), cursor: ti.types.ndarray(),
               offsets: ti.types.ndarray(), counts: ti.types.ndarray(), bins: ti.types.ndarray(), B: int, F: int,
               ty_n: int, tx_n: int, nb: int, nch: int, cw: int):
    # CPU tile lists of _bin_setup_cpu's faces. Every array is flat (an index into a 1-D array costs no shape loads,
    # and no array element is updated in place with +=, which Taichi makes atomic): fd, pk (int64 words), keys, ids
    # (B, 2, F; first half), cs (B, nch, cw) as _bin_setup_cpu wrote them; start (B, 2): where batch b's entries
    # begin (column 0); scratch hist (B, _NPASS, 2^_RADIX), rows (B, tiles_y + nb + 4), srt (B, F, _NPK; srt2 the
    # same memory as int64), sty (B, F), hl (B, nb, F), cursor (B, tiles_y, tiles_x); out: offsets, counts (B,
    # tiles_y, tiles_x), bins (N, 2) (viewed as int64: an entry is one store).
    # 1. One task per batch (the only serial part): each tile row's entries start (the chunks' per-row differences
    #    summed, then a prefix sum), the binned faces' keys packed and sorted by (nearest vertex depth, face id) with
    #    a stable LSD radix sort (only the bits in which the keys differ), the tile rows cut into nb bands of about
    #    equal entries. rows: the tile rows' entries starts (tiles_y + 1), the bands' first rows (nb + 1), the
    #    number of sorted faces and where their ids lie in ids.
    # 2. One item per sorted face: its packed record (pk, 4 int64 words, its id added in word 7) copied into srt and
    #    its tile rows into sty, in depth order (the one random read of a face's record: a short loop keeps many of
    #    them in flight; read by the bands instead, each between two faces' tile loops, they cost ~2x as much).
    # 3. One task per band of tile rows: walks the sorted faces (sty, in order) once for the band's tiles' counts
    #    (differences over the columns; the faces that meet the band go to its hit list hl), then their offsets;
    #    then each hit face (its row of srt) is appended to the tiles of its tile rows in the band
    #    with its grown-box pixel mask (bits 0..15), and the pixels it may hold (bits 16..: from the set-up bitmap,
    #    or for a large own box tested here as _inside_bits does) are ORed into its entries of the (few) tiles its
    #    own box meets. Each tile list comes out sorted front to back and each band's lists are written by one task
    #    in a region of their own (deterministic, no atomics).
    # Taichi's CPU range-for hands each thread blocks of >= 512 consecutive iterations (block_dim is overridden on
    # CPU): the band loop runs _TASK iterations per band, one of them working, so the bands spread over the threads.
    # Replaced (branch bin3 of 2026-12-06): a serial pass that appended the sorted faces to per-tile-row lists
    # (24-byte coarse entries) read by one task per tile row; it cost 1.9 ms at 51k faces / 128^2 and 3.4 ms at
    # 512^2 on one thread while the other waited.
    # Tried and dropped (measured, branch bin2 of 2026-12-06): grown-box bits narrowed per pixel row to the columns
    # _consider's far test does not reject (each edge line gives a bound on x per row) and tiles with no such
    # pixel dropped. Outputs stay exact; at 51k faces the lists lose 12% of their entries at 512^2 (16% of the
    # grown-box bits; 6% of the entries at 128^2) and _soft_fwd gets ~10% cheaper at 256^2 and 512^2, but the row
    # spans (~50 instructions a pixel row, ~20 rows a face at 512^2) and the wider records cost more in _bin_setup
    # and here than the selection saves, at every bench size.
    # Tried and dropped (branch bin5): the corner tiles of the grown box whose pixel-centre rectangle lies beyond
    # the reach (+ slack) of the face's own box left out (per-face trims of the first/last two tile rows, at most
    # 2 tiles a row end, packed in pk's word 3 and taken off the row totals): exact (same outputs, gpubin True),
    # 4.5 / 7 / 9 % fewer entries at 51k faces and 128^2 / 256^2 / 512^2, but only 1-3 % fewer grown-box bits;
    # _soft_fwd -2 % at 256^2 and 512^2, nothing at 128^2, while the trims cost _bin_setup_cpu +1.3 ms (+0.8 ms
    # for first/last row and one tile only) and _bin_lists +0.3 ms: the whole soft fwd+bwd got slower everywhere.
    M = (1 << _RADIX) - 1
    ti.loop_config(serialize=True)
    for b in range(B):
        rb, kb, hb = b * (ty_n + nb + 4), b * 2 * F, b * (_NPASS << _RADIX)
        # the tile rows' entry differences summed over the set-up chunks; the binned faces' keys and ids packed
        for r in range(ty_n + 1):
            d = 0
            for ch in range(nch):
                d += cs[(b * nch + ch) * cw + r]
            rows[rb + r] = d
        kmin, kmax = ~ti.cast(0, ti.u64), ti.cast(0, ti.u64)
        n = 0
        for f in range(F):
            if ids[kb + f] >= 0:
                k = keys[kb + f]
                keys[kb + n], ids[kb + n] = k, f
                n += 1
                kmin, kmax = ti.min(kmin, ti.cast(k, ti.u64)), ti.max(kmax, ti.cast(k, ti.u64))
        # radix sort: as many digits of (key - kmin) as its largest value needs
        npass = 0
        sp = kmax - kmin if n > 0 else ti.cast(0, ti.u64)
        while sp != 0:
            npass += 1
            sp = sp >> _RADIX
        for d in range(npass << _RADIX):
            hist[hb + d] = 0
        for i in range(n):
            k = ti.cast(keys[kb + i], ti.u64) - kmin
            for p in range(npass):
                h = hb + (p << _RADIX) + ti.cast((k >> (p * _RADIX)) & M, ti.i32)
                hist[h] = hist[h] + 1
        for p in range(npass):
            run = 0
            for d in range(1 << _RADIX):
                c = hist[hb + (p << _RADIX) + d]
                hist[hb + (p << _RADIX) + d] = run
                run += c
        for p in range(npass):
            src, dst = kb + (p % 2) * F, kb + (1 - p % 2) * F
            for i in range(n):
                k = keys[src + i]
                h = hb + (p << _RADIX) + ti.cast(((ti.cast(k, ti.u64) - kmin) >> (p * _RADIX)) & M, ti.i32)
                j = hist[h]
                hist[h] = j + 1
                keys[dst + j], ids[dst + j] = k, ids[src + i]
        # each tile row's entries start (prefix sums of the per-row differences above), then the bands: band k
        # starts at the first row whose entries start is at least k / nb of the batch's entries
        e0 = start[2 * b]
        e, ne = e0, 0
        for r in range(ty_n):
            ne += rows[rb + r]
            rows[rb + r] = e
            e += ne
        rows[rb + ty_n] = e
        tot = ti.cast(e - e0, ti.i64)
        bb = rb + ty_n + 1
        rows[bb] = 0
        k = 1
        for r in range(ty_n):
            while k < nb and ti.cast(rows[rb + r] - e0, ti.i64) * nb >= k * tot:
                rows[bb + k] = r
                k += 1
        while k <= nb:
            rows[bb + k] = ty_n
            k += 1
        rows[bb + nb + 1], rows[bb + nb + 2] = n, kb + (npass % 2) * F
    for i in range(F):
        for b in range(B):
            rb = b * (ty_n + nb + 4) + ty_n + nb + 2
            if i < rows[rb]:
                f = ids[rows[rb + 1] + i]
                q, s = (b * F + f) * (_NPK // 2), (b * F + i) * (_NPK // 2)
                w0, w1, w2, w3 = pk[q], pk[q + 1], pk[q + 2], pk[q + 3]
                srt2[s], srt2[s + 1], srt2[s + 2], srt2[s + 3] = w0, w1, w2, w3 | (ti.cast(f, ti.i64) << 32)
                yy = ti.cast(w0 >> 32, ti.i32)
                sty[b * F + i] = (yy & 0xFFFF) // TILE | ((yy >> 16) & 0xFFFF) // TILE << 16
    for it in range(B * nb * _TASK):
        if it % _TASK == 0:
            task = it // _TASK
            b, band = task // nb, task % nb
            rb = b * (ty_n + nb + 4)
            bb = rb + ty_n + 1
            ra, rz = rows[bb + band], rows[bb + band + 1]
            n, fin = rows[bb + nb + 1], rows[bb + nb + 2]
            if ra < rz:
                # the band's tiles' counts from differences over the columns, then their offsets
                for t in range((b * ty_n + ra) * tx_n, (b * ty_n + rz) * tx_n):
                    cursor[t] = 0
                h0, nh = task * F, 0
                for i in range(n):
                    yy = sty[b * F + i]
                    t0, t1 = ti.max(yy & 0xFFFF, ra), ti.min(yy >> 16, rz - 1)
                    if t0 <= t1:
                        hl[h0 + nh] = i
                        nh += 1
                        x = srt[(b * F + i) * _NPK]
                        c0, c1 = (x & 0xFFFF) // TILE, ((x >> 16) & 0xFFFF) // TILE + 1
                        for ty in range(t0, t1 + 1):
                            cb = (b * ty_n + ty) * tx_n
                            cursor[cb + c0] = cursor[cb + c0] + 1
                            if c1 < tx_n:
                                cursor[cb + c1] = cursor[cb + c1] - 1
                for ty in range(ra, rz):
                    cb, e = (b * ty_n + ty) * tx_n, rows[rb + ty]
                    run = 0
                    for tx in range(tx_n):
                        run += cursor[cb + tx]
                        counts[cb + tx], offsets[cb + tx], cursor[cb + tx] = run, e, e
                        e += run
                for j in range(nh):
                    q = (b * F + hl[h0 + j]) * _NPK
                    xx, yy, uu, vv = srt[q], srt[q + 1], srt[q + 2], srt[q + 3]
                    y0, y1 = yy & 0xFFFF, (yy >> 16) & 0xFFFF
                    t0, t1 = ti.max(y0 // TILE, ra), ti.min(y1 // TILE, rz - 1)
                    if t0 <= t1:
                        f = srt[q + _NPK - 1]
                        lo, hi, big = srt[q + 4], srt[q + 5], srt[q + 6]
                        v0, v1 = vv & 0xFFFF, (vv >> 16) & 0xFFFF
                        x0, x1, u0, u1 = xx & 0xFFFF, (xx >> 16) & 0xFFFF, uu & 0xFFFF, (uu >> 16) & 0xFFFF
                        ax, ay, g0, g1, g2, g3 = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
                        if big == 1:
                            r = (b * F + f) * _NREC
                            ax, ay = fd[r + _VXY], fd[r + _VXY + 1]
                            g0, g1, g2, g3 = fd[r + _WGR], fd[r + _WGR + 1], fd[r + _WGR + 2], fd[r + _WGR + 3]
                        bm = ti.cast(ti.cast(lo, ti.u32), ti.u64) | (ti.cast(ti.cast(hi, ti.u32), ti.u64) << 32)
                        tu = u0 // TILE
                        # the grown box's columns in its first and last tile column, in every pixel row of a tile
                        ca, cz = x0 // TILE, x1 // TILE
                        cf = (((1 << TILE) - 1) ^ ((1 << (x0 - ca * TILE)) - 1)) * _REP
                        cl = ((1 << (x1 - cz * TILE + 1)) - 1) * _REP
                        for ty in range(t0, t1 + 1):
                            p0, p1 = ty * TILE, ty * TILE + TILE - 1
                            rlo, rhi = ti.max(y0, p0) - p0, ti.min(y1, p1) - p0
                            # the tile row's pixel rows of the grown box as a tile mask; own-box pixel rows r0..r1 in
                            # it (if any)
                            w = ((1 << (TILE * (rhi + 1))) - 1) ^ ((1 << (TILE * rlo)) - 1)
                            o0, o1 = ti.max(v0, p0), ti.min(v1, p1)
                            r0, r1 = o0 - p0, o1 - p0
                            own = o0 <= o1
                            cb = (b * ty_n + ty) * tx_n
                            for tx in range(ca, cz + 1):
                                m = w & ti.select(tx == ca, cf, 0xFFFF) & ti.select(tx == cz, cl, 0xFFFF)
                                t = cb + tx
                                slot = cursor[t]
                                cursor[t] = slot + 1
                                bins[slot] = ti.cast(f, ti.i64) | (ti.cast(m, ti.i64) << 32)
                            # the pixels the face may hold (mask bits _IN_SHIFT..) added to the entries just written
                            # for the tiles its own box meets (at most 3 with a set-up bitmap; the tile loop above
                            # stays free of them: measured ~30% cheaper at 512^2): each such entry is its tile's last
                            if own:
                                ta, tz = ti.max(tu, x0 // TILE), ti.min(u1 // TILE, x1 // TILE)
                                rl = ti.cast(0, ti.u64)
                                if big == 0:
                                    rl = _bitmap_lanes(bm, p0 - v0)
                                for tx in range(ta, tz + 1):
                                    m = 0
                                    if big == 0:
                                        m = _lane_slice(rl, tx * TILE - u0)
                                    else:
                                        # a large own box (rare on fine meshes): the tile's own-box rows, 4 pixel
                                        # centres at once
                                        clo, chi = ti.max(u0 - tx * TILE, 0), ti.min(u1 - tx * TILE, TILE - 1)
                                        cols = ((1 << (chi + 1)) - 1) ^ ((1 << clo) - 1)
                                        for pr in range(r0, r1 + 1):
                                            bits = 0
                                            for c in ti.static(range(TILE)):
                                                w0, w1, w2 = _bary_at(ax, ay, g0, g1, g2, g3, tx * TILE + c + 0.5,
                                                                      ty * TILE + pr + 0.5)
                                                inside = (w0 >= -_IN_EPS) & (w1 >= -_IN_EPS) & (w2 >= -_IN_EPS)
                                                bits |= ti.select(inside, 1 << c, 0)
                                            m |= (bits & cols) << (pr * TILE + _IN_SHIFT)
                                    slot = cursor[cb + tx] - 1
                                    bins[slot] = bins[slot] | (ti.cast(m, ti.i64) << 32)


@lean
@ti.kernel
def _take_rows(src: ti.types.ndarray(), order: ti.types.ndarray(), dst: ti.types.ndarray()):
    # dst[b, i] = src[b, order[b, i]] (rows of ints)
    for b, i in ti.ndrange(src.shape[0], src.shape[1]):
        f = order[b, i]
        for j in range(src.shape[2]):
            dst[b, i, j] = src[b, f, j]


@lean
@ti.kernel
def _bin_entries(fd: ti.types.ndarray(), spans: ti.types.ndarray(), order: ti.types.ndarray(),
                 start: ti.types.ndarray(),
                 keys: ti.types.ndarray(), ents: ti.types.ndarray(), ty_n: int, tx_n: int):
    # GPU: one work item per face writes its (face, mask) entries at its own offset ``start`` with the sort key
    # (batch, tile, depth rank); sorting the keys (``_bin_sorted``) gives _bin_lists' lists
    F = spans.shape[1]
    for b, i in ti.ndrange(spans.shape[0], F):
        x0, x1, y0, y1 = spans[b, i, 0], spans[b, i, 1], spans[b, i, 2], spans[b, i, 3]
        if x0 <= x1 and y0 <= y1:
            j = start[b, i]
            for ty in range(y0 // TILE, y1 // TILE + 1):
                for tx in range(x0 // TILE, x1 // TILE + 1):
                    keys[j] = ((ti.cast(b, ti.i64) * ty_n + ty) * tx_n + tx) * F + i
                    ents[j, 0] = order[b, i]
                    ents[j, 1] = _tile_mask(x0, x1, y0, y1, ty, tx) | _inside_bits(fd, spans, b, order[b, i], i, ty, tx)
                    j += 1


def _bin_sorted(fd: torch.Tensor, spans: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor,
                counts: torch.Tensor, bins: torch.Tensor, total: int):
    """The tile lists of ``_bin_lists`` built in parallel (GPU): entries per face, then one sort by (batch, tile,
    depth rank). ``spans`` (B, F, 10) and ``order`` (B, F) in depth order; fills ``offsets``, ``counts`` (B, tiles_y,
    tiles_x) and ``bins`` (N, 2) (``total`` entries)."""
    flat = spans[..., 8].reshape(-1).long()
    start = (torch.cumsum(flat, 0) - flat).reshape(spans.shape[:2]).to(torch.int32).contiguous()
    keys = torch.empty(total, dtype=torch.int64, device=spans.device)
    ents = torch.empty(total, 2, dtype=torch.int32, device=spans.device)
    if total:
        _bin_entries(fd, spans, order, start, keys, ents, counts.shape[1], counts.shape[2])
    keys, perm = torch.sort(keys)
    n = torch.bincount(keys // spans.shape[1], minlength=counts.numel())
    counts.copy_(n.reshape(counts.shape))
    offsets.copy_((torch.cumsum(n, 0) - n).reshape(counts.shape))
    bins[:total] = ents.index_select(0, perm)


@ti.func
def _before(z, f, z2, f2):
    # strict order of fragments by depth, ties broken by face id (deterministic lists)
    return z < z2 or (z == z2 and f < f2)


@ti.func
def _kbefore(c, z, f, c2, z2, f2):
    # keep-list priority: class (0 the face contains the pixel, 1 blur-only, 2 empty slot), then (depth, face id)
    return c < c2 or (c == c2 and _before(z, f, z2, f2))


@ti.func
def _seg_at(ux, uy, vx, vy, il, x, y):
    # squared distance from (x, y) to the segment from (ux, uy) to (vx, vy) (il = 1 / its squared length)
    ex, ey = vx - ux, vy - uy
    t = ti.min(ti.max(((x - ux) * ex + (y - uy) * ey) * il, 0.0), 1.0)
    qx, qy = ux + t * ex - x, uy + t * ey - y
    return qx * qx + qy * qy


@ti.func
def _seg_d2(fd: ti.template(), b, f, u: ti.template(), v: ti.template(), il: ti.template(), x, y):
    # squared distance from (x, y) to the face's edge from vertex u to vertex v (1 / |edge|^2 at il)
    return _seg_at(fd[b, f, _VXY + 2 * u], fd[b, f, _VXY + 2 * u + 1], fd[b, f, _VXY + 2 * v],
                   fd[b, f, _VXY + 2 * v + 1], fd[b, f, _IL + il], x, y)


@ti.func
def _bary(fd: ti.template(), b, f, x, y):
    # screen-space barycentrics of (x, y) from the face's precomputed gradients (relative to vertex a)
    return _bary_at(fd[b, f, _VXY], fd[b, f, _VXY + 1], fd[b, f, _WGR], fd[b, f, _WGR + 1], fd[b, f, _WGR + 2],
                    fd[b, f, _WGR + 3], x, y)


@ti.func
def _clamp_bary(w0, w1, w2):
    # a pixel outside the face takes its barycentrics clamped to the triangle (for depth ordering and attributes)
    w0, w1, w2 = ti.max(w0, 0.0), ti.max(w1, 0.0), ti.max(w2, 0.0)
    ws = w0 + w1 + w2
    return w0 / ws, w1 / ws, w2 / ws


@ti.func
def _persp_z(fd: ti.template(), b, f, w0, w1, w2):
    # perspective-correct depth: 1/z is affine in screen space
    return 1.0 / (w0 * fd[b, f, _IZ] + w1 * fd[b, f, _IZ + 1] + w2 * fd[b, f, _IZ + 2])


@ti.func
def _signed_d2e(fd: ti.template(), b, f, w0, w1, w2, x, y, ndc2):
    # signed squared NDC distance from the pixel to the face from its unclamped barycentrics: inside (< 0), minus
    # the squared distance to the nearest edge line (the foot on it); outside, the squared distance to the
    # nearest edge among those whose line the pixel is outside of (the nearest boundary point lies on one), and
    # that edge e (from vertex e to vertex e + 1 mod 3, the first on ties; -1 inside)
    d2 = -ti.min(w0 * w0 * fd[b, f, _H2], w1 * w1 * fd[b, f, _H2 + 1], w2 * w2 * fd[b, f, _H2 + 2]) * ndc2
    e = -1
    if not (w0 >= 0 and w1 >= 0 and w2 >= 0):
        e2 = ti.select(w2 <= 0, _seg_d2(fd, b, f, 0, 1, 0, x, y), 1e30)
        e = 0
        e1 = ti.select(w0 <= 0, _seg_d2(fd, b, f, 1, 2, 1, x, y), 1e30)
        if e1 < e2:
            e2, e = e1, 1
        e1 = ti.select(w1 <= 0, _seg_d2(fd, b, f, 2, 0, 2, x, y), 1e30)
        if e1 < e2:
            e2, e = e1, 2
        d2 = e2 * ndc2
    return d2, e


@ti.func
def _persp_bary(fd: ti.template(), b, f, x, y):
    # a kept face's perspective-correct barycentrics at (x, y) (clamped to the triangle) and its depth there, by
    # the same steps as the depth the K-nearest pass orders by
    w0, w1, w2 = _clamp_bary(*_bary(fd, b, f, x, y))
    q0, q1, q2 = w0 * fd[b, f, _IZ], w1 * fd[b, f, _IZ + 1], w2 * fd[b, f, _IZ + 2]
    z = 1.0 / (q0 + q1 + q2)
    return q0 * z, q1 * z, q2 * z, z


@ti.func
def _rec(fd: ti.template(), b, f):
    # the part of face f's record the candidate test reads (fields _VXY.. _ZMIN, indexed from _VXY), in locals: the
    # per-tile walk loads it once per entry for all the pixels of its mask
    return ti.Vector([fd[b, f, j] for j in ti.static(range(_VXY, _NREC))])


@ti.func
def _lo(a, b):
    # min(a, b) for numbers (no NaN rule: one compare and select, x86's minps)
    return ti.select(a < b, a, b)


@ti.func
def _pos(a):
    # max(a, 0) for numbers (no NaN rule; -0 stays -0, which no sum or product below tells from 0)
    return ti.select(a < 0, 0.0, a)


@ti.func
def _seg_d2r(r: ti.template(), u: ti.template(), v: ti.template(), il: ti.template(), x, y):
    # _seg_d2 from a record in locals (_rec), with _seg_at's clamp of t to [0, 1] as selects (the same value)
    ux, uy, vx, vy = r[2 * u], r[2 * u + 1], r[2 * v], r[2 * v + 1]
    ex, ey = vx - ux, vy - uy
    t = ((x - ux) * ex + (y - uy) * ey) * r[_IL - _VXY + il]
    t = ti.select(t > 1.0, 1.0, _pos(t))
    qx, qy = ux + t * ex - x, uy + t * ey - y
    return qx * qx + qy * qy


@ti.func
def _test(r: ti.template(), f, x, y, walk, r2, max_d2, ndc2, c9, z9, f9, zc, fc):
    # the candidate test of face f (record r, _rec) for the pixel at (x, y) whose keep-list ends with the entry
    # (class c9, depth z9, face f9) (sorted by (class, z, id)), met in walk ``walk`` (_select), with the opaque cut
    # (zc, fc). Branch-free (every value is computed, the decisions are selects) so that _select_tile runs it for
    # the 16 pixels of a tile at once, in vector registers. Returns (stop, enter, class, depth, signed squared
    # distance): stop = 1 when the walk ends here for this pixel (the tile list is sorted by nearest vertex: this
    # face and every later one of the walk lie behind the list's last entry or the opaque cut, none can enter);
    # otherwise enter = 1 when the face enters the list (_insert).
    # The decisions: for a pixel outside the face, a full list of covering faces, the edge lines' distance (a
    # lower bound: beyond the blur reach), a full list of blur-only faces all nearer than the nearest vertex; then
    # the (class, depth, id) order against the list's last entry and the cut, then the distance to the edges the
    # pixel is outside of. The arithmetic is _bary_at's, _clamp_bary's, _persp_z's, _signed_d2e's and _seg_at's,
    # step for step (clamps and minima as compare-and-select: _lo, _pos; the same values).
    zmin = r[_ZMIN - _VXY]
    stop = (((c9 == 0) | ((walk == 1) & (c9 == 1))) & (zmin > z9)) | (zmin > zc)
    dx, dy = x - r[0], y - r[1]
    w0 = 1.0 + r[_WGR - _VXY] * dx + r[_WGR - _VXY + 1] * dy
    w1 = r[_WGR - _VXY + 2] * dx + r[_WGR - _VXY + 3] * dy
    w2 = 1.0 - w0 - w1
    h0, h1, h2 = r[_H2 - _VXY], r[_H2 - _VXY + 1], r[_H2 - _VXY + 2]
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    a0, a1, a2 = w0 * w0 * h0, w1 * w1 * h1, w2 * w2 * h2
    # beyond the blur reach of an edge's line (a lower bound on the distance to the triangle)
    far = ((w0 < 0) & (a0 > r2)) | ((w1 < 0) & (a1 > r2)) | ((w2 < 0) & (a2 > r2))
    # hard mode keeps no blur-only face, nor does a list already full of faces containing the pixel,
    # nor a full list of blur-only faces all nearer than this face's nearest vertex
    cand = inside | ((max_d2 >= 0) & (far == 0) & ((c9 == 2) | ((c9 == 1) & (zmin <= z9))))
    cc = 1 - ti.cast(inside, ti.i32)
    c0, c1, c2 = _pos(w0), _pos(w1), _pos(w2)
    ws = c0 + c1 + c2
    q0, q1, q2 = c0 / ws, c1 / ws, c2 / ws
    z = 1.0 / (q0 * r[_IZ - _VXY] + q1 * r[_IZ - _VXY + 1] + q2 * r[_IZ - _VXY + 2])
    zb = (z < z9) | ((z == z9) & (f < f9))
    ok = (cc < c9) | ((cc == c9) & zb)
    ok &= inside | (z < zc) | ((z == zc) & (f < fc))
    # the nearest edge among those whose line the pixel is outside of
    e2 = _lo(_lo(ti.select(w2 <= 0, _seg_d2r(r, 0, 1, 0, x, y), 1e30),
                 ti.select(w0 <= 0, _seg_d2r(r, 1, 2, 1, x, y), 1e30)),
             ti.select(w1 <= 0, _seg_d2r(r, 2, 0, 2, x, y), 1e30))
    d2 = ti.select(inside, -_lo(_lo(a0, a1), a2) * ndc2, e2 * ndc2)
    enter = (stop == 0) & cand & ok & (inside | (d2 < max_d2))
    return stop, enter, cc, z, d2


@ti.func
def _insert(lc: ti.template(), lf: ti.template(), lz: ti.template(), ld: ti.template(), o, k, cc, f, z, d2):
    # insertion into the sorted list lc, lf, lz, ld[o:o + K] from slot k (its last slot, or its first empty one:
    # the empty slots behind it are all alike): the entry there falls off and the ones the candidate beats move
    # back one slot (candidates come roughly in depth order, so they seldom travel far: cheaper than a full
    # unrolled pass)
    while k > o and _kbefore(cc, z, f, lc[k - 1], lz[k - 1], lf[k - 1]):
        lc[k], lf[k], lz[k], ld[k] = lc[k - 1], lf[k - 1], lz[k - 1], ld[k - 1]
        k -= 1
    lc[k], lf[k], lz[k], ld[k] = cc, f, z, d2


@ti.func
def _consider(r: ti.template(), f, x, y, walk, r2, max_d2, ndc2, K: ti.template(), lc: ti.template(),
              lf: ti.template(), lz: ti.template(), ld: ti.template(), o, zc, fc):
    # candidate face f for the pixel at (x, y) whose keep-list is lc, lf, lz, ld[o:o + K] (class, face, depth,
    # signed squared distance; sorted by (class, z, id)): _test, then _insert; returns 1 when the walk ends here
    # for this pixel
    last = o + K - 1
    stop, enter, cc, z, d2 = _test(r, f, x, y, walk, r2, max_d2, ndc2, lc[last], lz[last], lf[last], zc, fc)
    if enter:
        _insert(lc, lf, lz, ld, o, last, cc, f, z, d2)
    return stop


@ti.func
def _cut(opac: ti.template(), b, K: ti.template(), lc: ti.template(), lf: ti.template(), lz: ti.template(), o):
    # the opaque cut of a list after the first walk: its nearest face holding the pixel with opacity 1 (the
    # class-0 entries come first, by (z, id)), or (1e30, 2^30) when there is none
    zc, fc = 1e30, 1 << 30
    k = o
    while k < o + K and lc[k] == 0:
        if opac[b, lf[k]] == 1.0:
            zc, fc = lz[k], lf[k]
            break
        k += 1
    return zc, fc


@ti.func
def _sort_list(lf: ti.template(), lz: ti.template(), ld: ti.template(), o, n):
    # compositing order: by (z, id), empty slots last. The n entries of the list come first (the empty slots are
    # its tail), so this sorts those (insertion sort: they are two sorted runs, the faces holding the pixel and the
    # blur-only ones). The classes (lc) stay where they were: nothing reads them after the selection
    for i in range(o + 1, o + n):
        f0, z0, d0 = lf[i], lz[i], ld[i]
        k = i
        while k > o and _before(z0, f0, lz[k - 1], lf[k - 1]):
            lf[k], lz[k], ld[k] = lf[k - 1], lz[k - 1], ld[k - 1]
            k -= 1
        lf[k], lz[k], ld[k] = f0, z0, d0


@ti.func
def _select(fd: ti.template(), offsets: ti.template(), counts: ti.template(), bins: ti.template(), b, py, px,
            max_d2, ndc2, K: ti.template(), opac: ti.template(), cut: ti.template()):
    # One pixel's K-nearest list from its tile's list (the per-pixel form, GPU; _select_tile is the same
    # selection for a whole tile): (face ids, depths, signed squared distances), sorted by (z, id) with empty slots
    # (id -1, depth -1) last.
    # Keep-list policy: faces containing the pixel (full coverage) outrank blur-only candidates, and within each
    # class the nearest by (z, face id) win. On dense meshes dozens of sub-pixel faces lie within the blur radius;
    # plain K-nearest-by-depth then fills all K slots with up-slope neighbours of coverage ~1e-3 and drops the face
    # the pixel is actually inside (alpha -> 0 inside the silhouette).
    # The K best by (class, z, id) live in a local list (K is compile-time); they are re-sorted by (z, id) for
    # compositing once, when the pixel is done. Per candidate: the entry's mask bit (grown box), then _consider.
    r2 = max_d2 / ndc2
    lc = ti.Vector([2 for _ in ti.static(range(K))], dt=ti.i32)
    lf = ti.Vector([-1 for _ in ti.static(range(K))], dt=ti.i32)
    lz = ti.Vector([-1.0 for _ in ti.static(range(K))])
    ld = ti.Vector([0.0 for _ in ti.static(range(K))])
    buf = ti.Vector([0 for _ in ti.static(range(_CHUNK))], dt=ti.i32)
    ty, tx = py // TILE, px // TILE
    bit = (py % TILE) * TILE + px % TILE
    x, y = px + 0.5, py + 0.5
    # two walks of the tile's list: first the faces whose centre test may pass (the entry's high mask bits:
    # every face that can hold the pixel), then the others within the grown box, which can only be blur-only.
    # The final list is the K best of all candidates whatever the order (each test only drops a candidate that
    # cannot enter), but in this order the second walk can stop at the first face whose nearest vertex lies
    # behind a full list: every later one does too, and none of them can outrank a kept face.
    # ``cut`` (compositing, opacities ``opac`` (B, F)): after the first walk every face holding the pixel is known;
    # the nearest kept one with opacity 1, (zc, fc), ends the compositing (its alpha is 1: T = 0 behind it). The
    # blur-only faces the full list composites are its nearest K - c0 blur-only faces, and those composited are
    # the ones before (zc, fc): exactly the nearest (up to K - c0) blur-only faces before (zc, fc). So the second
    # walk keeps only faces before the cut and stops at the first nearest vertex behind it. The list then differs
    # from the full one only behind the cut (layers that reach neither the outputs nor the gradients).
    zc, fc = 1e30, 1 << 30
    for walk in range(2 if max_d2 >= 0 else 1):
        s0 = offsets[b, ty, tx]
        end = s0 + counts[b, ty, tx]
        if walk == 1 and lc[K - 1] == 0:
            s0 = end
        if ti.static(cut):
            if walk == 1:
                zc, fc = _cut(opac, b, K, lc, lf, lz, 0)
        while s0 < end:
            # branch-free compaction of the next chunk of the tile's list to the faces whose grown box holds the
            # pixel (the entry's mask bit; a data-dependent branch per entry costs more: ~1 in 3 entries pass),
            # in the first walk those that may hold it, in the second the others
            n = 0
            for j in range(ti.min(_CHUNK, end - s0)):
                buf[n] = bins[s0 + j, 0]
                m = bins[s0 + j, 1]
                n += ((m >> (bit + _IN_SHIFT)) if walk == 0 else ((m >> bit) & ~(m >> (bit + _IN_SHIFT)))) & 1
            s0 += _CHUNK
            for j in range(n):
                rec = _rec(fd, b, buf[j])
                if _consider(rec, buf[j], x, y, walk, r2, max_d2, ndc2, K, lc, lf, lz, ld, 0, zc, fc):
                    s0 = end
                    break
    n = 0
    for k in range(K):
        n += ti.cast(lc[k] != 2, ti.i32)
    _sort_list(lf, lz, ld, 0, n)
    return lf, lz, ld


def _sort_net(K: int) -> list:
    """Comparators (a, b), a < b, of Batcher's odd-even merge sort of K items (the network for the next power of 2
    with the comparators that touch an item >= K left out: those items act as +inf and never move)."""
    m = 1
    while m < K:
        m *= 2
    pairs = []
    p = 1
    while p < m:
        k = p
        while k >= 1:
            for j in range(k % p, m - k, 2 * k):
                for i in range(min(k, m - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return [(a, b) for a, b in pairs if b < K]


@ti.func
def _slot_key(c, z, f):
    # a full keep-list entry (class 0 or 1, f32 depth z > 0, face id f >= 0) as one 64-bit integer with the order
    # of (class, z, id) (_kbefore): the class at bit 62, the depth's bits (for z > 0 they order as z) at 31..61,
    # the id below
    return (ti.cast(c, ti.i64) << 62) | (ti.cast(ti.bit_cast(z, ti.i32), ti.i64) << 31) | ti.cast(f, ti.i64)


@ti.func
def _worst(lc: ti.template(), lf: ti.template(), lz: ti.template(), p, n: ti.template(), K: ti.template()):
    # the last entry by (class, z, id) of pixel p's full list (slots p, p + n, ...: _select_tile) and its slot, by
    # selects (_select_tile runs it for 8 pixels at once)
    cw, zw, fw, s = lc[p], lz[p], lf[p], p
    if ti.static(backend.settings().precision == "f32"):
        # f32: the slots' keys (_slot_key) are independent, so the maximum is a short chain of integer maxima (not
        # K - 1 dependent three-field comparisons, which were ~13 % of the selection's time at 51k faces / 512^2),
        # then the slot holding it. (A tournament of three-field comparisons gained ~1 % for +1.3 s cold compile.)
        km = _slot_key(cw, zw, fw)
        for k in range(1, K):
            t = k * n + p
            km = ti.max(km, _slot_key(lc[t], lz[t], lf[t]))
        for k in range(1, K):
            t = k * n + p
            s = ti.select(_slot_key(lc[t], lz[t], lf[t]) == km, t, s)
        cw, fw = ti.cast(km >> 62, ti.i32), ti.cast(km & 0x7FFFFFFF, ti.i32)
        zw = ti.bit_cast(ti.cast((km >> 31) & 0x7FFFFFFF, ti.i32), ti.f32)
    else:
        for k in range(1, K):
            t = k * n + p
            c, z, f = lc[t], lz[t], lf[t]
            later = _kbefore(cw, zw, fw, c, z, f)
            cw, zw = ti.select(later, c, cw), ti.select(later, z, zw)
            fw, s = ti.select(later, f, fw), ti.select(later, t, s)
    return cw, zw, fw, s


@ti.func
def _test_lane(rec: ti.template(), f, tx, ty, p, walk, r2, max_d2, ndc2, c9: ti.template(), z9: ti.template(),
               f9: ti.template(), zc: ti.template(), fc: ti.template(), sc: ti.template(), sz: ti.template(),
               sd: ti.template()):
    # _test of face f (record rec) for pixel p of tile (ty, tx) against its list end and cut; the class, depth and
    # distance go to sc, sz, sd[p] (_select_tile runs it in vector lanes)
    x, y = tx * TILE + p % TILE + 0.5, ty * TILE + p // TILE + 0.5
    stop, enter, cc, z, d2 = _test(rec, f, x, y, walk, r2, max_d2, ndc2, c9[p], z9[p], f9[p], zc[p], fc[p])
    sc[p], sz[p], sd[p] = cc, z, d2
    return stop, enter


@ti.func
def _select_tile(fd: ti.template(), offsets: ti.template(), counts: ti.template(), bins: ti.template(), b, ty, tx,
                 max_d2, ndc2, K: ti.template(), opac: ti.template(), cut: ti.template()):
    # _select for the TILE x TILE pixels of tile (ty, tx) at once (CPU): the tile's list is walked once per walk
    # (not once per pixel) and each entry is tested for the pixels of its mask that are still walking; returns
    # lf, lz, ld with slot k of pixel p = row * TILE + column at k TILE^2 + p (slot-first: _composite and _knn_out
    # take the pixel's offset p and the stride TILE^2; _select's list is the same with offset 0 and stride 1).
    # Each pixel meets the same candidates in the same order and passes them through the same test (_test) as in
    # _select, so the lists are the same. The test runs for the tile's pixels in branch-free loops (_test_lane:
    # LLVM makes them 8-wide vector code), over all 16 pixels when the entry's mask has pixels in both half tiles,
    # else over the half that has (the record's values are broadcast once per loop), against each
    # pixel's list end (c9, z9, f9: kept here) and cut; only the pixels of the entry's mask that are still walking
    # then stop or take the face.
    # The keep-lists are not kept sorted while they fill: slot k of pixel p is lc, lf, lz, ld[k n + p] (n pixels a
    # tile), a face that enters takes the first empty slot (n9 entries so far) or, once the list is full, the slot
    # of its last entry by (class, z, id) (w9), and only then is the list end looked up again (_worst): the list
    # holds the same K best faces as a sorted insertion would, and its end (the test's input) is the same. The
    # opaque cut is the minimum over the class-0 slots. At the end every list is sorted by (z, id) by Batcher's
    # network (_sort_net: 19 comparators for K = 8), each comparator run for the n pixels at once in vector lanes
    # (no data-dependent branch; empty slots carry depth 1e30 so they stay last, then -1 as in _select). The lists
    # are handed on in that slot-first layout: a copy into per-pixel lists cost ~1.3 s of _soft_fwd's cold compile.
    # Measured against the sorted insertion it replaces (one thread, 51k faces): _soft_fwd ~0.9x at 256^2 and
    # 512^2 (the insertion's data-dependent shift loop and the final insertion sort were ~1/3 of the selection).
    # Tried: the network on values held in registers (a static comparator list inside the pixel loop, written
    # straight to the per-pixel outputs): ~2 % faster at 512^2 but ~2 s more cold compile of _soft_fwd; the
    # comparators unrolled statically (constant offsets, no runtime alias checks): ~2 % faster, +3.2 s.
    r2 = max_d2 / ndc2
    n = ti.static(TILE * TILE)
    lc = ti.Vector([2 for _ in ti.static(range(TILE * TILE * K))], dt=ti.i32)
    lf = ti.Vector([-1 for _ in ti.static(range(TILE * TILE * K))], dt=ti.i32)
    lz = ti.Vector([1e30 for _ in ti.static(range(TILE * TILE * K))])
    ld = ti.Vector([0.0 for _ in ti.static(range(TILE * TILE * K))])
    half = ti.static(TILE * TILE // 2)
    zc = ti.Vector([1e30 for _ in ti.static(range(n))])
    fc = ti.Vector([1 << 30 for _ in ti.static(range(n))], dt=ti.i32)
    c9 = ti.Vector([2 for _ in ti.static(range(n))], dt=ti.i32)
    f9 = ti.Vector([-1 for _ in ti.static(range(n))], dt=ti.i32)
    z9 = ti.Vector([-1.0 for _ in ti.static(range(n))])
    n9 = ti.Vector([0 for _ in ti.static(range(n))], dt=ti.i32)       # entries in each list (slots 0 .. n9 - 1)
    w9 = ti.Vector([0 for _ in ti.static(range(n))], dt=ti.i32)       # a full list's slot of its last entry
    sc = ti.Vector([0 for _ in ti.static(range(n))], dt=ti.i32)
    sz = ti.Vector([0.0 for _ in ti.static(range(n))])
    sd = ti.Vector([0.0 for _ in ti.static(range(n))])
    buf = ti.Vector([0 for _ in ti.static(range(_CHUNK))], dt=ti.i32)
    s0 = offsets[b, ty, tx]
    end = s0 + counts[b, ty, tx]
    for walk in range(2 if max_d2 >= 0 else 1):
        act = (1 << n) - 1             # the pixels still walking
        if walk == 1:
            act = 0
            for p in range(n):
                if c9[p] != 0:
                    act |= 1 << p
                if ti.static(cut):
                    # the nearest (z, id) class-0 entry with opacity 1
                    zq, fq = 1e30, 1 << 30
                    for k in range(n9[p]):
                        t = k * n + p
                        if lc[t] == 0 and _before(lz[t], lf[t], zq, fq):
                            if opac[b, lf[t]] == 1.0:
                                zq, fq = lz[t], lf[t]
                    zc[p], fc[p] = zq, fq
        # the first walk takes the entries with may-hold bits (~1 in 10) from a buffer, filled for _CHUNK entries
        # at a time without a data-dependent branch; the second walks the list itself (it stops early)
        j, q, nb = s0, 0, 0
        while act != 0 and (j < end or q < nb):
            e = j
            if walk == 0:
                if q == nb:
                    q, nb = 0, 0
                    for i in range(ti.min(_CHUNK, end - j)):
                        buf[nb] = j + i
                        nb += ti.cast((bins[j + i, 1] >> _IN_SHIFT) != 0, ti.i32)
                    j += _CHUNK
                e = buf[q]
                if q < nb:
                    q += 1
                else:
                    e = -1
            else:
                j += 1
            m = 0
            if e >= 0:
                m = bins[e, 1]
            mm = ((m >> _IN_SHIFT) if walk == 0 else (m & ~(m >> _IN_SHIFT))) & act
            if mm != 0:
                f = bins[e, 0]
                rec = _rec(fd, b, f)
                stops, enters, full = 0, 0, 0
                h0 = ti.select(mm & ((1 << half) - 1) != 0, 0, half)
                if h0 == 0 and (mm >> half) != 0:
                    # both halves: one 16-lane loop (the record's values are broadcast once)
                    for p in range(n):
                        stop, enter = _test_lane(rec, f, tx, ty, p, walk, r2, max_d2, ndc2, c9, z9, f9, zc, fc, sc,
                                                 sz, sd)
                        stops |= ti.select(stop, 1 << p, 0)
                        enters |= ti.select(enter, 1 << p, 0)
                else:
                    for p in range(h0, h0 + half):
                        stop, enter = _test_lane(rec, f, tx, ty, p, walk, r2, max_d2, ndc2, c9, z9, f9, zc, fc, sc,
                                                 sz, sd)
                        stops |= ti.select(stop, 1 << p, 0)
                        enters |= ti.select(enter, 1 << p, 0)
                act ^= stops & mm
                mm &= enters
                while mm != 0:
                    low = mm & -mm
                    mm ^= low
                    p = 31 - ti.math.clz(low)
                    k = n9[p]
                    t = w9[p]
                    if k < K:
                        t = k * n + p
                        n9[p] = k + 1
                    lc[t], lf[t], lz[t], ld[t] = sc[p], f, sz[p], sd[p]
                    if k >= K - 1:
                        full |= low
                # the new list end of the lists that are full now
                for h in range(2):
                    if (full >> (h * half)) & ((1 << half) - 1) != 0:
                        for p in range(h * half, h * half + half):
                            cw, zw, fw, w = _worst(lc, lf, lz, p, n, K)
                            u = (full >> p) & 1 != 0
                            c9[p], z9[p] = ti.select(u, cw, c9[p]), ti.select(u, zw, z9[p])
                            f9[p], w9[p] = ti.select(u, fw, f9[p]), ti.select(u, w, w9[p])
    # every list sorted by (z, id) by Batcher's network (_sort_net), comparator by comparator for all pixels at once
    net = ti.Vector([a * K + c for a, c in ti.static(_sort_net(K))] + [0], dt=ti.i32)
    for i in range(ti.static(len(_sort_net(K)))):
        a, c = net[i] // K * n, net[i] % K * n
        for p in range(n):
            za, zb, fa, fb = lz[a + p], lz[c + p], lf[a + p], lf[c + p]
            da, db = ld[a + p], ld[c + p]
            sw = _before(zb, fb, za, fa)
            lz[a + p], lz[c + p] = ti.select(sw, zb, za), ti.select(sw, za, zb)
            lf[a + p], lf[c + p] = ti.select(sw, fb, fa), ti.select(sw, fa, fb)
            ld[a + p], ld[c + p] = ti.select(sw, db, da), ti.select(sw, da, db)
    # empty slots (id -1) get depth -1, as in _select
    for i in range(n * K):
        lz[i] = ti.select(lf[i] < 0, -1.0, lz[i])
    return lf, lz, ld


def _spread(n_tiles: int) -> int:
    """Loop iterations per tile of the tiled kernels: at least 4096 in all, 8 of Taichi's >= 512-long CPU blocks
    (backend.CPU_SPAN), so that a small image's tiles (1024 at 128^2) are shared by the threads. Not more: an idle
    iteration of those kernels costs ~80 ns (at 512^2, 16 iterations per tile made the forward ~1.4x slower)."""
    return max(1, 8 * backend.CPU_SPAN // max(n_tiles, 1))


def _tiled() -> bool:
    """Whether the per-pixel kernels run one work item per tile (_select_tile: CPU) or per pixel (GPU)."""
    return backend.settings().resolved_arch in ("x64", "arm64")


@ti.func
def _knn_out(fd: ti.template(), p2f: ti.template(), bary: ti.template(), zbuf: ti.template(), dist: ti.template(),
             b, py, px, lf: ti.template(), lz: ti.template(), ld: ti.template(), o, s, K: ti.template()):
    # one pixel's list (slot k at lf, lz, ld[o + k s]) with the kept faces' barycentrics
    for k in range(K):
        f = lf[o + k * s]
        p2f[b, py, px, k] = f
        zbuf[b, py, px, k] = lz[o + k * s]
        dist[b, py, px, k] = ld[o + k * s]
        q0, q1, q2 = 0.0, 0.0, 0.0
        if f >= 0:
            q0, q1, q2, _z = _persp_bary(fd, b, f, px + 0.5, py + 0.5)
        bary[b, py, px, k, 0] = q0
        bary[b, py, px, k, 1] = q1
        bary[b, py, px, k, 2] = q2


@lean
@ti.kernel
def _knn(fd: ti.types.ndarray(), offsets: ti.types.ndarray(),
         counts: ti.types.ndarray(), bins: ti.types.ndarray(), p2f: ti.types.ndarray(), bary: ti.types.ndarray(),
         zbuf: ti.types.ndarray(), dist: ti.types.ndarray(), max_d2: float, ndc2: float, K: ti.template(),
         tiled: ti.template(), spread: int):
    # every pixel's list (_select, or _select_tile per tile) with the kept faces' barycentrics, recomputed for the
    # K kept faces only
    H, W = p2f.shape[1], p2f.shape[2]
    if ti.static(tiled):
        # Taichi's CPU range-for hands each thread blocks of >= 512 iterations: ``spread`` iterations per tile
        # (only the first works) keep the tiles balanced over the threads (_spread)
        ty_n, tx_n = offsets.shape[1], offsets.shape[2]
        for it in range(p2f.shape[0] * ty_n * tx_n * spread):
            if it % spread == 0:
                t = it // spread
                b, ty, tx = t // (ty_n * tx_n), t // tx_n % ty_n, t % tx_n
                lf, lz, ld = _select_tile(fd, offsets, counts, bins, b, ty, tx, max_d2, ndc2, K, fd, False)
                for p in range(TILE * TILE):
                    py, px = ty * TILE + p // TILE, tx * TILE + p % TILE
                    if py < H and px < W:
                        _knn_out(fd, p2f, bary, zbuf, dist, b, py, px, lf, lz, ld, p, TILE * TILE, K)
    else:
        for b, py, px in ti.ndrange(p2f.shape[0], H, W):
            lf, lz, ld = _select(fd, offsets, counts, bins, b, py, px, max_d2, ndc2, K, fd, False)
            _knn_out(fd, p2f, bary, zbuf, dist, b, py, px, lf, lz, ld, 0, 1, K)


def blur_radius_px(sigma: float, width: int, height: int) -> float:
    """Pixel radius beyond which a face's soft coverage is below 1e-4 of its opacity (0 for sigma = 0)."""
    if sigma <= 0:
        return 0.0
    return math.sqrt(sigma * _CUTOFF) * min(width, height) / 2.0


def _ndc2(width: int, height: int) -> float:
    return (2.0 / min(width, height)) ** 2


@torch.no_grad()
def rasterize(verts: torch.Tensor, faces: torch.Tensor, camera: Camera, faces_per_pixel: int = 1,
              sigma: float = 0.0, near: float = 1e-3, clip: bool = True) -> Fragments:
    """Find the ``faces_per_pixel`` nearest faces at each pixel centre (not differentiable).

    Args:
        verts: (V, 3) or (B, V, 3) world positions; a single mesh is shared by all B cameras.
        faces: (F, 3) integer vertex indices (any winding; no back-face culling).
        camera: B cameras (or 1 camera for B meshes).
        faces_per_pixel: K.
        sigma: soft blur (NDC^2 units). 0 keeps only faces that contain the pixel centre (hard z-buffer);
            > 0 also keeps faces whose soft coverage ``exp(-d/sigma)`` exceeds 1e-4, in the slots the faces
            containing the pixel leave free.
        near: faces with any vertex at depth <= near are skipped, unless ``clip``.
        clip: faces crossing the near plane are clipped at depth ``max(clip.CLIP_Z, 2 near)`` first
            (``engine.render.clip``); the fragments still name the original faces and their barycentrics.
    """
    backend.ensure()
    from .zbuffer import project_min_z

    # one projection serves the near-plane test and the rasterizer
    screen, zmin, _ = project_min_z(verts, camera)
    if clip:
        from .clip import CLIP_Z, clip_near
        z_clip = max(CLIP_Z, 2 * near)
        if zmin < z_clip + 1e-5 * (1.0 + abs(z_clip)):
            c = clip_near(verts, faces, camera, z_clip)
            if c is not None:
                return c.fragments(rasterize(c.verts, c.faces, camera, faces_per_pixel, sigma, near, clip=False))
    return rasterize_screen(screen, faces, camera.width, camera.height, faces_per_pixel, sigma, near)


@torch.no_grad()
def rasterize_screen(screen: torch.Tensor, faces: torch.Tensor, width: int, height: int, faces_per_pixel: int = 1,
                     sigma: float = 0.0, near: float = 1e-3) -> Fragments:
    """``rasterize`` from already projected vertices ``screen`` (B, V, 3) ``(u, v, z)`` (``project``)."""
    screen = screen.detach().contiguous()
    faces = faces.to(device=screen.device, dtype=torch.int32).contiguous()
    B, H, W, K = screen.shape[0], int(height), int(width), int(faces_per_pixel)
    dt, dev = screen.dtype, screen.device
    if K == 1 and sigma <= 0:
        # hard z-buffer: faces scatter into a key buffer, no tile lists (``zbuffer``)
        from .zbuffer import zbuffer
        return Fragments(*zbuffer(screen, faces, W, H, near))
    bins = bin_faces(screen, faces, W, H, sigma, near)
    p2f = torch.empty(B, H, W, K, dtype=torch.int32, device=dev)
    bary = torch.empty(B, H, W, K, 3, dtype=dt, device=dev)           # every slot is written by _knn
    zbuf = torch.empty(B, H, W, K, dtype=dt, device=dev)
    dist = torch.empty(B, H, W, K, dtype=dt, device=dev)
    _knn(bins.fd, bins.offsets, bins.counts, bins.bins, p2f, bary, zbuf, dist, bins.max_d2, bins.ndc2, K, _tiled(),
         _spread(bins.offsets.numel()))
    return Fragments(p2f, bary, zbuf, dist)


@dataclass
class Bins:
    """Faces set up and binned into tiles for the K-nearest selection (``bin_faces``).

    fd: (B, F, _NREC) per-face records; offsets, counts: (B, tiles_y, tiles_x) where each tile's list starts in
    ``bins`` and its length; bins: (N, 2) entries (face id, pixel mask), each tile's front to back; max_d2: the
    squared NDC reach of the blur (-1 for sigma = 0); ndc2: squared NDC units per squared pixel.
    """

    fd: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    bins: torch.Tensor
    max_d2: float
    ndc2: float


@torch.no_grad()
def bin_faces(screen: torch.Tensor, faces: torch.Tensor, W: int, H: int, sigma: float, near: float = 1e-3) -> Bins:
    """Per-face set-up and tile binning of ``rasterize_screen`` (screen (B, V, 3) contiguous, faces (F, 3) int32)."""
    B, dt, dev = screen.shape[0], screen.dtype, screen.device
    ty_n, tx_n = (H + TILE - 1) // TILE, (W + TILE - 1) // TILE
    # the blur reach in pixels gets a rounding margin so the box test never rejects a face the distance keeps
    margin = blur_radius_px(sigma, W, H) + (1e-3 if sigma > 0 else 0.0)
    max_d2 = sigma * _CUTOFF if sigma > 0 else -1.0
    F = faces.shape[0]
    assert W < 1 << 16 and H < 1 << 16, "tile lists pack pixel columns in 16 bits"
    fd = torch.empty(B, F, _NREC, dtype=dt, device=dev)
    pk = torch.empty(B * F * _NPK // 2, dtype=torch.int64, device=dev)
    counts = torch.empty(B, ty_n, tx_n, dtype=torch.int32, device=dev)
    offsets = torch.empty_like(counts)
    i32 = dict(dtype=torch.int32, device=dev)
    if backend.settings().resolved_arch in ("x64", "arm64"):
        # CPU: the set-up in chunks of faces (_bin_setup_cpu: 16 per thread) gathers each chunk's tile entries, so
        # only a (B, chunks) array is summed here (numpy, single-threaded: a torch reduction is an OpenMP region that
        # can wait ms for a descheduled thread on a busy machine); then one kernel sorts the faces by depth and
        # fills the lists in bands of tile rows (``_bin_lists``: 2 per thread, 1 on a single thread)
        th = int(ti.lang.impl.current_cfg().cpu_max_num_threads)
        nch, nb = max(1, min(F, 16 * th)), max(1, min(ty_n, 2 * th if th > 1 else 1))
        keys, ids = torch.empty(B * 2 * F, dtype=torch.int64, device=dev), torch.empty(B * 2 * F, **i32)
        cw = (ty_n + 2 + 15) // 16 * 16
        cs = torch.empty(B * nch * cw, **i32)
        _bin_setup_cpu(screen, faces, fd.view(-1), pk, keys, ids, cs, F, nch, cw, margin, near, W, H, ty_n,
                       dt == torch.float64)
        tot = cs.numpy().reshape(B, nch, -1)[:, :, ty_n + 1].sum(1)
        n = int(tot.sum())
        start = torch.from_numpy(np.stack([np.cumsum(tot) - tot, np.zeros_like(tot)], 1).astype(np.int32))
        bins = torch.empty(max(n, 1), 2, **i32)
        srt = torch.empty(B * F * _NPK, **i32)
        _bin_lists(fd.view(-1), cs, start.view(-1), keys, ids, torch.empty(B * _NPASS << _RADIX, **i32),
                   pk, torch.empty(B * (ty_n + nb + 4), **i32), srt, srt.view(torch.int64),
                   torch.empty(B * F, **i32),
                   torch.empty(B * nb * F, **i32), torch.empty(B * ty_n * tx_n, **i32), offsets.view(-1),
                   counts.view(-1), bins.view(torch.int64).view(-1), B, F, ty_n, tx_n, nb, nch, cw)
    else:
        spans = torch.empty(B, F, _NSPAN, **i32)
        _bin_setup(screen, faces, fd.view(-1), spans.view(-1), pk, F, margin, near, W, H)
        n = int(spans[..., 8].sum())
        bins = torch.empty(max(n, 1), 2, **i32)
        order = torch.argsort(fd[..., _ZMIN], dim=1, stable=True).to(torch.int32)
        s = torch.empty_like(spans)
        _take_rows(spans, order, s)
        _bin_sorted(fd, s, order, offsets, counts, bins, n)
    return Bins(fd, offsets, counts, bins, max_d2, _ndc2(W, H))


class LazyFragments(Fragments):
    """``rasterize``'s ``Fragments`` (the full K-nearest lists, ``_knn``) of binned faces, computed on first access
    of any field: a renderer that composites while it selects (and may stop selecting behind an opaque layer)
    keeps only the bins until someone reads the fragments."""

    def __init__(self, bins: Bins, K: int, shape: tuple):
        self._bins, self._K, self._shape, self._all = bins, int(K), tuple(shape), None

    def _filled(self):
        if self._all is None:
            bn, K = self._bins, self._K
            B, H, W = self._shape
            kw = dict(dtype=bn.fd.dtype, device=bn.fd.device)
            p2f = torch.empty(B, H, W, K, dtype=torch.int32, device=bn.fd.device)
            bary = torch.empty(B, H, W, K, 3, **kw)
            zbuf, dist = torch.empty(B, H, W, K, **kw), torch.empty(B, H, W, K, **kw)
            _knn(bn.fd, bn.offsets, bn.counts, bn.bins, p2f, bary, zbuf, dist, bn.max_d2, bn.ndc2, K, _tiled(),
                 _spread(bn.offsets.numel()))
            self._all, self._bins = (p2f, bary, zbuf, dist), None
        return self._all

    pix_to_face = property(lambda self: self._filled()[0])
    bary = property(lambda self: self._filled()[1])
    zbuf = property(lambda self: self._filled()[2])
    dist = property(lambda self: self._filled()[3])


def face_corners(screen: torch.Tensor, faces: torch.Tensor, B: int) -> torch.Tensor:
    """(B or 1, V, D) per-vertex values (e.g. ``(u, v, z)`` from ``Camera.project``) and faces (F, 3) -> (B, F, 3, D)
    each face's corner values, differentiable (one gather for the whole batch)."""
    scr = screen.expand(B, -1, -1)
    V, D = scr.shape[1], scr.shape[2]
    fl = faces.to(device=scr.device).long()
    idx = fl.unsqueeze(0) + (torch.arange(B, device=scr.device) * V).view(B, 1, 1)
    return scr.reshape(B * V, D).index_select(0, idx.reshape(-1)).reshape(B, fl.shape[0], 3, D)


def differentiable_fragments(fragments: Fragments, screen: torch.Tensor, faces: torch.Tensor) -> Fragments:
    """The same fragments with barycentrics and depths recomputed in torch from differentiable projected vertices,
    so that anything interpolated from them (colours, uvs and texels, normals, depth) has gradients w.r.t. vertex
    positions and the camera, as nvdiffrast's rasterizer output does. Face ids stay fixed: these are the gradients
    of each face's shading across its interior, not of its coverage (no silhouette gradients; soft mode has those).

    Args:
        fragments: from ``rasterize`` (or ``rasterize_screen``) of the same geometry.
        screen: (B or 1, V, 3) ``(u, v, z)`` from ``Camera.project(verts)`` (pixels, camera depth).
        faces: (F, 3) int.
    Returns:
        ``Fragments`` with ``bary`` (B, H, W, K, 3) and ``zbuf`` (B, H, W, K) differentiable and equal to the
        input's up to rounding (screen-space barycentrics at the pixel centre, clamped to the triangle, then
        perspective-corrected by 1/z); ids and ``dist`` unchanged.
    """
    p2f = fragments.pix_to_face
    B, H, W, K = p2f.shape
    valid = p2f >= 0
    corners = face_corners(screen, faces, B)                                             # (B, F, 3, 3)
    F = corners.shape[1]
    at = (p2f.clamp_min(0).long() + (torch.arange(B, device=p2f.device) * F).view(B, 1, 1, 1)).reshape(-1)
    tri = corners.reshape(B * F, 3, 3).index_select(0, at).reshape(B, H, W, K, 3, 3)
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = (tri[..., j, :].unbind(-1) for j in range(3))
    x = (torch.arange(W, dtype=tri.dtype, device=tri.device) + 0.5).view(1, 1, W, 1)
    y = (torch.arange(H, dtype=tri.dtype, device=tri.device) + 0.5).view(1, H, 1, 1)
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    area = torch.where(valid, area, torch.ones_like(area))
    w0 = ((cx - bx) * (y - by) - (cy - by) * (x - bx)) / area
    w1 = ((ax - cx) * (y - cy) - (ay - cy) * (x - cx)) / area
    w = torch.stack([w0, w1, 1.0 - w0 - w1], -1).clamp_min(0.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    iz = torch.stack([az, bz, cz], -1)
    q = w / torch.where(valid[..., None], iz, torch.ones_like(iz))
    z = 1.0 / q.sum(-1).clamp_min(1e-30)
    bary = torch.where(valid[..., None], q * z[..., None], torch.zeros_like(q))
    zbuf = torch.where(valid, z, torch.full_like(z, -1.0))
    return Fragments(p2f, bary, zbuf, fragments.dist)


# ---------------------------------------------------------------------------------------------------------------
# soft coverage + front-to-back compositing (differentiable)
# ---------------------------------------------------------------------------------------------------------------
@ti.func
def _coverage(xy: ti.template(), faces: ti.template(), opac: ti.template(), b, f, x, y, sigma, ndc2):
    # alpha = opacity * exp(-max(d, 0) / sigma) with d the squared NDC distance to the triangle (DBW eq. for
    # soft blocks); also returns which edge is nearest and the closest-point parameter for the backward pass
    i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
    ax, ay, bx, by, cx, cy = xy[b, i0, 0], xy[b, i0, 1], xy[b, i1, 0], xy[b, i1, 1], xy[b, i2, 0], xy[b, i2, 1]
    area = _edge(ax, ay, bx, by, cx, cy)
    w0 = _edge(bx, by, cx, cy, x, y) * area
    w1 = _edge(cx, cy, ax, ay, x, y) * area
    w2 = _edge(ax, ay, bx, by, x, y) * area
    d2 = 0.0
    edge = -1
    if not (w0 >= 0 and w1 >= 0 and w2 >= 0):
        e0 = _seg_dist2(x, y, ax, ay, bx, by)
        e1 = _seg_dist2(x, y, bx, by, cx, cy)
        e2 = _seg_dist2(x, y, cx, cy, ax, ay)
        d2, edge = e0, 0
        if e1 < d2:
            d2, edge = e1, 1
        if e2 < d2:
            d2, edge = e2, 2
        d2 *= ndc2
    cov = ti.exp(-d2 / sigma)
    return opac[b, f] * cov, edge, cov


@ti.func
def _acc(g: ti.template(), idx: ti.template(), v, private: ti.template()):
    # g[idx] += v: a plain add into a per-thread private copy (CPU), else an atomic add (shared copy, GPU)
    if ti.static(private):
        g[idx] = g[idx] + v
    else:
        ti.atomic_add(g[idx], v)


@ti.func
def _edge_grad(g_xy: ti.template(), gb, iu, iv, ux, uy, vx, vy, x, y, gd, private: ti.template()):
    # gd = dL/d(d2 / ndc2) with d2 / ndc2 = |p - q|^2 and q the closest point of edge (u, v) to the pixel p,
    # q = u + t (v - u) (t clamped to the segment, held fixed: d|p - q|^2/dq . dq/dt = 0 inside it)
    ex, ey = vx - ux, vy - uy
    L = ex * ex + ey * ey
    t = 0.0
    if L > 0:
        t = ti.min(ti.max(((x - ux) * ex + (y - uy) * ey) / L, 0.0), 1.0)
    rx, ry = ux + t * ex - x, uy + t * ey - y      # q - p
    _acc(g_xy, (gb, iu, 0), gd * 2.0 * rx * (1.0 - t), private)
    _acc(g_xy, (gb, iu, 1), gd * 2.0 * ry * (1.0 - t), private)
    _acc(g_xy, (gb, iv, 0), gd * 2.0 * rx * t, private)
    _acc(g_xy, (gb, iv, 1), gd * 2.0 * ry * t, private)


@ti.func
def _dist_grad(xy: ti.template(), faces: ti.template(), g_xy: ti.template(), b, gb, f, e, x, y, gd,
               private: ti.template()):
    # edge e = (u, v) of face f; xy is read at batch row b, the gradient lands in row gb of g_xy (a private
    # copy's row on CPU)
    iu, iv = faces[f, e], faces[f, (e + 1) % 3]
    _edge_grad(g_xy, gb, iu, iv, xy[b, iu, 0], xy[b, iu, 1], xy[b, iv, 0], xy[b, iv, 1], x, y, gd, private)


@lean
@ti.kernel
def _composite_fwd(xy: ti.types.ndarray(), opac: ti.types.ndarray(), col: ti.types.ndarray(),
                   bg: ti.types.ndarray(), faces: ti.types.ndarray(), p2f: ti.types.ndarray(),
                   out: ti.types.ndarray(), alpha: ti.types.ndarray(), la: ti.types.ndarray(), sigma: float,
                   ndc2: float):
    C = col.shape[4]
    for b, py, px in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2]):
        T = 1.0
        for c in range(C):
            out[b, py, px, c] = 0.0
        for k in range(p2f.shape[3]):
            la[b, py, px, k] = 0.0
        for k in range(p2f.shape[3]):
            f = p2f[b, py, px, k]
            if f < 0:
                break
            a, _e, _c = _coverage(xy, faces, opac, b, f, px + 0.5, py + 0.5, sigma, ndc2)
            la[b, py, px, k] = a
            for c in range(C):
                out[b, py, px, c] += T * a * col[b, py, px, k, c]
            T *= 1.0 - a
        for c in range(C):
            out[b, py, px, c] += T * bg[b, py, px, c]
        alpha[b, py, px] = 1.0 - T


@lean
@ti.kernel
def _composite_bwd(xy: ti.types.ndarray(), opac: ti.types.ndarray(), col: ti.types.ndarray(),
                   bg: ti.types.ndarray(), faces: ti.types.ndarray(), p2f: ti.types.ndarray(), la: ti.types.ndarray(),
                   g_out: ti.types.ndarray(), g_alpha: ti.types.ndarray(), g_la: ti.types.ndarray(),
                   g_xy: ti.types.ndarray(), g_opac: ti.types.ndarray(), g_col: ti.types.ndarray(),
                   g_bg: ti.types.ndarray(), sigma: float, ndc2: float):
    C = col.shape[4]
    for b, py, px in ti.ndrange(p2f.shape[0], p2f.shape[1], p2f.shape[2]):
        x, y = px + 0.5, py + 0.5
        n = 0
        while n < p2f.shape[3] and p2f[b, py, px, n] >= 0:
            n += 1
        T = 1.0
        for k in range(n):
            f = p2f[b, py, px, k]
            a = la[b, py, px, k]
            # R = composite of the layers behind k over the background; dOut/da_k = T_k (c_k - R). This form
            # avoids dividing by (1 - a_k), which is 0 inside a fully opaque face. O(K^2 C) reads per pixel.
            ga = g_la[b, py, px, k]
            for c in range(C):
                R = bg[b, py, px, c]
                for j2 in range(n - 1 - k):
                    j = n - 1 - j2
                    R = la[b, py, px, j] * col[b, py, px, j, c] + (1.0 - la[b, py, px, j]) * R
                go = g_out[b, py, px, c]
                ga += go * T * (col[b, py, px, k, c] - R)
                g_col[b, py, px, k, c] = go * T * a
            Tb = 1.0
            for j in range(k + 1, n):
                Tb *= 1.0 - la[b, py, px, j]
            ga += g_alpha[b, py, px] * T * Tb
            o = opac[b, f]
            if o > 0:
                g_opac[b, f] += ga * a / o
            _a, e, _c = _coverage(xy, faces, opac, b, f, x, y, sigma, ndc2)
            if e >= 0:
                # d(alpha)/d(d2) = -alpha / sigma; d2 = ndc2 |p - q|^2
                _dist_grad(xy, faces, g_xy, b, b, f, e, x, y, -ga * a / sigma * ndc2, False)
            T *= 1.0 - a
        for k in range(n, p2f.shape[3]):
            for c in range(C):
                g_col[b, py, px, k, c] = 0.0
        for c in range(C):
            g_bg[b, py, px, c] = g_out[b, py, px, c] * T


class SoftComposite(bridge.Op):
    """Differentiable soft coverage + compositing; see ``soft_composite``."""

    name = "soft_composite"

    def __init__(self, sigma: float, width: int, height: int):
        if sigma <= 0:
            raise ValueError(f"soft_composite needs sigma > 0, got {sigma}")
        self.sigma, self.ndc2 = float(sigma), _ndc2(width, height)

    def forward(self, xy, opacity, colors, background, faces, p2f):
        B, H, W, K, C = colors.shape
        kw = dict(dtype=colors.dtype, device=colors.device)          # _composite_fwd writes every element
        out, alpha, layer_alpha = torch.empty(B, H, W, C, **kw), torch.empty(B, H, W, **kw), torch.empty(B, H, W, K, **kw)
        _composite_fwd(xy, opacity, colors, background, faces, p2f, out, alpha, layer_alpha, self.sigma, self.ndc2)
        # save a detached alias: the returned tensor itself joins the autograd graph
        return (out, alpha, layer_alpha), (xy, opacity, colors, background, faces, p2f, layer_alpha.detach())

    def backward(self, saved, grads):
        xy, opacity, colors, background, faces, p2f, layer_alpha = saved
        # scattered per-vertex/face gradients start at zero; the per-pixel ones are written whole by the kernel
        g = [torch.zeros_like(xy), torch.zeros_like(opacity), torch.empty_like(colors), torch.empty_like(background)]
        _composite_bwd(xy, opacity, colors, background, faces, p2f, layer_alpha, *grads, *g, self.sigma, self.ndc2)
        return (*g, None, None)


def expand_background(background, B: int, H: int, W: int, C: int, dtype, device) -> torch.Tensor:
    """A scalar, (C,), (B, C), (H, W, C) or (B, H, W, C) background -> (B, H, W, C) (a view where possible)."""
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.dim() == 0:
        bg = bg.expand(C)
    if bg.dim() == 1:
        bg = bg.reshape(1, 1, 1, -1)
    elif bg.dim() == 2:
        bg = bg.reshape(-1, 1, 1, bg.shape[-1])
    elif bg.dim() == 3:
        bg = bg.unsqueeze(0)
    if bg.shape[-1] != C:
        raise ValueError(f"background has {bg.shape[-1]} channels but the colours have {C}")
    return bg.expand(B, H, W, C)


def soft_composite(screen: torch.Tensor, faces: torch.Tensor, fragments: Fragments, colors: torch.Tensor,
                   opacity, background, sigma: float, width: int, height: int):
    """Soft coverage of each kept face, composited front to back.

    Args:
        screen: (B, V, 2+) projected vertices in pixels (``Camera.project``); gradients flow to it.
        faces: (F, 3) int.
        fragments: from ``rasterize(..., sigma=sigma)`` with the same geometry.
        colors: (B, H, W, K, C) per-layer colours/features (e.g. from ``interpolate``).
        opacity: (B, F) per-face opacity in [0, 1] (per-object opacity: index it by each face's object).
        background: (C,), (B, C) or (B, H, W, C).
    Returns:
        rgb: (B, H, W, C); alpha: (B, H, W) = 1 - prod(1 - alpha_k); layer_alpha: (B, H, W, K) each face's
        coverage (the soft probability map). All three are differentiable.
    """
    B, H, W, K, C = colors.shape
    xy = screen[..., :2].expand(B, -1, -1)
    opacity = torch.as_tensor(opacity, dtype=colors.dtype, device=colors.device)
    opacity = opacity.expand(B, faces.shape[0]) if opacity.dim() <= 1 else opacity.expand(B, -1)
    background = expand_background(background, B, H, W, C, colors.dtype, colors.device)
    op = SoftComposite(sigma, width, height)
    return op(xy, opacity, colors, background, faces.to(torch.int32), fragments.pix_to_face)
