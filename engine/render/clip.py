"""Near-plane clipping of triangle meshes, in torch (differentiable), before rasterization.

The rasterizer skips faces with a vertex at camera depth <= ``near`` (their projection is meaningless). A face that
crosses the plane ``z = CLIP_Z`` in some camera is replaced here by two slots; per camera they hold the part of the
face in front of the plane (the face itself, one triangle, or a quad as two triangles) or a culled triangle (all
corners at the camera centre, which the rasterizer skips). Every slot corner is a point ``(1 - t) X_u + t X_v`` on
an edge (or at a vertex, t = 0) of its original face, so positions, per-vertex attributes and per-corner uvs follow
by the same interpolation, gradients included, and fragments map back to the original face and its barycentrics.
Faces that cross in no camera are kept as they are; a mesh with none costs one camera-space transform and a test.
"""
from dataclasses import dataclass

import torch

from .camera import Camera
from .raster import Fragments, project

__all__ = ["CLIP_Z", "ClippedMesh", "clip_near"]

CLIP_Z = 2e-3
"""Camera depth of the clipping plane (world units): in front of the rasterizer's default ``near`` = 1e-3, so the
new corners are drawn."""

# Per case (number of corners behind the plane; the corners are rotated so that i is the odd one out, j and k
# follow it), the two slot triangles as corners (u, v, on_edge): the point is corner u when on_edge is 0, else the
# crossing of edge (u, v). -1 marks a culled slot. Winding is the original face's.
_I, _J, _K = 0, 1, 2
_SLOTS = {
    0: (((_I, _I, 0), (_J, _J, 0), (_K, _K, 0)), None),
    1: (((_I, _J, 1), (_J, _J, 0), (_K, _K, 0)), ((_I, _J, 1), (_K, _K, 0), (_I, _K, 1))),
    2: (((_I, _I, 0), (_I, _J, 1), (_I, _K, 1)), None),
    3: (None, None),
}



def _slot_tables():
    """``_SLOTS`` as CPU tensors (moved to the mesh's device per call): (case, slot, corner, (u, v, on_edge)) and
    (case, slot) culled flags."""
    table = torch.zeros(4, 2, 3, 3, dtype=torch.long, device="cpu")
    cull = torch.zeros(4, 2, dtype=torch.bool, device="cpu")
    for case, slots in _SLOTS.items():
        for s, tri in enumerate(slots):
            if tri is None:
                cull[case, s] = True
            else:
                table[case, s] = torch.tensor(tri, device="cpu")
    return table, cull


_TABLE, _CULL = _slot_tables()


@dataclass
class ClippedMesh:
    """A mesh clipped against ``z = CLIP_Z`` for B cameras.

    verts: (B, V + 6 Fc, 3) world positions: the original vertices, then 6 slot corners per crossing face.
    faces: (F', 3) int32: the faces that cross in no camera, then 2 slots per crossing face.
    face_map: (F',) long original face of each face.
    src: (B, F', 3, 2) long, t: (B, F', 3): each new-face corner is (1 - t) X[src[..., 0]] + t X[src[..., 1]]
        in terms of the original vertices (global ids); culled corners have t = 0 and ``culled`` set.
    corner: (B, F', 3, 3) barycentrics of each new-face corner in its original face.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    face_map: torch.Tensor
    src: torch.Tensor
    t: torch.Tensor
    corner: torch.Tensor
    culled: torch.Tensor
    n_kept: int

    def _new_corners(self, per_vertex: torch.Tensor) -> torch.Tensor:
        """(Ba, V, C) -> (B, 6 Fc, C) values at the slot corners (0 at culled ones)."""
        B, nk = self.src.shape[0], self.n_kept
        src, t, cul = self.src[:, nk:], self.t[:, nk:], self.culled[:, nk:]              # (B, 2 Fc, 3, ...)
        a = per_vertex.expand(B, -1, -1)
        bidx = torch.arange(B, device=a.device).view(B, 1, 1)
        val = (1 - t)[..., None] * a[bidx, src[..., 0]] + t[..., None] * a[bidx, src[..., 1]]
        val = torch.where(cul[..., None], torch.zeros_like(val), val)
        return val.reshape(B, -1, a.shape[-1])

    def vertex_attr(self, attr: torch.Tensor) -> torch.Tensor:
        """Per-vertex (V, C) or (Ba, V, C) -> (B, V + 6 Fc, C)."""
        attr = attr.unsqueeze(0) if attr.dim() == 2 else attr
        B = self.src.shape[0]
        return torch.cat([attr.expand(B, -1, -1), self._new_corners(attr)], 1)

    def face_attr(self, attr: torch.Tensor, dim: int) -> torch.Tensor:
        """Per-face values with the face axis at ``dim`` -> the same layout over the clipped faces."""
        return attr.index_select(dim, self.face_map)

    def corner_attr(self, attr: torch.Tensor) -> torch.Tensor:
        """Per-corner (F, 3, C) or (Ba, F, 3, C) -> (B, F', 3, C), interpolated along the cut edges."""
        attr = attr.unsqueeze(0) if attr.dim() == 3 else attr
        B = self.src.shape[0]
        a = attr.expand(B, -1, -1, -1).index_select(1, self.face_map)                   # (B, F', 3, C)
        # each new corner mixes two corners of its original face: their local ids from the barycentric rows
        return torch.einsum("bfkj,bfjc->bfkc", self.corner.to(a.dtype), a)

    def fragments(self, frags: Fragments) -> Fragments:
        """Fragments of the clipped mesh -> fragments of the original faces (ids and barycentrics)."""
        p2f = frags.pix_to_face.long()
        valid = p2f >= 0
        idx = p2f.clamp_min(0)
        orig = torch.where(valid, self.face_map.index_select(0, idx.reshape(-1)).reshape(idx.shape), -1)
        B = p2f.shape[0]
        cb = self.corner.to(frags.bary.dtype)
        m = cb[torch.arange(B, device=p2f.device).view(B, 1, 1, 1), idx]                # (B, H, W, K, 3, 3)
        bary = torch.einsum("bhwkj,bhwkjc->bhwkc", frags.bary, m) * valid[..., None]
        return Fragments(orig.to(frags.pix_to_face.dtype), bary, frags.zbuf, frags.dist)


def clip_near(verts: torch.Tensor, faces: torch.Tensor, camera: Camera,
              z_clip: float = CLIP_Z) -> ClippedMesh | None:
    """Clip (B, V, 3) or (V, 3) world ``verts`` with ``faces`` (F, 3) against ``z = z_clip`` of each camera.

    Returns None when no face crosses the plane in any camera (nothing to do).
    """
    verts = verts.unsqueeze(0) if verts.dim() == 2 else verts
    B = max(verts.shape[0], camera.batch)
    dev = verts.device
    with torch.no_grad():
        # depths by the Taichi projection (one kernel; no image- or face-sized torch ops when nothing crosses);
        # the margin covers rounding differences from the torch depths below
        if not bool((project(verts, camera)[..., 2] < z_clip + 1e-5 * (1.0 + abs(z_clip))).any()):
            return None                                        # no vertex behind the plane: no face crosses it
    fl = faces.long()
    with torch.no_grad():
        z = camera.world_to_camera(verts.detach())[..., 2].expand(B, -1)                # (B, V)
        behind = z[:, fl] < z_clip                                                         # (B, F, 3)
        nb = behind.sum(-1)
        crossing = ((nb > 0) & (nb < 3)).any(0)
    if not bool(crossing.any()):
        return None
    cf = torch.nonzero(crossing).squeeze(1)                                                # (Fc,)
    keep = torch.nonzero(~crossing).squeeze(1)
    Fc, V = cf.numel(), verts.shape[1]
    nbc, bc = nb[:, cf], behind[:, cf]                                                     # (B, Fc), (B, Fc, 3)
    # the odd corner: the one behind when 1 is, the one in front when 2 are (0 otherwise)
    odd = torch.where(nbc == 1, bc.float().argmax(-1), torch.where(nbc == 2, (~bc).float().argmax(-1), 0))
    table, cull = _TABLE.to(dev), _CULL.to(dev)
    rows = table[nbc]                                                                      # (B, Fc, 2, 3, 3)
    slot_cull = cull[nbc]                                                                  # (B, Fc, 2)
    # local corner ids -> rotated by the odd corner -> global vertex ids
    lu = (rows[..., 0] + odd[..., None, None]) % 3
    lv = (rows[..., 1] + odd[..., None, None]) % 3
    on_edge = rows[..., 2].bool()
    fcv = fl[cf]                                                                           # (Fc, 3)
    gu = torch.gather(fcv.expand(B, -1, -1), 2, lu.reshape(B, Fc, 6)).reshape(B, Fc, 2, 3)
    gv = torch.gather(fcv.expand(B, -1, -1), 2, lv.reshape(B, Fc, 6)).reshape(B, Fc, 2, 3)
    bidx = torch.arange(B, device=dev).view(B, 1, 1, 1)
    culled = slot_cull[..., None].expand(-1, -1, -1, 3)
    cut = on_edge & ~culled & (z[bidx, gv] != z[bidx, gu])
    # positions, differentiable: t comes from the camera-space depths of the edge's ends (verts and camera
    # gradients reach the new corners through it)
    X = verts.expand(B, -1, -1)
    zg = camera.world_to_camera(verts)[..., 2].expand(B, -1)
    zgu, zgv = zg[bidx, gu], zg[bidx, gv]
    tt = torch.where(cut, (z_clip - zgu) / torch.where(cut, zgv - zgu, torch.ones_like(zgu)), torch.zeros_like(zgu))
    t = tt.detach()
    P = (1 - tt)[..., None] * X[bidx, gu] + tt[..., None] * X[bidx, gv]                # (B, Fc, 2, 3, 3)
    centre = camera.center.detach().to(P.dtype).expand(B, 3).view(B, 1, 1, 1, 3)
    P = torch.where(culled[..., None], centre.expand_as(P), P)
    new_verts = torch.cat([X, P.reshape(B, Fc * 6, 3)], 1)
    new_faces = (V + torch.arange(Fc * 6, device=dev)).reshape(Fc * 2, 3)
    faces_out = torch.cat([fl[keep], new_faces], 0).to(torch.int32)
    face_map = torch.cat([keep, cf.repeat_interleave(2)])
    # per new face: corner sources, t, barycentrics in the original face
    nk = keep.numel()
    src = torch.zeros(B, nk + 2 * Fc, 3, 2, dtype=torch.long, device=dev)
    src[:, :nk, :, 0] = fl[keep].expand(B, -1, -1)
    src[:, :nk, :, 1] = fl[keep].expand(B, -1, -1)
    src[:, nk:, :, 0] = gu.reshape(B, 2 * Fc, 3)
    src[:, nk:, :, 1] = gv.reshape(B, 2 * Fc, 3)
    t_all = torch.zeros(B, nk + 2 * Fc, 3, dtype=tt.dtype, device=dev)
    t_all[:, nk:] = tt.reshape(B, 2 * Fc, 3)
    cul_all = torch.zeros(B, nk + 2 * Fc, 3, dtype=torch.bool, device=dev)
    cul_all[:, nk:] = culled.reshape(B, 2 * Fc, 3)
    eye = torch.eye(3, dtype=verts.dtype, device=dev)
    corner = eye.expand(B, nk + 2 * Fc, 3, 3).clone()
    bu = eye[lu] * (1 - t)[..., None] + eye[lv] * t[..., None]                            # (B, Fc, 2, 3, 3)
    bu = torch.where(culled[..., None], torch.zeros_like(bu), bu)
    corner[:, nk:] = bu.reshape(B, 2 * Fc, 3, 3)
    return ClippedMesh(new_verts, faces_out, face_map, src, t_all, corner, cul_all, nk)
