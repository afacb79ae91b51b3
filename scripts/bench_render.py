"""Benchmark tide's renderers against vectorised pure-torch references of the same maths (forward + backward).

    python scripts/bench_render.py [--precision f32|f64] [--repeats 3]

Each reference implements the differentiable part in plain torch and reuses tide's non-differentiable work
(face K-nearest lists for the rasterizer, depth-sorted tile lists for the splatter), which it pays for inside
its timed run just as tide does. Outputs and gradients are compared before timing; the script exits non-zero on
mismatch. Runs alternate tide/torch so both see the same background load; each figure is a median.

That shared work bounds the ratio: for the rasterizer it is the K-nearest selection (``rasterize``), timed alone
and printed as "shared", so the ratio cannot exceed (shared + torch soft) / shared however fast tide's soft pass
is. The torch reference also slows far more than tide on a busy machine (every image-sized op is an OpenMP
region that waits for a descheduled thread), so ratios from a loaded and a quiet machine differ by 2-5x; compare
figures from one run only.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine import backend  # noqa: E402


def _time_pair(tide_fn, torch_fn, repeats):
    """Median wall time of each, runs interleaved (tide, torch, tide, ...) after one warm-up each, so both see
    the same background load on a shared machine."""
    tide_fn(), torch_fn()                                                 # warm-up: compile / cache load
    ts = {tide_fn: [], torch_fn: []}
    for _ in range(repeats):
        for fn in (tide_fn, torch_fn):
            t0 = time.perf_counter()
            fn()
            ts[fn].append(time.perf_counter() - t0)
    return tuple(sorted(ts[fn])[len(ts[fn]) // 2] for fn in (tide_fn, torch_fn))


def _time_one(fn, repeats):
    """Median wall time of ``fn`` after one warm-up."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


# ---- soft rasterizer -----------------------------------------------------------------------------------------
def torch_soft(screen, faces, frags, vcol, sigma, W, H, bg):
    """Reference: DBW coverage from the signed squared NDC distance, barycentric colours, front-to-back."""
    p2f = frags.pix_to_face.long()
    B, _, _, K = p2f.shape
    valid = p2f >= 0
    fv = faces.long()[p2f.clamp_min(0)]                                               # (B, H, W, K, 3)
    bidx = torch.arange(B).view(B, 1, 1, 1, 1)
    tri = screen[..., :2][bidx, fv]                                                  # (B, H, W, K, 3, 2)
    v, u = torch.meshgrid(torch.arange(H, dtype=screen.dtype) + 0.5, torch.arange(W, dtype=screen.dtype) + 0.5,
                          indexing="ij")
    p = torch.stack([u, v], -1)[None, :, :, None, None, :]                           # (1, H, W, 1, 1, 2)
    a, b = tri, tri.roll(-1, dims=-2)
    e = b - a
    t = (((p - a) * e).sum(-1) / (e * e).sum(-1).clamp_min(1e-30)).clamp(0, 1)
    d2 = ((a + t[..., None] * e - p) ** 2).sum(-1).amin(-1) * (2.0 / min(W, H)) ** 2  # (B, H, W, K)
    cr = e[..., 0] * (p - a)[..., 1] - e[..., 1] * (p - a)[..., 0]                   # edge functions
    area = cr.sum(-1, keepdim=True)
    inside = ((cr * area) >= 0).all(-1)
    alpha = torch.exp(-torch.where(inside, torch.zeros_like(d2), d2) / sigma) * valid
    col = (frags.bary[..., None] * vcol[bidx, fv]).sum(-2)                           # (B, H, W, K, 3)
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    w = T * alpha
    Tn = T[..., -1] * (1 - alpha[..., -1])
    return (w[..., None] * col).sum(-2) + Tn[..., None] * bg, 1 - Tn


def bench_raster(repeats):
    import trimesh

    from engine.render import orbit_cameras, rasterize, render_mesh

    dt = backend.torch_dtype()
    mesh = trimesh.creation.icosphere(4, radius=1.0)                                  # 5,120 faces
    V0 = torch.tensor(mesh.vertices, dtype=dt)
    F = torch.tensor(mesh.faces)
    cam = orbit_cameras(1, radius=3.0, width=128, height=128, fov_y=45)
    vcol0 = V0 * 0.5 + 0.5
    sigma, K = 1e-4, 8
    wgt = torch.rand(1, 128, 128, 3, dtype=dt, generator=torch.Generator().manual_seed(0))

    def tide_run():
        V, c = V0.clone().requires_grad_(), vcol0.clone().requires_grad_()
        r = render_mesh(V, F, cam, colors=c, mode="soft", sigma=sigma, faces_per_pixel=K, background=1.0)
        ((r.rgb * wgt).sum() + r.alpha.sum()).backward()
        return r.rgb.detach(), V.grad, c.grad

    def torch_run():
        V, c = V0.clone().requires_grad_(), vcol0.clone().requires_grad_()
        frags = rasterize(V, F, cam, faces_per_pixel=K, sigma=sigma)
        rgb, alpha = torch_soft(cam.project(V), F, frags, c[None], sigma, 128, 128, 1.0)
        ((rgb * wgt).sum() + alpha.sum()).backward()
        return rgb.detach(), V.grad, c.grad

    def shared_run():
        rasterize(V0, F, cam, faces_per_pixel=K, sigma=sigma)

    tide_run.shared = shared_run
    return "soft raster 128^2, 5120 faces, K=8", tide_run, torch_run


# ---- volume ------------------------------------------------------------------------------------------------
def bench_volume(repeats):
    from engine.render import orbit_cameras, render_volume

    dt = backend.torch_dtype()
    g = torch.Generator().manual_seed(0)
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
    g = torch.Generator().manual_seed(0)
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

    def torch_run():
        m, s, q, o, c = params()
        xy, con, z, rad = project_gaussians(cam, m, s, q)
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

    return f"splat 256^2, {n // 1000}k Gaussians", tide_run, torch_run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="f32", choices=["f32", "f64"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="raster,volume,splat")
    args = ap.parse_args()
    backend.init(arch=os.environ.get("TIDE_ARCH", "auto"), precision=args.precision)
    torch.set_num_threads(os.cpu_count() or 1)
    import taichi as ti

    print(f"backend {backend.settings().resolved_arch} {args.precision}, torch threads {torch.get_num_threads()}, "
          f"taichi cpu threads {ti.lang.impl.current_cfg().cpu_max_num_threads}")
    ok = True
    benches = {"raster": bench_raster, "volume": bench_volume, "splat": bench_splat}
    for key in args.only.split(","):
        name, tide_run, torch_run = benches[key](args.repeats)
        a, b = tide_run(), torch_run()
        tol = 1e-3 if args.precision == "f32" else 1e-6
        errs = [((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item() for x, y in zip(a, b)]
        match = all(e < tol * 20 for e in errs)
        ok &= match
        t_tide, t_torch = _time_pair(tide_run, torch_run, args.repeats)
        shared = ""
        if hasattr(tide_run, "shared"):
            t_sh = _time_one(tide_run.shared, args.repeats)
            shared = f"  shared {t_sh * 1e3:.1f} ms"
        print(f"{name:42s} tide {t_tide * 1e3:8.1f} ms  torch {t_torch * 1e3:8.1f} ms  ratio {t_torch / t_tide:5.1f}x"
              f"  (fwd+bwd; max rel diff image/grads {', '.join(f'{e:.1e}' for e in errs)}"
              f"{'' if match else '  MISMATCH'}){shared}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
