"""Benchmark tide's renderers against real peers and against vectorised pure-torch references of the same maths.

    python scripts/bench_render.py [--precision f32|f64] [--repeats 3] [--only raster,texture,volume,splat,peers]
                                   [--peer-res 128,256,512] [--peer-faces 5120,51200] [--plot]

``peers``: tide's hard and soft mesh rasterizer against what a CPU user would run instead, on the same torus (5,120
and 51,200 faces), camera and image size (128^2, 256^2, 512^2): **Mitsuba 3** (``pip install -e '.[bench]'``;
``llvm_ad_rgb``, 1 sample per pixel, one directional light on a diffuse mesh; its ``direct`` integrator's forward
and forward + backward to the vertex positions, which like tide's hard mode has no silhouette gradients, and its
``direct_projective`` integrator, whose silhouette gradients compare with tide's soft mode and hard + antialias)
and **Open3D**'s Embree ray casting (silhouette and depth forward, against tide's ``rasterize``). Both sides
back-propagate the same vector-Jacobian product, the gradient of sum(w * rgb) (+ sum(alpha) for tide's soft and
antialiased alpha): Mitsuba as dr.backward of its (JIT-fused) weighted sum, tide by seeding w and ones straight
into its outputs (torch.autograd.backward), so no loss runs as separate torch ops. Silhouettes and
depths are checked to agree (IoU, median depth difference) before timing; each peer is skipped with a message
when it is not installed. It prints every time, the side-by-side ratios, and the growth per doubling of pixels
and of faces; ``--plot`` writes docs/bench_render_peers.png.

"pure torch" references are plain torch end to end, non-differentiable work included: the soft rasterizer's
reference projects the mesh, selects each pixel's K faces (candidate (pixel, face) pairs enumerated from each
face's pixel box grown by the blur radius, tested and measured in one vectorised pass, ranked by stable sorts,
the same keep-list policy as tide's ``rasterize``) and composites; the splatter's bins Gaussians into depth-sorted
tile lists by one sort over (tile, depth) pairs. Each bench also times a second reference that runs only the
differentiable pass in torch on tide's own selection (``rasterize``'s K-nearest lists, ``_bin``'s tile lists):
that ratio isolates the differentiable pass, and is bounded by the shared work.

Outputs and gradients are compared before timing; the script exits non-zero on mismatch. The pure-torch and
tide K-nearest lists are first checked to agree everywhere up to depth ties (same faces per class, same sorted
depths to rounding); the few pixels (~0.5 %) where a tie broke differently are left out of the raster loss so
image and gradients can be compared strictly. Runs alternate tide and the references so all see the same
background load; each figure is a median. The torch references slow far more than tide on a busy machine (every
large op is an OpenMP region that waits for a descheduled thread), so ratios from a loaded and a quiet machine
differ; compare figures from one run only.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import backend  # noqa: E402


def _gen(seed: int) -> torch.Generator:
    """A seeded generator on the backend's device (inputs are drawn where tide and the references run)."""
    return torch.Generator(device=backend.torch_device()).manual_seed(seed)


def _sync():
    if backend.torch_device().type == "cuda":
        torch.cuda.synchronize()


def _time_all(fns, repeats, pause=0.0):
    """Median wall time of each function, runs interleaved (tide, ref 1, ref 2, tide, ...) after one warm-up each,
    so all see the same background load on a shared machine. ``pause`` seconds (untimed) before each run let the
    previous contender's worker threads go idle (Dr.Jit's and Embree's pools spin for a while after a call)."""
    for fn in fns:
        fn()                                                               # warm-up: compile / cache load
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, ts):
            _sync()
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            _sync()
            t.append(time.perf_counter() - t0)
    return [sorted(t)[len(t) // 2] for t in ts]


# ---- soft rasterizer -----------------------------------------------------------------------------------------
def torch_project(verts, cam):
    """(V, 3) world -> (1, V, 3) (u, v, z): the pinhole projection, differentiable."""
    pc = verts @ cam.R[0].T + cam.t[0]
    u = cam.fx[0] * pc[:, 0] / pc[:, 2] + cam.cx[0]
    v = cam.fy[0] * pc[:, 1] / pc[:, 2] + cam.cy[0]
    return torch.stack([u, v, pc[:, 2]], -1)[None]


def torch_texture(tex, uv):
    """Bilinear lookup of tex (Ht, Wt, C) at uv (..., 2) with tide's conventions (v up, texel centres at
    (i + 0.5) / size, clamped to the edge): ``grid_sample`` with border padding."""
    g = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1).reshape(1, 1, -1, 2)
    out = torch.nn.functional.grid_sample(tex.permute(2, 0, 1)[None], g, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0, :, 0].T.reshape(*uv.shape[:-1], tex.shape[-1])


def torch_soft(screen, faces, p2f, bary, inside, vcol, sigma, W, H, bg):
    """Reference: DBW coverage from the squared NDC distance to the nearest edge (1 where the selection found the
    pixel inside the face), barycentric colours (``vcol`` (V, C), or ``(uvs (V, 2), texture (Ht, Wt, C))``),
    front-to-back compositing. One mesh, one camera."""
    H_, W_, K = p2f.shape[1:]
    valid = p2f >= 0
    fv = faces.long().index_select(0, p2f.clamp_min(0).reshape(-1)).reshape(-1)       # (H W K 3,)
    tri = screen[0, :, :2].index_select(0, fv).reshape(1, H, W, K, 3, 2)
    v, u = torch.meshgrid(torch.arange(H, dtype=screen.dtype) + 0.5, torch.arange(W, dtype=screen.dtype) + 0.5,
                          indexing="ij")
    p = torch.stack([u, v], -1)[None, :, :, None, None, :]                           # (1, H, W, 1, 1, 2)
    a = tri
    e = tri.roll(-1, dims=-2) - a
    pa = p - a
    t = ((pa * e).sum(-1) / (e * e).sum(-1).clamp_min(1e-30)).clamp(0, 1)
    d2 = ((t[..., None] * e - pa) ** 2).sum(-1).amin(-1) * (2.0 / min(W, H)) ** 2   # (1, H, W, K)
    alpha = torch.exp(-torch.where(inside, torch.zeros_like(d2), d2) / sigma) * valid
    if isinstance(vcol, tuple):
        uvs, tex = vcol
        uv = (bary[..., None] * uvs.index_select(0, fv).reshape(1, H, W, K, 3, 2)).sum(-2)   # (1, H, W, K, 2)
        col = torch_texture(tex, uv)
    else:
        col = (bary[..., None] * vcol.index_select(0, fv).reshape(1, H, W, K, 3, -1)).sum(-2)  # (1, H, W, K, C)
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    w = T * alpha
    Tn = T[..., -1] * (1 - alpha[..., -1])
    return (w[..., None] * col).sum(-2) + Tn[..., None] * bg, 1 - Tn


@torch.no_grad()
def torch_knn(screen, faces, W, H, K, sigma, near=1e-3):
    """Reference K-nearest selection in plain torch, same policy as tide's ``rasterize``: per pixel the faces that
    contain the pixel centre first, then those within the blur radius, each class by (depth, face id), K kept and
    listed by (depth, face id). Returns pix_to_face (1, H, W, K), perspective-correct clamped barycentrics
    (1, H, W, K, 3), depths (1, H, W, K) and whether each kept face contains the pixel centre.

    Vectorised over (pixel, face) candidate pairs: each face's pixel box grown by the blur radius is enumerated
    with repeat_interleave, per-face constants are gathered once per pair (one index_select of a face table),
    pairs beyond the blur reach of an edge line are dropped before the segment distances, and stable sorts rank
    and order the survivors."""
    dt, dev = screen.dtype, screen.device
    xy, z = screen[0, :, :2], screen[0, :, 2]
    fl = faces.long()
    (ax, ay), (bx, by), (cx, cy) = (xy[fl[:, j]].unbind(-1) for j in range(3))
    za, zb, zc = (z[fl[:, j]] for j in range(3))
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    ok = (za > near) & (zb > near) & (zc > near) & (area.abs() >= 1e-12)
    ndc2 = (2.0 / min(W, H)) ** 2
    max_d2 = sigma * math.log(1e4) if sigma > 0 else -1.0
    r2 = max_d2 / ndc2
    margin = math.sqrt(r2) + 1e-3 if sigma > 0 else 0.0
    # per-face table: vertices, barycentric gradients (w0 = 1, w1 = 0 at a), 1/z, squared altitudes
    ia = 1.0 / area
    a2 = area * area
    lab, lbc, lca = (bx - ax) ** 2 + (by - ay) ** 2, (cx - bx) ** 2 + (cy - by) ** 2, (ax - cx) ** 2 + (ay - cy) ** 2
    # (gathered per pair in two narrow tables: what the first test needs, then what the survivors need)
    table1 = torch.stack([ax, ay, (by - cy) * ia, (cx - bx) * ia, (cy - ay) * ia, (ax - cx) * ia,
                          a2 / lbc, a2 / lca, a2 / lab], 1)
    table2 = torch.stack([ax, ay, bx, by, cx, cy, 1.0 / za, 1.0 / zb, 1.0 / zc], 1)
    # pixel boxes: centres px + 0.5 within [min - margin, max + margin]
    x0 = (torch.minimum(torch.minimum(ax, bx), cx) - margin - 0.5).ceil().clamp_min(0).long()
    x1 = (torch.maximum(torch.maximum(ax, bx), cx) + margin - 0.5).floor().clamp_max(W - 1).long()
    y0 = (torch.minimum(torch.minimum(ay, by), cy) - margin - 0.5).ceil().clamp_min(0).long()
    y1 = (torch.maximum(torch.maximum(ay, by), cy) + margin - 0.5).floor().clamp_max(H - 1).long()
    nx, ny = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
    cnt = nx * ny * ok
    f = torch.repeat_interleave(torch.arange(len(fl), device=dev), cnt)             # (P,) pairs, by face id
    j = torch.arange(f.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    box = torch.stack([x0, y0, nx], 1).index_select(0, f)
    pyi, pxi = box[:, 1] + j // box[:, 2], box[:, 0] + j % box[:, 2]
    g = table1.index_select(0, f)
    dx, dy = pxi.to(dt) + 0.5 - g[:, 0], pyi.to(dt) + 0.5 - g[:, 1]
    w0 = 1.0 + g[:, 2] * dx + g[:, 3] * dy
    w1 = g[:, 4] * dx + g[:, 5] * dy
    w2 = 1.0 - w0 - w1
    inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    if sigma > 0:
        # the distance to an edge's line bounds the distance to the triangle from below
        near_lines = ((w0.clamp(max=0) ** 2 * g[:, 6] <= r2) & (w1.clamp(max=0) ** 2 * g[:, 7] <= r2)
                      & (w2.clamp(max=0) ** 2 * g[:, 8] <= r2))
        cand = torch.nonzero(inside | near_lines).squeeze(1)
    else:
        cand = torch.nonzero(inside).squeeze(1)
    f, inside = f.index_select(0, cand), inside.index_select(0, cand)
    g = table2.index_select(0, f)
    px, py = pxi.index_select(0, cand).to(dt) + 0.5, pyi.index_select(0, cand).to(dt) + 0.5
    w = torch.stack([w0, w1, w2], -1).index_select(0, cand)
    if sigma > 0:
        def seg(u, v):                                                              # squared distance to an edge
            ux, uy = g[:, 2 * u], g[:, 2 * u + 1]
            ex, ey = g[:, 2 * v] - ux, g[:, 2 * v + 1] - uy
            qx, qy = px - ux, py - uy
            t = ((qx * ex + qy * ey) / (ex * ex + ey * ey)).clamp(0, 1)
            return (qx - t * ex) ** 2 + (qy - t * ey) ** 2

        d2 = torch.minimum(torch.minimum(seg(0, 1), seg(1, 2)), seg(2, 0)) * ndc2
        keep = torch.nonzero(inside | (d2 < max_d2)).squeeze(1)
        f, g, inside, w, px, py = (t.index_select(0, keep) for t in (f, g, inside, w, px, py))
    # perspective-correct depth at the clamped barycentrics
    w = w.clamp_min(0)
    w = w / w.sum(-1, keepdim=True)
    q = w * g[:, 6:9]
    zk = 1.0 / q.sum(-1)
    pix = (py.long() * W + px.long())
    # rank by (pixel, class, depth, face id) and keep the first K per pixel; pairs are in face order, so stable
    # sorts leave ties by face id. f32: one sort of an int64 key (pixel, class, depth bits: a positive float's bits
    # order like the float); f64: a sort by depth, then a stable one by (pixel, class)
    grp = pix * 2 + (~inside).long()
    packed = zk.dtype == torch.float32
    if packed:
        zbits = zk.view(torch.int32).long()
        o = torch.sort((grp << 31) | zbits, stable=True)[1]
    else:
        oz = torch.sort(zk, stable=True)[1]
        o = oz.index_select(0, torch.sort(grp.index_select(0, oz), stable=True)[1])
    n_pix = torch.bincount(pix, minlength=H * W)
    pix_o = pix.index_select(0, o)
    rank = torch.arange(o.numel(), device=dev) - (torch.cumsum(n_pix, 0) - n_pix).index_select(0, pix_o)
    sel = torch.zeros(o.numel(), dtype=torch.bool, device=dev)
    sel[o[rank < K]] = True
    # list order of the kept faces, by (depth, face id) per pixel
    if packed:
        o = torch.nonzero(sel).squeeze(1)                                            # face order
        o = o.index_select(0, torch.sort((pix.index_select(0, o) << 31) | zbits.index_select(0, o), stable=True)[1])
    else:
        o = oz[sel.index_select(0, oz)]                                              # depth order, then by pixel
        o = o.index_select(0, torch.sort(pix.index_select(0, o), stable=True)[1])
    pix_s = pix.index_select(0, o)
    n_kept = torch.bincount(pix_s, minlength=H * W)
    slot = torch.arange(o.numel(), device=dev) - (torch.cumsum(n_kept, 0) - n_kept).index_select(0, pix_s)
    p2f = torch.full((H * W, K), -1, dtype=torch.long, device=dev)
    bary = torch.zeros(H * W, K, 3, dtype=dt, device=dev)
    zbuf = torch.full((H * W, K), -1.0, dtype=dt, device=dev)
    cover = torch.zeros(H * W, K, dtype=torch.bool, device=dev)
    zo = zk.index_select(0, o)
    at = pix_s * K + slot
    p2f.view(-1)[at] = f.index_select(0, o)
    bary.view(-1, 3)[at] = q.index_select(0, o) * zo[:, None]
    zbuf.view(-1)[at] = zo
    cover.view(-1)[at] = inside.index_select(0, o)
    return p2f.reshape(1, H, W, K), bary.reshape(1, H, W, K, 3), zbuf.reshape(1, H, W, K), cover.reshape(1, H, W, K)


def _same_selection(frags, ref, rtol):
    """Pixels whose tide and reference K-nearest lists are identical (1, H, W), after checking that the lists agree
    everywhere up to rounding: per pixel, the same number of faces containing the centre and the same sorted depths
    per class within ``rtol`` (lists then differ only where two faces' depths tie to rounding, e.g. faces meeting
    at a vertex). Raises on a real disagreement."""
    p2f, _, zbuf, cover = ref
    same = (frags.pix_to_face.long() == p2f).all(-1)
    inf = torch.tensor(float("inf"), dtype=zbuf.dtype)
    for cls_t, cls_r in ((frags.mask & (frags.dist <= 0), cover), (frags.mask & (frags.dist > 0), (p2f >= 0) & ~cover)):
        if not torch.equal(cls_t.sum(-1), cls_r.sum(-1)):
            raise SystemExit("raster reference: the number of covering / blur-only faces per pixel differs")
        zt = torch.where(cls_t, frags.zbuf, inf).sort(-1)[0]
        zr = torch.where(cls_r, zbuf, inf).sort(-1)[0]
        fin = torch.isfinite(zt)
        if not ((zt - zr).abs() <= rtol * zr.abs())[fin].all():
            raise SystemExit("raster reference: kept depths differ beyond rounding")
    if same.float().mean() < 0.99:
        raise SystemExit(f"raster reference: only {same.float().mean():.4f} of the pixels have identical lists")
    return same


def _raster_case(texels: int = 0):
    """The soft-raster bench: vertex colours, or (``texels`` > 0) a texels x texels RGB texture on uvs."""
    import trimesh

    from engine.render import orbit_cameras, rasterize, render_mesh

    dt = backend.torch_dtype()
    mesh = trimesh.creation.icosphere(4, radius=1.0)                                  # 5,120 faces
    V0 = torch.tensor(mesh.vertices, dtype=dt)
    F = torch.tensor(mesh.faces)
    cam = orbit_cameras(1, radius=3.0, width=128, height=128, fov_y=45)
    gen = _gen(0)
    if texels:
        uvs = (V0[:, :2] * 0.45 + 0.5).contiguous()
        shade0 = torch.rand(texels, texels, 3, dtype=dt, generator=gen)              # the texture
    else:
        shade0 = V0 * 0.5 + 0.5                                                        # vertex colours
    sigma, K = 1e-4, 8
    wgt = torch.rand(1, 128, 128, 3, dtype=dt, generator=gen)
    # The loss leaves out the few pixels (~0.5 %) whose lists differ between tide and the pure-torch selection
    # (depth ties to rounding, checked above), so that image and gradients can be compared strictly.
    same = _same_selection(rasterize(V0, F, cam, faces_per_pixel=K, sigma=sigma),
                           torch_knn(torch_project(V0, cam), F, 128, 128, K, sigma),
                           1e-5 if dt == torch.float32 else 1e-12)
    wa = same.to(dt)
    wgt = wgt * wa[..., None]

    def loss(rgb, alpha):
        return (rgb * wgt).sum() + (alpha * wa).sum()

    def colours(c):
        return (uvs, c) if texels else c

    def tide_run():
        V, c = V0.clone().requires_grad_(), shade0.clone().requires_grad_()
        kw = dict(uvs=uvs, texture=c) if texels else dict(colors=c)
        r = render_mesh(V, F, cam, mode="soft", sigma=sigma, faces_per_pixel=K, background=1.0, **kw)
        loss(r.rgb, r.alpha).backward()
        return r.rgb.detach() * wa[..., None], V.grad, c.grad

    def torch_run():
        # pure torch end to end: projection, K-nearest selection, soft compositing
        V, c = V0.clone().requires_grad_(), shade0.clone().requires_grad_()
        screen = torch_project(V, cam)
        p2f, bary, _, inside = torch_knn(screen.detach(), F, 128, 128, K, sigma)
        rgb, alpha = torch_soft(screen, F, p2f, bary, inside, colours(c), sigma, 128, 128, 1.0)
        loss(rgb, alpha).backward()
        return rgb.detach() * wa[..., None], V.grad, c.grad

    def shared_run():
        # the differentiable pass alone in torch, on tide's K-nearest lists (its Taichi ``rasterize``)
        V, c = V0.clone().requires_grad_(), shade0.clone().requires_grad_()
        frags = rasterize(V, F, cam, faces_per_pixel=K, sigma=sigma)
        rgb, alpha = torch_soft(cam.project(V), F, frags.pix_to_face, frags.bary, frags.dist <= 0, colours(c), sigma,
                                128, 128, 1.0)
        loss(rgb, alpha).backward()
        return rgb.detach() * wa[..., None], V.grad, c.grad

    print(f"raster: pure-torch and tide K-nearest lists identical on {same.float().mean():.4f} of the pixels, "
          "the rest differ by depth ties to rounding only (checked)")
    what = f"{texels}^2 texture" if texels else "vertex colours"
    return f"soft raster 128^2, 5120 faces, K=8, {what}", tide_run, {
        "pure torch": torch_run, "torch soft pass on tide's K-nearest": shared_run}


def bench_raster(repeats):
    return _raster_case()


def bench_texture(repeats):
    return _raster_case(texels=256)


# ---- volume ------------------------------------------------------------------------------------------------
def bench_volume(repeats):
    from engine.render import orbit_cameras, render_volume

    dt = backend.torch_dtype()
    g = _gen(0)
    grid0 = torch.rand(64, 64, 64, 4, dtype=dt, generator=g)
    grid0[..., 0] *= 3
    cam = orbit_cameras(1, radius=3.0, width=128, height=128, fov_y=45)
    S = 64
    wgt = torch.rand(1, 128, 128, 3, dtype=dt, generator=g)

    def tide_run():
        grid = grid0.clone().requires_grad_()
        r = render_volume(cam, grid=grid, n_samples=S, stratified=False)
        ((r.rgb * wgt).sum() + r.alpha.sum()).backward()
        return r.rgb.detach(), grid.grad

    def torch_run():
        from engine.render.volume import ray_box

        grid = grid0.clone().requires_grad_()
        o, d = cam.rays()
        n, f = ray_box(o, d, ((-1, -1, -1), (1, 1, 1)))
        n = n.clamp_min(1e-3)
        f = torch.maximum(f, n)
        bins = (f - n)[..., None] / S
        t = n[..., None] + (torch.arange(S, dtype=dt) + 0.5) * bins
        pts = o[..., None, :] + t[..., None] * d[..., None, :]                       # (1, H, W, S, 3)
        vol = grid.permute(3, 2, 1, 0)[None]                                         # (1, C, Z, Y, X)
        vals = torch.nn.functional.grid_sample(vol, pts.reshape(1, 1, 1, -1, 3), align_corners=True)
        vals = vals.reshape(4, *pts.shape[:-1]).permute(1, 2, 3, 4, 0)               # (1, H, W, S, 4)
        sig, col = vals[..., 0].clamp_min(0), vals[..., 1:]
        a = 1 - torch.exp(-sig * bins * d.norm(dim=-1, keepdim=True))
        T = torch.cumprod(torch.cat([torch.ones_like(a[..., :1]), 1 - a[..., :-1]], -1), -1)
        rgb = ((T * a)[..., None] * col).sum(-2)
        alpha = 1 - T[..., -1] * (1 - a[..., -1])
        ((rgb * wgt).sum() + alpha.sum()).backward()
        return rgb.detach(), grid.grad

    return "volume 128^2, 64 samples/ray, 64^3 grid", tide_run, torch_run


# ---- splatting ----------------------------------------------------------------------------------------------
def bench_splat(repeats, n=100_000):
    from engine.render import Camera, render_gaussians
    from engine.render.splat import _bin, project_gaussians

    dt = backend.torch_dtype()
    g = _gen(0)
    means0 = (torch.rand(n, 3, dtype=dt, generator=g) - 0.5) * 2
    scales0 = torch.exp(torch.randn(n, 3, dtype=dt, generator=g) * 0.3 - 4.0)       # ~ 1.8 % of the box
    quats0 = torch.randn(n, 4, dtype=dt, generator=g)
    opac0 = torch.rand(n, dtype=dt, generator=g) * 0.6 + 0.2
    col0 = torch.rand(n, 3, dtype=dt, generator=g)
    cam = Camera.from_look_at([0.0, 0.0, 3.2], fov_y=45, width=256, height=256)
    wgt = torch.rand(1, 256, 256, 3, dtype=dt, generator=g)

    def params():
        return [x.clone().requires_grad_() for x in (means0, scales0, quats0, opac0, col0)]

    def tide_run():
        m, s, q, o, c = params()
        r = render_gaussians(cam, m, s, q, o, colors=c)
        ((r.rgb * wgt).sum() + r.alpha.sum()).backward()
        return r.rgb.detach(), m.grad, c.grad

    def torch_bin(xy, radius, z, H, W, T=16):
        # tile lists in plain torch: (Gaussian, tile) pairs from each 3-sigma box, one sort by (tile, depth rank)
        with torch.no_grad():
            ty_n, tx_n = (H + T - 1) // T, (W + T - 1) // T
            x, y, r = xy[0, :, 0], xy[0, :, 1], radius[0]
            x0, x1 = ((x - r) / T).floor().clamp(0, tx_n - 1).long(), ((x + r) / T).floor().clamp(0, tx_n - 1).long()
            y0, y1 = ((y - r) / T).floor().clamp(0, ty_n - 1).long(), ((y + r) / T).floor().clamp(0, ty_n - 1).long()
            vis = (r > 0) & (x + r >= 0) & (x - r <= W) & (y + r >= 0) & (y - r <= H)
            nx = (x1 - x0 + 1) * vis
            cnt = nx * (y1 - y0 + 1) * vis
            g = torch.repeat_interleave(torch.arange(len(x)), cnt)
            j = torch.arange(g.numel()) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
            nxg = nx.index_select(0, g)
            tile = (y0.index_select(0, g) + j // nxg) * tx_n + x0.index_select(0, g) + j % nxg
            order = torch.argsort(z[0], stable=True)
            rank = torch.empty(len(x), dtype=torch.long)
            rank[order] = torch.arange(len(x))
            perm = torch.sort(tile * len(x) + rank.index_select(0, g))[1]
            ids = g.index_select(0, perm)
            end = torch.cumsum(torch.bincount(tile, minlength=ty_n * tx_n), 0)
            start = end - torch.bincount(tile, minlength=ty_n * tx_n)
            return ids, start, end

    def torch_ref(pure):
        m, s, q, o, c = params()
        xy, con, z, rad = project_gaussians(cam, m, s, q)
        if pure:
            ids, start, end = torch_bin(xy.detach(), rad, z.detach(), 256, 256)
        else:
            ids, start, end = _bin(xy.detach(), rad, z.detach(), 256, 256)
        ids, start, end = ids.long(), start.reshape(-1).long(), end.reshape(-1).long()
        L = int((end - start).max())
        ar = torch.arange(L)
        loc = torch.stack(torch.meshgrid(torch.arange(16, dtype=dt) + 0.5, torch.arange(16, dtype=dt) + 0.5,
                                         indexing="ij"), -1)                          # (16, 16, 2) (y, x)
        chunk = 8
        outs, alps = [], []
        for t0 in range(0, 256, chunk):
            tiles = torch.arange(t0, t0 + chunk)
            idx = start[tiles, None] + ar                                            # (chunk, L)
            ok = idx < end[tiles, None]
            gid = ids[idx.clamp(max=ids.numel() - 1)]
            ty, tx = (tiles // 16).to(dt), (tiles % 16).to(dt)
            py = ty[:, None, None] * 16 + loc[None, ..., 0]                          # (chunk, 16, 16)
            px = tx[:, None, None] * 16 + loc[None, ..., 1]
            dx = px[..., None] - xy[0, gid, 0][:, None, None]                        # (chunk, 16, 16, L)
            dy = py[..., None] - xy[0, gid, 1][:, None, None]
            cc = con[0, gid][:, None, None]
            power = -0.5 * (cc[..., 0] * dx ** 2 + cc[..., 2] * dy ** 2) - cc[..., 1] * dx * dy
            a = (o[gid][:, None, None] * torch.exp(power.clamp(max=0))).clamp(max=0.99)
            a = a * (power <= 0) * (a >= 1 / 255) * ok[:, None, None]
            T = torch.cumprod(torch.cat([torch.ones_like(a[..., :1]), 1 - a[..., :-1]], -1), -1)
            w = T * a
            outs.append((w[..., None] * c[gid][:, None, None]).sum(-2))
            alps.append(w.sum(-1))
        rgb = torch.cat(outs).reshape(16, 16, 16, 16, 3).permute(0, 2, 1, 3, 4).reshape(1, 256, 256, 3)
        alpha = torch.cat(alps).reshape(16, 16, 16, 16).permute(0, 2, 1, 3).reshape(1, 256, 256)
        ((rgb * wgt).sum() + alpha.sum()).backward()
        return rgb.detach(), m.grad, c.grad

    return f"splat 256^2, {n // 1000}k Gaussians", tide_run, {
        "pure torch": lambda: torch_ref(True), "torch splat pass on tide's tile lists": lambda: torch_ref(False)}


# ---- real peers: Mitsuba 3 and Open3D on the same mesh, camera and resolution ---------------------------------
PEER_RES = (128, 256, 512)
PEER_FACES = (5_120, 51_200)


def peer_mesh(n_faces: int):
    """A torus seen from 35 degrees above its plane (two to four surface layers along many rays: occlusion and
    silhouettes a sphere does not have), with ``n_faces`` = 2 * major * minor sections."""
    import trimesh

    minor = 40 if n_faces <= 5_120 else 128
    major = n_faces // (2 * minor)
    m = trimesh.creation.torus(major_radius=1.0, minor_radius=0.35, major_sections=major, minor_sections=minor)
    assert len(m.faces) == n_faces, len(m.faces)
    return np.array(m.vertices, dtype="float64"), np.array(m.faces, dtype="int64")


_EYE, _FOV = (0.0, 1.72, 2.46), 45.0                                     # 3 units away, 35 degrees up


def _find_libllvm():
    """Dr.Jit's LLVM backend needs libLLVM >= 17 (older ones fail on the fmaximum intrinsic): point it at the
    newest system copy unless DRJIT_LIBLLVM_PATH is set."""
    import glob
    import re

    if os.environ.get("DRJIT_LIBLLVM_PATH"):
        return os.environ["DRJIT_LIBLLVM_PATH"]
    best = None
    for p in glob.glob("/usr/lib/*/libLLVM*.so*") + glob.glob("/usr/lib/llvm-*/lib/libLLVM*.so*") \
            + glob.glob("/usr/local/lib/libLLVM*.so*"):
        m = re.search(r"libLLVM-?(\d+)", os.path.basename(p))
        if m and int(m.group(1)) >= 17 and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    if best:
        os.environ["DRJIT_LIBLLVM_PATH"] = best[1]
        return best[1]
    return None


def load_mitsuba():
    """(mitsuba, drjit) with the llvm_ad_rgb variant, or a reason string."""
    lib = _find_libllvm()
    try:
        import drjit as dr
        import mitsuba as mi
    except ImportError as e:
        return f"mitsuba not installed ({e.name}); pip install -e '.[bench]'"
    if lib is None:
        return "mitsuba installed but no libLLVM >= 17 found (set DRJIT_LIBLLVM_PATH; Debian: apt install libllvm19)"
    try:
        mi.set_variant("llvm_ad_rgb")
        mi.set_log_level(mi.LogLevel.Error)
    except Exception as e:                                                         # noqa: BLE001
        return f"mitsuba llvm_ad_rgb variant unavailable: {e}"
    return mi, dr


class MitsubaPeer:
    """The mesh in Mitsuba 3 (llvm_ad_rgb): perspective camera matching tide's (same eye, target, up, vertical
    field of view, box filter, 1 sample per pixel at a jittered position), a diffuse mesh lit by one directional
    light. ``integrator``: 'direct' (Mitsuba's C++ direct-lighting integrator; gradients reach vertex positions
    through the shading and the hit points, not the silhouettes, like tide's hard mode) or 'direct_projective'
    (its projective-sampling integrator: silhouette gradients too, like tide's soft mode or hard + antialias)."""

    def __init__(self, mi, dr, V, F, res, integrator):
        self.mi, self.dr = mi, dr
        m = mi.Mesh("mesh", len(V), len(F), has_vertex_normals=False)
        p = mi.traverse(m)
        p["vertex_positions"] = dr.ravel(mi.Point3f(np.ascontiguousarray(V.T, dtype="float32")))
        p["faces"] = dr.ravel(mi.Vector3u(np.ascontiguousarray(F.T, dtype="uint32")))
        p.update()
        integ = {"type": integrator}
        if integrator == "direct_projective":
            integ["sppi"] = 0                          # no indirect silhouettes in a single-mesh direct render
        self.scene = mi.load_dict({
            "type": "scene", "integrator": integ,
            "sensor": {"type": "perspective", "fov": _FOV, "fov_axis": "y",
                       "to_world": mi.ScalarTransform4f().look_at(origin=list(_EYE), target=[0, 0, 0], up=[0, 1, 0]),
                       "film": {"type": "hdrfilm", "width": res, "height": res, "rfilter": {"type": "box"},
                                "pixel_format": "rgb", "sample_border": integrator == "direct_projective"},
                       "sampler": {"type": "independent", "sample_count": 1}},
            "light": {"type": "directional", "direction": [0.4, -0.8, -0.45]},
            "mesh": m})
        self.params = mi.traverse(self.scene)
        self.key = "mesh.vertex_positions"
        self.w = mi.TensorXf(np.random.default_rng(0).random((res, res, 3)).astype("float32"))
        self.seed = 0

    def forward(self):
        self.seed += 1
        img = self.mi.render(self.scene, spp=1, seed=self.seed)
        return np.asarray(img)

    def forward_backward(self):
        dr = self.dr
        self.seed += 1
        dr.enable_grad(self.params[self.key])
        self.params.update()
        img = self.mi.render(self.scene, self.params, spp=1, seed=self.seed)
        dr.backward(dr.sum(img * self.w, axis=None))
        g = np.asarray(dr.grad(self.params[self.key]))
        dr.disable_grad(self.params[self.key])
        return g

    def depth(self):
        """Hit depth along the ray (AOV integrator), for the same-geometry check."""
        mi = self.mi
        sc = mi.load_dict({"type": "scene", "integrator": {"type": "aov", "aovs": "d:depth"},
                           "sensor": self.scene.sensors()[0], "mesh": self.scene.shapes()[0]})
        return np.asarray(mi.render(sc, spp=1, seed=0))[..., 0]


class Open3DPeer:
    """The mesh in Open3D's RaycastingScene (Embree): one ray per pixel centre from tide's intrinsics and
    extrinsics; silhouette (hit mask) and camera depth (t along rays with unit camera-z, as tide's depth)."""

    def __init__(self, V, F, cam):
        import open3d as o3d

        self.o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(V.astype("float32")), o3d.core.Tensor(F.astype("uint32")))
        o, d = cam.rays()                                        # (1, H, W, 3): direction advances z by 1 per unit t
        self.rays = o3d.core.Tensor(torch.cat([o[0], d[0]], -1).detach().cpu().float().numpy())

    def forward(self):
        ans = self.scene.cast_rays(self.rays)
        t = ans["t_hit"].numpy()
        hit = np.isfinite(t)
        return hit, np.where(hit, t, 0.0)


def _tide_peer_runs(V0, F, res):
    """tide's runs on the peer scene: {label: fn}; forward-only runs under no_grad."""
    from engine.render import Camera, DirectionalLights, rasterize, render_mesh

    dt, dev = backend.torch_dtype(), backend.torch_device()
    cam = Camera.from_look_at(list(_EYE), fov_y=_FOV, width=res, height=res)
    V0 = torch.as_tensor(V0, dtype=dt)
    F = torch.as_tensor(F, dtype=torch.int32)
    d = torch.nn.functional.normalize(torch.tensor([[0.4, -0.8, -0.45]], dtype=dt), dim=-1)
    lights = DirectionalLights(d, torch.ones(1, 3, dtype=dt), torch.zeros(3, dtype=dt))
    col = torch.full((len(V0), 3), 0.5, dtype=dt)
    w = torch.rand(1, res, res, 3, dtype=dt, generator=_gen(0))

    def render(V, mode, **kw):
        return render_mesh(V, F, cam, colors=col, lights=lights, mode=mode, background=0.0, **kw)

    def fwd(mode, **kw):
        def run():
            with torch.no_grad():
                return render(V0, mode, **kw).rgb
        return run

    ones = torch.ones(1, res, res, dtype=dt)

    def fwd_bwd(mode, **kw):
        # the gradient of sum(w * rgb) + sum(alpha), seeded straight into the outputs (a vector-Jacobian product):
        # no loss is timed in torch (on this 2-core box at load ~8 one 49k-element torch mul took ~19 ms, its
        # OpenMP region waiting on a descheduled thread, more than the whole render); Mitsuba's mul and sum are
        # fused into its own kernels. The vertices are one leaf whose gradient is reset per run (no copy).
        V = V0.clone().requires_grad_()

        def run():
            V.grad = None
            r = render(V, mode, **kw)
            outs, seeds = [r.rgb], [w]
            if r.alpha.requires_grad:                  # hard mode's alpha is a 0/1 mask without gradient
                outs.append(r.alpha)
                seeds.append(ones)
            torch.autograd.backward(outs, seeds)
            return V.grad
        return run

    def depth():
        with torch.no_grad():
            fr = rasterize(V0, F, cam, faces_per_pixel=1)
            return fr.pix_to_face[0, ..., 0] >= 0, fr.zbuf[0, ..., 0].clamp_min(0)

    runs = {"hard fwd": fwd("hard"), "hard fwd+bwd": fwd_bwd("hard"), "hard+aa fwd+bwd": fwd_bwd("hard", antialias=True),
            "soft fwd": fwd("soft", sigma=1e-4, faces_per_pixel=8),
            "soft fwd+bwd": fwd_bwd("soft", sigma=1e-4, faces_per_pixel=8),
            # the same blur in pixels at every size (sigma is in NDC units: 1e-4 reaches 1.9 px at 128^2, 7.8 px at
            # 512^2, so the candidates per pixel grow with the image side at a fixed sigma)
            "soft 1.9px fwd+bwd": fwd_bwd("soft", sigma=1e-4 * (128 / res) ** 2, faces_per_pixel=8),
            "raster depth": depth}
    return cam, runs


def _growth(xs, ts):
    """Least-squares slope of log2(time) against log2(size): the factor per doubling of size."""
    lx, lt = np.log2(np.asarray(xs, float)), np.log2(np.asarray(ts, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        return float("nan")
    return float(2 ** np.polyfit(lx, lt, 1)[0])


def bench_peers(args):
    """tide's hard and soft rasterizer vs Mitsuba 3 and Open3D on the same torus, camera and resolution."""
    import taichi as ti  # noqa: F401

    mit = load_mitsuba()
    if isinstance(mit, str):
        print(f"peers: Mitsuba 3 skipped: {mit}")
        mit = None
    try:
        import open3d  # noqa: F401
        have_o3d = True
    except ImportError:
        print("peers: Open3D skipped: not installed")
        have_o3d = False
    if mit:
        print(f"peers: Mitsuba {mit[0].__version__} ({mit[0].variant()}, Dr.Jit {mit[1].__version__}, "
              f"libLLVM {os.environ.get('DRJIT_LIBLLVM_PATH')}), 1 spp, box filter")
    if have_o3d:
        print(f"peers: Open3D {open3d.__version__} RaycastingScene, 1 ray per pixel centre")
    res_list = [int(r) for r in args.peer_res.split(",")]
    face_list = [int(f) for f in args.peer_faces.split(",")]
    rows = []
    ok = True
    for nf in face_list:
        V, F = peer_mesh(nf)
        for res in res_list:
            cam, runs = _tide_peer_runs(V, F, res)
            peers = {}
            if have_o3d:
                o3 = Open3DPeer(V, F, cam)
                peers["open3d depth"] = o3.forward
            if mit:
                md = MitsubaPeer(*mit, V, F, res, "direct")
                mp = MitsubaPeer(*mit, V, F, res, "direct_projective")
                peers.update({"mitsuba direct fwd": md.forward, "mitsuba direct fwd+bwd": md.forward_backward,
                              "mitsuba projective fwd+bwd": mp.forward_backward})
            # same geometry: silhouettes and depths agree between tide and the peers
            hit, z = (x.cpu().numpy() for x in runs["raster depth"]())
            checks = []
            if have_o3d:
                h3, z3 = o3.forward()
                iou = (hit & h3).sum() / max((hit | h3).sum(), 1)
                both = hit & h3
                dz = np.median(np.abs(z[both] - z3[both]) / z3[both])
                checks.append(f"open3d IoU {iou:.4f}, median depth rel diff {dz:.1e}")
                ok &= iou > 0.99 and dz < 1e-3
            if mit:
                dm = md.depth()
                hm = dm > 0
                iou = (hit & hm).sum() / max((hit | hm).sum(), 1)
                checks.append(f"mitsuba IoU {iou:.4f}")
                ok &= iou > 0.97                              # 1 jittered sample per pixel moves edge pixels
            names = list(runs) + list(peers)
            times = _time_all([*runs.values(), *peers.values()], args.repeats, pause=0.05)
            t = dict(zip(names, times))
            rows.append((nf, res, t))
            print(f"peers {nf} faces, {res}^2: " + "; ".join(checks), flush=True)
            print("    " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()), flush=True)
    _peer_tables(rows, res_list, face_list)
    if args.plot:
        _peer_plot(rows, res_list, face_list)
    return ok


def _peer_tables(rows, res_list, face_list):
    cols = [("hard fwd+bwd", "mitsuba direct fwd+bwd"), ("hard+aa fwd+bwd", "mitsuba projective fwd+bwd"),
            ("soft fwd+bwd", "mitsuba projective fwd+bwd"), ("raster depth", "open3d depth")]
    print("\nside by side (ms, median; ratio = peer / tide, > 1: tide faster)")
    print(f"{'faces':>7s} {'res':>5s} | " + " | ".join(f"{a} vs {b.split(' ')[0]}" for a, b in cols)
          + " | soft / hard fwd+bwd")
    for nf, res, t in rows:
        cells = []
        for a, b in cols:
            if b in t:
                cells.append(f"{t[a] * 1e3:7.1f} vs {t[b] * 1e3:7.1f} = {t[b] / t[a]:5.2f}x")
            else:
                cells.append(f"{t[a] * 1e3:7.1f} vs       -")
        print(f"{nf:7d} {res:4d}² | " + " | ".join(cells) + f" | {t['soft fwd+bwd'] / t['hard fwd+bwd']:5.2f}")
    print("\ngrowth: time factor per doubling of pixels (at fixed faces) and per doubling of faces (at fixed "
          "pixels), log-log least squares")
    names = [k for k in rows[0][2]]
    for k in names:
        per_px = [_growth([r * r for f, r, t in rows if f == nf], [t[k] for f, r, t in rows if f == nf])
                  for nf in face_list]
        per_f = [_growth([f for f, r, t in rows if r == res], [t[k] for f, r, t in rows if r == res])
                 for res in res_list]
        print(f"    {k:28s} x{'/'.join(f'{g:.2f}' for g in per_px)} per doubling of pixels "
              f"({'/'.join(str(f) for f in face_list)} faces); x{'/'.join(f'{g:.2f}' for g in per_f)} per doubling "
              f"of faces ({'/'.join(f'{r}²' for r in res_list)})")


def _peer_plot(rows, res_list, face_list):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0][2])
    fig, axes = plt.subplots(1, len(face_list), figsize=(5.5 * len(face_list), 4.2), squeeze=False)
    for ax, nf in zip(axes[0], face_list):
        for k in names:
            px = [r * r for f, r, t in rows if f == nf]
            ax.loglog(px, [t[k] * 1e3 for f, r, t in rows if f == nf], "o-" if "mitsuba" in k or "open3d" in k
                      else "s--", label=k, base=2)
        ax.set_title(f"torus, {nf} faces")
        ax.set_xlabel("pixels")
        ax.set_ylabel("ms (median)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "bench_render_peers.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, out)
    print(f"plot written to {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="f32", choices=["f32", "f64"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="raster,texture,volume,splat,peers")
    ap.add_argument("--peer-res", default=",".join(map(str, PEER_RES)), help="peers: image sizes (square)")
    ap.add_argument("--peer-faces", default=",".join(map(str, PEER_FACES)), help="peers: torus face counts")
    ap.add_argument("--plot", action="store_true", help="write docs/bench_render_*.png")
    args = ap.parse_args()
    backend.init(arch=os.environ.get("TIDE_ARCH", "auto"), precision=args.precision)
    torch.set_num_threads(os.cpu_count() or 1)
    # every input and the torch references live on the backend's device (on a GPU: torch on the GPU vs tide)
    torch.set_default_device(backend.torch_device())
    import taichi as ti

    print(f"backend {backend.settings().resolved_arch} {args.precision}, torch threads {torch.get_num_threads()}, "
          f"taichi cpu threads {ti.lang.impl.current_cfg().cpu_max_num_threads}")
    ok = True
    benches = {"raster": bench_raster, "texture": bench_texture, "volume": bench_volume, "splat": bench_splat}
    tol = 1e-3 if args.precision == "f32" else 1e-6
    for key in args.only.split(","):
        if key == "peers":
            ok &= bench_peers(args)
            continue
        name, tide_run, refs = benches[key](args.repeats)
        refs = refs if isinstance(refs, dict) else {"pure torch": refs}
        a = tide_run()
        errs = {}
        for label, ref in refs.items():
            b = ref()
            errs[label] = [((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item() for x, y in zip(a, b)]
        times = _time_all([tide_run, *refs.values()], args.repeats)
        print(f"{name}: tide {times[0] * 1e3:.1f} ms (fwd+bwd)")
        for (label, e), t in zip(errs.items(), times[1:]):
            match = all(x < tol * 20 for x in e)
            ok &= match
            print(f"    vs {label + ':':40s} {t * 1e3:8.1f} ms  ratio {t / times[0]:5.1f}x  (max rel diff image/grads "
                  f"{', '.join(f'{x:.1e}' for x in e)}{'' if match else '  MISMATCH'})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
