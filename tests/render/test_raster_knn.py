"""The K-nearest pass (``rasterize``) against a brute-force reference over every (pixel, face) pair.

The reference applies the keep-list policy literally: per pixel, faces containing the pixel centre first, then
faces within the blur radius, each class by (depth, face id); K kept and listed by (depth, face id). Depths and
barycentrics come from plain edge functions, so the test also covers the Taichi pass's precomputed per-face data,
tile binning (image sizes that are not multiples of the tile), the front-to-back list order and the early rejects.
"""
import math

import pytest
import torch
import trimesh

from engine.render import Camera, orbit_cameras, rasterize
from engine.render.raster import project


def _edge(a, b, p):
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _seg2(p, a, b):
    e = b - a
    t = (((p - a) * e).sum(-1) / (e * e).sum(-1)).clamp(0, 1)
    return ((a + t[..., None] * e - p) ** 2).sum(-1)


def _brute(screen, faces, W, H, K, sigma, near=1e-3):
    """(p2f, bary, zbuf, dist) like ``Fragments``, by testing every face at every pixel."""
    B = screen.shape[0]
    ndc2 = (2.0 / min(W, H)) ** 2
    max_d2 = sigma * math.log(1e4) if sigma > 0 else -1.0
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(-1, 1, 2)                                  # (P, 1, 2)
    p2f = torch.full((B, H * W, K), -1, dtype=torch.long)
    bary = torch.zeros(B, H * W, K, 3, dtype=torch.float64)
    zbuf = torch.full((B, H * W, K), -1.0, dtype=torch.float64)
    dist = torch.zeros(B, H * W, K, dtype=torch.float64)
    fl = faces.long()
    for b in range(B):
        tri = screen[b][fl]                                                          # (F, 3, 3)
        a, bb, c = tri[None, :, 0, :2], tri[None, :, 1, :2], tri[None, :, 2, :2]
        area = _edge(a, bb, c)                                                       # (1, F)
        w0 = _edge(bb, c, p) / area
        w1 = _edge(c, a, p) / area
        w = torch.stack([w0, w1, 1.0 - w0 - w1], -1)                                 # (P, F, 3)
        inside = (w >= 0).all(-1)
        d2 = torch.minimum(torch.minimum(_seg2(p, a, bb), _seg2(p, bb, c)), _seg2(p, c, a)) * ndc2
        ok = (tri[None, :, :, 2] > near).all(-1) & (area.abs() >= 1e-12) & (inside | (d2 < max_d2))
        wc = w.clamp_min(0)
        wc = wc / wc.sum(-1, keepdim=True)
        q = wc / tri[None, :, :, 2]
        z = 1.0 / q.sum(-1)
        for i in range(H * W):
            cand = ok[i].nonzero().squeeze(1).tolist()
            cand.sort(key=lambda f: (not bool(inside[i, f]), float(z[i, f]), f))
            kept = sorted(cand[:K], key=lambda f: (float(z[i, f]), f))
            for k, f in enumerate(kept):
                p2f[b, i, k] = f
                zbuf[b, i, k] = z[i, f]
                bary[b, i, k] = q[i, f] * z[i, f]
                dist[b, i, k] = -d2[i, f] if inside[i, f] else d2[i, f]
    shape = (B, H, W, K)
    return p2f.reshape(shape), bary.reshape(*shape, 3), zbuf.reshape(shape), dist.reshape(shape)


def _soup():
    # overlapping and interpenetrating triangles, a sliver, a degenerate (collinear) face and one crossing the
    # camera's near plane
    g = torch.Generator().manual_seed(5)
    centres = torch.rand(40, 1, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    tris = centres + torch.randn(40, 3, 3, generator=g, dtype=torch.float64) * 0.25
    extra = torch.tensor([[[-0.5, 0.0, 0.0], [0.5, 0.001, 0.0], [0.0, 0.6, 0.0]],
                          [[-0.3, -0.3, 0.2], [0.0, 0.0, 0.2], [0.3, 0.3, 0.2]],
                          [[0.0, 0.0, 0.0], [0.3, 0.1, 0.5], [-0.2, 0.2, 3.2]]], dtype=torch.float64)
    V = torch.cat([tris, extra]).reshape(-1, 3)
    return V, torch.arange(V.shape[0]).reshape(-1, 3)


def _case(name):
    if name == "soup":
        return _soup()
    mesh = trimesh.creation.icosphere(2, radius=0.8) if name == "sphere" else trimesh.creation.box((1.0, 0.6, 0.8))
    return torch.tensor(mesh.vertices), torch.tensor(mesh.faces)


@pytest.mark.parametrize("name", ["sphere", "box", "soup"])
@pytest.mark.parametrize("K,sigma", [(1, 0.0), (3, 1e-3), (8, 1e-4)])
def test_knn_lists_match_brute_force(name, K, sigma):
    V, F = _case(name)
    cam = Camera.from_look_at([[0.3, 0.4, 3.0], [-2.2, 0.9, 1.9]], fov_y=40, width=37, height=29)
    frags = rasterize(V, F, cam, faces_per_pixel=K, sigma=sigma, clip=False)   # the K-nearest pass itself
    ref = _brute(project(V, cam), F, 37, 29, K, sigma)
    p2f = frags.pix_to_face.long()
    # the same faces per class everywhere, at the same depths (lists may differ only where depths tie to
    # rounding, e.g. box faces meeting at an edge)
    cls_t = (frags.mask & (frags.dist <= 0), frags.mask & (frags.dist > 0))
    cls_r = ((ref[0] >= 0) & (ref[3] <= 0), (ref[0] >= 0) & (ref[3] > 0))
    for ct, cr in zip(cls_t, cls_r):
        assert torch.equal(ct.sum(-1), cr.sum(-1))
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        zt = torch.where(ct, frags.zbuf, inf).sort(-1)[0]
        zr = torch.where(cr, ref[2], inf).sort(-1)[0]
        fin = torch.isfinite(zr)
        assert torch.allclose(zt[fin], zr[fin], rtol=1e-10, atol=0)
    same = (p2f == ref[0]).all(-1)
    print(f"{name} K={K} sigma={sigma}: {int(frags.mask.sum())} fragments, identical lists on "
          f"{same.float().mean():.4f} of the pixels")
    assert same.float().mean() >= 0.98
    m = same[..., None] & frags.mask
    assert torch.allclose(frags.zbuf[m], ref[2][m], rtol=1e-10, atol=0)
    assert torch.allclose(frags.dist[m], ref[3][m], rtol=1e-8, atol=1e-14)
    assert torch.allclose(frags.bary[m], ref[1][m], rtol=0, atol=1e-9)
    if sigma > 0:
        assert (frags.dist > 0).any()                  # the blur-only class is exercised


def test_knn_on_a_dense_mesh_matches_brute_force_depths():
    # many sub-pixel faces per blur radius: full lists, the front-to-back tile order and the early rejects
    mesh = trimesh.creation.icosphere(4, radius=1.0)
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cam = orbit_cameras(1, radius=3.0, width=48, height=40, fov_y=30)
    frags = rasterize(V, F, cam, faces_per_pixel=8, sigma=1e-4)
    ref = _brute(project(V, cam), F, 48, 40, 8, 1e-4)
    assert torch.equal((frags.dist <= 0).logical_and(frags.mask).sum(-1), ((ref[0] >= 0) & (ref[3] <= 0)).sum(-1))
    assert torch.equal(frags.mask.sum(-1), (ref[0] >= 0).sum(-1))
    assert (frags.mask.sum(-1) == 8).float().mean() > 0.3
    z = torch.where(frags.mask, frags.zbuf, torch.zeros_like(frags.zbuf))
    zr = torch.where(ref[0] >= 0, ref[2], torch.zeros_like(ref[2]))
    assert torch.allclose(z.sort(-1)[0], zr.sort(-1)[0], rtol=1e-10, atol=0)
    assert (frags.pix_to_face.long() == ref[0]).all(-1).float().mean() >= 0.98
