"""The Gaussian avatar (after 3D²-Actor): Gaussians anchored to body-mesh faces, a pose-conditioned rectifier in
each face's local frame, and a small pose-conditioned 2D denoiser; plus the mesh baseline it is compared with.

Anchoring: Gaussian g sits on face f(g) at barycentric point b_g, with an offset o_g = (t1, t2, n) in the face's
local frame [e1 e2 n] (e1 along the first edge, n the face normal): mean = sum_k b_gk v_k + [e1 e2 n] o_g. Posing
the body mesh by skinning carries the frame along, so the Gaussians follow the body without any extra skinning.
The rectifier (an MLP) reads a per-Gaussian latent, the face's canonical position and a pose code, and predicts
changes of the local offset, colour, opacity and scale for that pose (its last layer starts at zero, so training
starts from the plain anchored Gaussians).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .data import PARTS

__all__ = ["MeshBaseline", "GaussianAvatar", "Denoiser", "face_frames", "rotmat_to_quat", "major_bones",
           "gaussians_ply"]


def face_frames(verts: torch.Tensor, faces: torch.Tensor):
    """Per-face local frames of a (V, 3) mesh: (F, 3, 3) rotation with columns (e1, e2, n), and (F,) areas."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    e1 = v1 - v0
    cr = torch.cross(e1, v2 - v0, dim=-1)
    area = 0.5 * cr.norm(dim=-1)
    n = cr / (2 * area[:, None]).clamp_min(1e-12)
    e1 = e1 / e1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e2 = torch.cross(n, e1, dim=-1)
    return torch.stack([e1, e2, n], -1), area


def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (w, x, y, z), the branch chosen per element for
    stability (Shepperd's method)."""
    m = R
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)], -2)          # (..., 4, 4)
    diag = torch.stack([t, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    k = diag.argmax(-1)
    q = cands.gather(-2, k[..., None, None].expand(*k.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0)


_MAJOR = ["spine05", "spine03", "spine01", "neck01", "head", "clavicle.L", "clavicle.R", "upperarm01.L",
          "upperarm01.R", "lowerarm01.L", "lowerarm01.R", "upperleg01.L", "upperleg01.R", "lowerleg01.L",
          "lowerleg01.R", "foot.L", "foot.R"]


def major_bones(labels: list) -> list:
    """Indices of the bones whose rotations condition the networks (the trunk and limbs, not fingers/toes)."""
    have = {n: i for i, n in enumerate(labels)}
    idx = [have[n] for n in _MAJOR if n in have]
    return idx or list(range(len(labels)))


def _posenc(x: torch.Tensor, n_freq: int = 4) -> torch.Tensor:
    f = 2.0 ** torch.arange(n_freq, dtype=x.dtype, device=x.device) * math.pi
    a = x[..., None] * f
    return torch.cat([x, a.sin().flatten(-2), a.cos().flatten(-2)], -1)


class MeshBaseline(nn.Module):
    """The baseline: the posed body mesh alone with learned per-vertex colours, hard-rasterized."""

    def __init__(self, n_verts: int, dtype=torch.float32):
        super().__init__()
        self.colour = nn.Parameter(torch.zeros(n_verts, 3, dtype=dtype))

    def render(self, verts, faces, cameras):
        from engine.render import render_mesh

        out = render_mesh(verts, faces, cameras, colors=torch.sigmoid(self.colour), mode="hard", background=0.0)
        return out.rgb, out.alpha


class GaussianAvatar(nn.Module):
    """Face-anchored Gaussians with a pose-conditioned rectifier.

    Args:
        rest_verts: (V, 3) rest body; faces: (F, 3); pose_dim: length of the pose vector fed to the rectifier.
        n_gaussians: number of Gaussians (anchor faces drawn in proportion to area).
        rectifier: use the pose-conditioned MLP (False: static anchored Gaussians).
    """

    def __init__(self, rest_verts, faces, pose_dim: int, n_gaussians: int = 8000, rectifier: bool = True,
                 latent: int = 16, hidden: int = 64, pose_code: int = 16, seed: int = 0):
        super().__init__()
        dt = rest_verts.dtype
        g = torch.Generator().manual_seed(seed)
        frames, area = face_frames(rest_verts, faces)
        # anchor faces drawn in proportion to their area (anny's mesh is dense at the face and the fingers), at
        # most one Gaussian per face, at a random point of it
        n = min(int(n_gaussians), len(faces))
        self.register_buffer("face", torch.multinomial(area.double(), n, replacement=False, generator=g))
        b = -torch.log(torch.rand(n, 3, generator=g, dtype=torch.float64).clamp_min(1e-9))
        self.register_buffer("bary", (0.5 * b / b.sum(1, keepdim=True) + 1 / 6).to(dt))
        G = len(self.face)
        s0 = torch.full((G,), float(torch.sqrt(area.sum() / G)) * 0.6, dtype=dt)
        self.offset = nn.Parameter(torch.zeros(G, 3, dtype=dt))
        self.colour = nn.Parameter(torch.zeros(G, 3, dtype=dt))
        self.opacity = nn.Parameter(torch.full((G,), 2.0, dtype=dt))
        self.log_scale = nn.Parameter(torch.stack([s0.log(), s0.log(), (0.3 * s0).log()], -1))
        self.quat = nn.Parameter(torch.tensor([1.0, 0, 0, 0], dtype=dt).repeat(G, 1))
        self.use_rectifier = rectifier
        if rectifier:
            c = (rest_verts[faces].mean(1))[self.face]
            self.register_buffer("canon", _posenc(c))
            self.latent = nn.Parameter(0.1 * torch.randn(G, latent, generator=g, dtype=dt))
            self.pose_enc = nn.Sequential(nn.Linear(pose_dim, 64, dtype=dt), nn.SiLU(),
                                          nn.Linear(64, pose_code, dtype=dt))
            d_in = latent + self.canon.shape[1] + pose_code
            self.mlp = nn.Sequential(nn.Linear(d_in, hidden, dtype=dt), nn.SiLU(), nn.Linear(hidden, hidden, dtype=dt),
                                     nn.SiLU(), nn.Linear(hidden, 10, dtype=dt))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def rectify(self, pose: torch.Tensor) -> torch.Tensor:
        """(pose_dim,) -> (G, 10) per-Gaussian changes: local offset (3), colour (3), opacity (1), log scale (3)."""
        code = self.pose_enc(pose)[None].expand(len(self.face), -1)
        return self.mlp(torch.cat([self.latent, self.canon, code], -1))

    def gaussians(self, verts: torch.Tensor, faces: torch.Tensor, pose: torch.Tensor | None = None):
        """Posed Gaussians for posed body vertices (V, 3): means (G, 3), scales (G, 3), quats (G, 4),
        opacities (G,), colours (G, 3)."""
        off, col, op, ls = self.offset, self.colour, self.opacity, self.log_scale
        if self.use_rectifier and pose is not None:
            d = self.rectify(pose)
            off = off + 0.05 * d[:, 0:3]                      # metres: keeps early steps small
            col, op, ls = col + d[:, 3:6], op + d[:, 6], ls + 0.5 * d[:, 7:10]
        frames, _ = face_frames(verts, faces)
        Rf = frames[self.face]
        tri = verts[faces[self.face]]                                              # (G, 3, 3)
        means = (self.bary[:, :, None] * tri).sum(1) + (Rf @ off[:, :, None]).squeeze(-1)
        from engine.render import quat_to_rotmat

        quats = rotmat_to_quat(Rf @ quat_to_rotmat(self.quat))
        return means, ls.clamp(-9, -1.5).exp(), quats, torch.sigmoid(op), torch.sigmoid(col)

    def render(self, verts, faces, cameras, pose=None):
        from engine.render import render_gaussians

        means, scales, quats, opac, col = self.gaussians(verts, faces, pose)
        out = render_gaussians(cameras, means, scales, quats, opac, colors=col, background=0.0)
        return out.rgb, out.alpha


class Denoiser(nn.Module):
    """A small UNet that refines rendered views, conditioned on the rendered body-part segmentation (which
    carries the pose) and the render's alpha. Input (B, H, W, 3 + 1 + parts); output (B, H, W, 3), the render plus
    a learned residual (last layer zero-initialised: it starts as the identity)."""

    def __init__(self, parts: int = len(PARTS), width: int = 8, dtype=torch.float32):
        super().__init__()
        c_in = 4 + parts

        def block(a, b):
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1, dtype=dtype), nn.SiLU(),
                                 nn.Conv2d(b, b, 3, padding=1, dtype=dtype), nn.SiLU())

        w = width
        self.e1, self.e2, self.e3 = block(c_in, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.d2, self.d1 = block(6 * w, 2 * w), block(3 * w, w)
        self.out = nn.Conv2d(w, 3, 1, dtype=dtype)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, rgb, alpha, seg):
        x = torch.cat([rgb, alpha[..., None], seg], -1).permute(0, 3, 1, 2)
        pool = nn.functional.avg_pool2d
        up = nn.functional.interpolate
        h1 = self.e1(x)
        h2 = self.e2(pool(h1, 2))
        h3 = self.e3(pool(h2, 2))
        u2 = self.d2(torch.cat([up(h3, scale_factor=2.0, mode="bilinear", align_corners=False), h2], 1))
        u1 = self.d1(torch.cat([up(u2, scale_factor=2.0, mode="bilinear", align_corners=False), h1], 1))
        return rgb + self.out(u1).permute(0, 2, 3, 1)


def gaussians_ply(means, scales, quats, opacities, colours) -> bytes:
    """A binary little-endian ply in the 3DGS layout (x y z, f_dc_0..2, opacity logit, log scale_0..2,
    rot_0..3 as w x y z), readable by common Gaussian-splat viewers."""
    from engine.render.splat import SH_C0

    m = means.detach().cpu().double().numpy()
    dc = (colours.detach().cpu().double().numpy() - 0.5) / SH_C0
    o = opacities.detach().cpu().double().numpy().clip(1e-6, 1 - 1e-6)
    cols = [m, dc, np.log(o / (1 - o))[:, None], np.log(scales.detach().cpu().double().numpy()),
            quats.detach().cpu().double().numpy()]
    data = np.concatenate(cols, 1).astype("<f4")
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    head = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % len(m)
    head += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    return head.encode() + data.tobytes()
