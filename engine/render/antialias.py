"""Silhouette antialiasing of hard renders, with gradients to the geometry (the idea of nvdiffrast's antialias
op, Laine et al. 2020: blend across silhouette edges by where they cross between pixel centres).

A hard z-buffer image is piecewise constant in the vertex positions: moving a silhouette changes which pixels a
face covers, a jump with no gradient. Here every pair of neighbouring pixels (horizontal and vertical) that show
different faces is examined. The face nearer the camera of the two (the *front* face, at the *front* pixel) is
tested for a silhouette edge that crosses the segment between the two pixel centres. If one does, at fraction
``s`` of the way from the front centre to the other (*back*) centre, each pixel is treated as a box of width 1
along that axis:

    back pixel  += max(s - 1/2, 0) * (c_front - c_back)     (the front face covers that much of it)
    front pixel += max(1/2 - s, 0) * (c_back - c_front)     (the front face misses that much of it)

``s`` is a differentiable function of the edge's projected end points, so image losses move silhouettes. The
output is continuous in the vertex positions: when an edge crosses a pixel centre the pair's roles swap with the
blend at 1/2 on both sides. An edge is a silhouette edge when no face, or a face turned the other way in screen
space, lies across it (``edge_neighbours``); edges shared by three or more faces always count. This assumes a
consistently wound mesh; on an inconsistently wound one, interior edges blend too (mildly: both sides show
similar colours).

Plain torch, vectorised over the pixel pairs that show different faces (O(pixels), no per-face loop), so autograd
gives the backward and it runs on any device.
"""
import torch

from .raster import Fragments, face_corners

__all__ = ["antialias", "edge_neighbours"]


_NB_CACHE: dict = {}
"""The last few face lists' neighbours, keyed by storage and checked by value (a sort per call costs ~1 ms at 5k
faces; an optimisation renders the same faces every step)."""


def edge_neighbours(faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) int64: the face across edge j of each face (edge j runs from corner j to corner j + 1), -1 on a
    boundary edge, -2 on an edge that three or more faces share."""
    return _cached_neighbours(faces).clone()


def _cached_neighbours(faces: torch.Tensor) -> torch.Tensor:
    key = (faces.data_ptr(), tuple(faces.shape), faces.dtype, faces.device)
    hit = _NB_CACHE.get(key)
    if hit is not None and torch.equal(hit[0], faces):
        return hit[1]
    nb = _edge_neighbours(faces)
    if len(_NB_CACHE) >= 8:
        _NB_CACHE.pop(next(iter(_NB_CACHE)))
    _NB_CACHE[key] = (faces.detach().clone(), nb)
    return nb


def _edge_neighbours(faces: torch.Tensor) -> torch.Tensor:
    f = faces.long()
    F = f.shape[0]
    if F == 0:
        return torch.empty(0, 3, dtype=torch.long, device=f.device)
    a, b = f, f.roll(-1, dims=1)
    n = int(f.max()) + 1
    key = (torch.minimum(a, b) * n + torch.maximum(a, b)).reshape(-1)                   # (3F,)
    order = torch.argsort(key, stable=True)
    _, inv, counts = torch.unique_consecutive(key.index_select(0, order), return_inverse=True, return_counts=True)
    size = counts.index_select(0, inv)
    first = (torch.cumsum(counts, 0) - counts).index_select(0, inv)
    at = torch.arange(3 * F, device=f.device)
    partner = torch.where(at == first, at + 1, at - 1).clamp(0, 3 * F - 1)
    nb_sorted = torch.where(size == 2, order.index_select(0, partner) // 3,
                            torch.where(size > 2, torch.full_like(size, -2), torch.full_like(size, -1)))
    nb = torch.empty(3 * F, dtype=torch.long, device=f.device)
    nb[order] = nb_sorted
    return nb.reshape(F, 3)


def antialias(color: torch.Tensor, fragments: Fragments, screen: torch.Tensor, faces: torch.Tensor,
              neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """Blend a hard render across silhouette edges (see the module docstring).

    Args:
        color: (B, H, W, C) the hard render (any channels: colour, alpha, features); differentiable.
        fragments: the hard fragments it was rendered from (layer 0 is used: face ids and depths).
        screen: (B or 1, V, 3) ``(u, v, z)`` from ``Camera.project(verts)``; gradients reach the vertices and
            camera through the edge crossings.
        faces: (F, 3) int.
        neighbours: ``edge_neighbours(faces)``, to reuse across calls with the same faces.
    Returns:
        (B, H, W, C) antialiased image, differentiable w.r.t. ``color`` and ``screen``.
    """
    B, H, W, C = color.shape
    dev, dt = color.device, screen.dtype
    p2f = fragments.pix_to_face[..., 0].long()
    z0 = fragments.zbuf[..., 0].detach().to(dt)
    zb = torch.where(p2f >= 0, z0, torch.full_like(z0, float("inf")))             # empty pixels lie farthest
    nb = _cached_neighbours(faces) if neighbours is None else neighbours.long()
    tri = face_corners(screen[..., :2], faces, B)                                          # (B, F, 3, 2)
    F = tri.shape[1]
    with torch.no_grad():
        # screen-space orientation of every face: an edge between faces of opposite orientation is a silhouette
        t = tri.detach()
        e1, e2 = t[:, :, 1] - t[:, :, 0], t[:, :, 2] - t[:, :, 0]
        orient = torch.sign(e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0])                  # (B, F)
        # silhouette edges (B, F, 3): nothing across, or a face turned the other way; a pair is examined only if
        # its front face has one (on a closed mesh, the faces along the outline)
        o_nb = orient.gather(1, nb.clamp_min(0).reshape(1, -1).expand(B, -1)).reshape(B, F, 3)
        sil_edge = (nb < 0).unsqueeze(0) | (o_nb != orient.unsqueeze(-1))
        sil_face = torch.cat([sil_edge.any(-1), torch.zeros(B, 1, dtype=torch.bool, device=dev)], 1)  # F: empty
    flat = color.reshape(B * H * W, C)
    delta = torch.zeros_like(flat)
    pix = torch.arange(B * H * W, device=dev).reshape(B, H, W)
    for axis in (2, 1):                                       # neighbours along x, then along y
        n = (W if axis == 2 else H) - 1
        if n <= 0:
            continue
        fa, fb = p2f.narrow(axis, 0, n), p2f.narrow(axis, 1, n)
        za, zc = zb.narrow(axis, 0, n), zb.narrow(axis, 1, n)
        ia, ib = pix.narrow(axis, 0, n), pix.narrow(axis, 1, n)
        with torch.no_grad():
            front = torch.where(za <= zc, fa, fb)
            bidx = torch.arange(B, device=dev).view(B, 1, 1).expand_as(front)
            cand = (fa != fb) & sil_face[bidx, torch.where(front >= 0, front, F)]
        sel = torch.nonzero(cand.reshape(-1)).squeeze(1)
        if sel.numel() == 0:
            continue
        fa, fb, za, zc, ia, ib = (x.reshape(-1).index_select(0, sel) for x in (fa, fb, za, zc, ia, ib))
        a_front = za <= zc
        face = torch.where(a_front, fa, fb)                   # the front face (>= 0: the other side is farther)
        i_front, i_back = torch.where(a_front, ia, ib), torch.where(a_front, ib, ia)
        b = i_front // (H * W)
        rem = i_front - b * H * W
        py = rem // W
        px = rem - py * W
        # the pair's axis coordinate (along) and fixed coordinate (across) in pixels, centres at + 0.5
        along = (px if axis == 2 else py).to(dt) + 0.5
        across = (py if axis == 2 else px).to(dt) + 0.5
        step = torch.where(a_front, 1.0, -1.0).to(dt)        # direction from the front centre to the back one
        k_al, k_ac = (0, 1) if axis == 2 else (1, 0)
        corners = tri.reshape(B * F, 3, 2).index_select(0, b * F + face)                   # (n, 3, 2)
        best_s = torch.full_like(along, 2.0)
        s_sel = torch.zeros_like(along)
        for j in range(3):
            u, w = corners[:, j], corners[:, (j + 1) % 3]
            sil = sil_edge[b, face, j]
            du, dw = u[:, k_ac] - across, w[:, k_ac] - across
            crosses = (du * dw < 0) & sil
            den = torch.where(crosses, w[:, k_ac] - u[:, k_ac], torch.ones_like(du))
            pos = u[:, k_al] + (across - u[:, k_ac]) / den * (w[:, k_al] - u[:, k_al])
            s = (pos - along) * step
            with torch.no_grad():
                ok = crosses & (s >= 0) & (s <= 1) & (s < best_s)
                best_s = torch.where(ok, s, best_s)
            s_sel = torch.where(ok, s, s_sel)
        hit = torch.nonzero(best_s <= 1).squeeze(1)
        if hit.numel() == 0:
            continue
        s = s_sel.index_select(0, hit)[:, None]
        i_f, i_b = i_front.index_select(0, hit), i_back.index_select(0, hit)
        c_f, c_b = flat.index_select(0, i_f), flat.index_select(0, i_b)
        delta = delta.index_add(0, i_b, (s - 0.5).clamp_min(0) * (c_f - c_b))
        delta = delta.index_add(0, i_f, (0.5 - s).clamp_min(0) * (c_b - c_f))
    return (flat + delta).reshape(B, H, W, C)
