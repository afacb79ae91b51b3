"""The blocks world: up to N textured superquadrics over a textured ground plane and a background colour.

Everything lives in the normalised scene frame (``frame.SceneFrame``: centre at the origin, up = +y, radius 1).
Parametrisation as Differentiable Blocks World (Monnier et al. 2023):

* shape exponents ``eps = sigmoid(e) * 1.8 + 0.1``; half extents ``scale = exp(S) + s_min``;
* rotation from its 6D representation (Zhou et al. 2019: Gram-Schmidt on two columns); translation;
* opacity ``alpha = sigmoid(logit)``, starting at 0.5; one UV texture per block (an icosphere's spherical uvs);
* each block's mesh is an icosphere mapped onto the superquadric (``superquadric_mesh``'s convention: the polar
  axis is the block's local z).

The environment is rendered hard by ray casting in torch: the infinite plane ``y = ground`` with a bilinear
texture over ``[-extent, extent]^2``, the background colour elsewhere. The blocks are soft-rasterized over it
(``render_mesh(mode="soft")``) with per-block opacity.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as Fn

from engine.fields import icosphere
from engine.render import Camera, render_mesh

__all__ = ["BlocksModel", "rot6d_to_matrix", "matrix_to_rot6d", "superquadric_points", "inside_outside",
           "log_inside_outside",
           "render_environment", "sweep_ground", "ground_coords"]


def rot6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) rotation whose first two columns are the Gram-Schmidt of the two 3-vectors."""
    a, b = r6[..., :3], r6[..., 3:]
    x = Fn.normalize(a, dim=-1)
    y = Fn.normalize(b - (x * b).sum(-1, keepdim=True) * x, dim=-1)
    z = torch.cross(x, y, dim=-1)
    return torch.stack([x, y, z], -1)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): its first two columns."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


def _spow(x, e):
    return torch.sign(x) * x.abs().clamp_min(1e-12) ** e


def superquadric_points(dirs: torch.Tensor, eps: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Map unit directions (V, 3) onto N superquadrics: eps (N, 2), scale (N, 3) -> (N, V, 3) local points, with
    ``x = s1 f(cos eta, e1) f(cos w, e2)``, ``y = s2 f(cos eta, e1) f(sin w, e2)``, ``z = s3 f(sin eta, e1)``,
    eta = asin(z_dir), w = atan2(y_dir, x_dir), f(c, e) = sign(c)|c|^e."""
    eta = torch.asin(dirs[:, 2].clamp(-1, 1))
    om = torch.atan2(dirs[:, 1], dirs[:, 0])
    e1, e2 = eps[:, :1], eps[:, 1:]
    ce = _spow(torch.cos(eta)[None], e1)
    x = ce * _spow(torch.cos(om)[None], e2)
    y = ce * _spow(torch.sin(om)[None], e2)
    z = _spow(torch.sin(eta)[None], e1).expand_as(x)
    return torch.stack([x, y, z], -1) * scale[:, None, :]


def inside_outside(p_local: torch.Tensor, eps: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Barr's inside-outside function F (< 1 inside, 1 on the surface) of local points (..., 3) for superquadrics
    broadcast against eps (..., 2) and scale (..., 3):
    ``F = (|x/s1|^(2/e2) + |y/s2|^(2/e2))^(e2/e1) + |z/s3|^(2/e1)``."""
    q = (p_local / scale).abs().clamp_min(1e-9)
    e1, e2 = eps[..., 0], eps[..., 1]
    xy = q[..., 0] ** (2 / e2) + q[..., 1] ** (2 / e2)
    return xy ** (e2 / e1) + q[..., 2] ** (2 / e1)


def log_inside_outside(p_local: torch.Tensor, eps: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log F of ``inside_outside``, evaluated with log-sum-exps so that it stays finite (and its gradient too)
    far outside boxy blocks, where F itself overflows (|x/s|^(2/e) with e ~ 0.1 is a 20th power)."""
    lq = torch.log((p_local / scale).abs().clamp_min(1e-9))
    e1, e2 = eps[..., 0], eps[..., 1]
    lxy = torch.logaddexp(2 / e2 * lq[..., 0], 2 / e2 * lq[..., 1])
    return torch.logaddexp(e2 / e1 * lxy, 2 / e1 * lq[..., 2])


def ground_coords(x: torch.Tensor, z: torch.Tensor, extent: float) -> torch.Tensor:
    """Ground-plane points (x, z) -> texture coordinates in (-1, 1)^2 by the radial warp ``p / (extent + |p|)``:
    the whole infinite plane fits in the texture, with texels about ``2 extent / res`` wide near the centre
    and growing with distance, where a view sees the plane ever more obliquely anyway."""
    p = torch.stack([x, z], -1)
    return p / (extent + p.norm(dim=-1, keepdim=True))


def render_environment(cams: Camera, ground: torch.Tensor, ground_tex: torch.Tensor, background: torch.Tensor,
                       extent: float) -> torch.Tensor:
    """Hard ray cast of the plane y = ``ground`` (scalar) textured by ``ground_tex`` (Ht, Wt, 3) through
    ``ground_coords``, the ``background`` (3,) colour where a ray does not meet the plane (above the horizon).
    Differentiable w.r.t. the height (through the texture lookup), the texels and the background.
    Returns (B, H, W, 3)."""
    o, d = cams.rays()                                                     # (B, H, W, 3); d advances depth by 1
    ground, ground_tex, background = (x.to(o.dtype) for x in (ground, ground_tex, background))
    dy = d[..., 1]
    down = dy < -1e-6
    s = (ground - o[..., 1]) / torch.where(down, dy, torch.full_like(dy, -1.0))
    hit = down & (s > 0)
    p = o + s.clamp_min(0)[..., None] * d
    g = ground_coords(p[..., 0], p[..., 2], extent)                        # grid_sample's (x, y) in (-1, 1)
    B, H, W = dy.shape
    tex = ground_tex.permute(2, 0, 1)[None].expand(B, -1, -1, -1)
    col = Fn.grid_sample(tex, g, mode="bilinear", padding_mode="border", align_corners=False)
    col = col.permute(0, 2, 3, 1)
    return torch.where(hit[..., None], col, background.expand(B, H, W, 3))


@torch.no_grad()
def sweep_ground(images: torch.Tensor, cams: Camera, heights, extent: float, res: int = 64):
    """Plane-sweep the ground height: back-project every view onto candidate planes y = h and keep the height
    where the views agree best (least colour variance per ground texel), as plane-sweep stereo does. Texels use
    ``ground_coords``. The texture of the winner is the per-texel median colour (by luminance) over the views:
    an object standing on the ground lands on a texel in a few views only (parallax), the ground in most.

    Returns (best height, its texture (res, res, 3), the scores (len(heights),))."""
    o, d = cams.rays()
    rgb = images.reshape(-1, 3).float()
    scores, texs = [], []

    def bins(h):
        s = (h - o[..., 1]) / d[..., 1]
        p = o + s[..., None] * d
        ok = ((d[..., 1] < -1e-6) & (s > 0)).reshape(-1)
        g = ground_coords(p[..., 0], p[..., 2], extent).reshape(-1, 2)[ok]
        ij = ((g + 1) / 2 * res).long().clamp(0, res - 1)
        return ok, ij[:, 1] * res + ij[:, 0]                                 # row from z, column from x

    def stats(idx, col, w):
        n = torch.zeros(res * res).index_add_(0, idx, w)
        m1 = torch.zeros(res * res, 3).index_add_(0, idx, col * w[:, None])
        m2 = torch.zeros(res * res, 3).index_add_(0, idx, col ** 2 * w[:, None])
        mean = m1 / n.clamp_min(1e-9)[:, None]
        return n, mean, (m2 / n.clamp_min(1e-9)[:, None] - mean ** 2).sum(1)

    for h in heights:
        ok, idx = bins(h)
        n, mean, var = stats(idx, rgb[ok], torch.ones(len(idx)))
        seen = n >= 3
        scores.append(float((var * n)[seen].sum() / n[seen].sum().clamp_min(1)) if seen.any() else math.inf)
    k = min(range(len(scores)), key=scores.__getitem__)
    ok, idx = bins(heights[k])
    col = rgb[ok]
    # per-texel median colour (by luminance): sort by (texel, luminance), take each run's middle sample
    lum = col.mean(1)
    order = torch.argsort(idx.double() * 4 + lum.double().clamp(0, 1) * 2)
    sidx = idx[order]
    n = torch.zeros(res * res, dtype=torch.long).index_add_(0, idx, torch.ones_like(idx))
    start = torch.cumsum(n, 0) - n
    seen = n > 0
    med = torch.zeros(res * res, 3)
    med[seen] = col[order][start[seen] + n[seen] // 2]
    assert (sidx[start[seen]] == torch.nonzero(seen).flatten()).all()
    fill = med[seen].mean(0) if seen.any() else rgb.mean(0)
    tex = torch.where(seen[:, None], med, fill).reshape(res, res, 3)
    return float(heights[k]), tex, torch.tensor(scores)


def _sphere_uvs(dirs: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F, 3, 2) per-corner spherical uvs (u = longitude, v = latitude, both in [0, 1]); faces across the
    longitude seam get their small u lifted by 1 (then clamped), pole corners take their face's mean u."""
    u = torch.atan2(dirs[:, 1], dirs[:, 0]) / (2 * math.pi) + 0.5
    v = torch.asin(dirs[:, 2].clamp(-1, 1)) / math.pi + 0.5
    uv = torch.stack([u, v], -1)[faces]                                     # (F, 3, 2)
    uu = uv[..., 0]
    seam = (uu.max(1).values - uu.min(1).values) > 0.5
    uu = torch.where(seam[:, None] & (uu < 0.5), uu + 1, uu)
    pole = dirs[faces][..., :2].norm(dim=-1) < 1e-6
    if pole.any():
        mean_u = (uu * ~pole).sum(1, keepdim=True) / (~pole).sum(1, keepdim=True).clamp_min(1)
        uu = torch.where(pole, mean_u, uu)
    return torch.stack([uu.clamp(0, 1), uv[..., 1]], -1)


class BlocksModel(torch.nn.Module):
    """N superquadric blocks, a ground plane and a background (see the module docstring).

    Args:
        n_blocks: N (DBW: up to 10).
        level: icosphere subdivision of each block's mesh (2: 162 vertices, 320 faces).
        tex_size: texels per side of each block's texture.
        ground: initial ground height y (normalised units); ground_tex: initial (G, G, 3) texture or None.
        extent: ground texture scale (``ground_coords``; normalised units).
        s_min: smallest half extent of a block (normalised units).
        generator: torch.Generator for the random initialisation (seedable).
        bounds: (lo, hi) of the initial block centres in x and z (normalised units); heights lie between the
            ground and ``ground + height``.
    """

    def __init__(self, n_blocks: int = 10, level: int = 2, tex_size: int = 32, ground: float = -0.3,
                 ground_tex: torch.Tensor | None = None, ground_res: int = 128, extent: float = 2.0,
                 s_min: float = 0.02, generator: torch.Generator | None = None, bounds: float = 0.6,
                 height: float = 0.6, init_scale: float = 0.18, colour=None):
        super().__init__()
        g = generator
        N = n_blocks
        self.extent, self.s_min, self.tex_size = extent, s_min, tex_size
        dirs, faces = icosphere(level, dtype=torch.float32)
        self.register_buffer("dirs", dirs)
        self.register_buffer("faces", faces)
        self.register_buffer("uvs", _sphere_uvs(dirs, faces))
        self.register_buffer("alive", torch.ones(N, dtype=torch.bool))
        xz = (torch.rand(N, 2, generator=g) * 2 - 1) * bounds
        y = ground + 0.05 + torch.rand(N, 1, generator=g) * height
        self.trans = torch.nn.Parameter(torch.cat([xz[:, :1], y, xz[:, 1:]], 1))
        yaw = torch.rand(N, generator=g) * math.pi
        # local z (the superquadric's polar axis) along +y, so columns and cylinders start upright
        R = torch.zeros(N, 3, 3)
        R[:, 0, 0], R[:, 2, 0] = torch.sin(yaw), torch.cos(yaw)
        R[:, 0, 1], R[:, 2, 1] = torch.cos(yaw), -torch.sin(yaw)
        R[:, 1, 2] = 1.0
        self.rot6d = torch.nn.Parameter(matrix_to_rot6d(R))
        self.shape = torch.nn.Parameter(torch.zeros(N, 2))                   # eps = 1: ellipsoids
        self.log_scale = torch.nn.Parameter(torch.full((N, 3), math.log(init_scale - s_min)))
        self.alpha_logit = torch.nn.Parameter(torch.zeros(N))
        c = torch.full((3,), 0.5) if colour is None else torch.as_tensor(colour, dtype=torch.float32)
        self.texture = torch.nn.Parameter(c.expand(N, tex_size, tex_size, 3).clone())
        self.ground = torch.nn.Parameter(torch.tensor(float(ground)))
        gt = c.expand(ground_res, ground_res, 3) if ground_tex is None else ground_tex
        self.ground_tex = torch.nn.Parameter(gt.clone().float())
        self.background = torch.nn.Parameter(c.clone())
        self.use_env = True

    # ---- derived quantities -------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.trans.shape[0]

    def eps(self):
        """(N, 2) shape exponents in [0.1, 1.9]."""
        return torch.sigmoid(self.shape) * 1.8 + 0.1

    def scale(self):
        """(N, 3) half extents (normalised units)."""
        return torch.exp(self.log_scale) + self.s_min

    def rotation(self):
        """(N, 3, 3) local-to-scene rotations."""
        return rot6d_to_matrix(self.rot6d)

    def alpha(self, noise: float = 0.0, generator=None):
        """(N,) opacities; ``noise`` adds Gaussian noise of that std to the logits (DBW's coarse stage)."""
        z = self.alpha_logit
        if noise > 0:
            z = z + noise * torch.randn(z.shape, generator=generator)
        return torch.sigmoid(z) * self.alive

    def block_verts(self, dirs=None):
        """(N, V, 3) block vertices in the normalised frame."""
        local = superquadric_points(self.dirs if dirs is None else dirs, self.eps(), self.scale())
        return local @ self.rotation().transpose(1, 2) + self.trans[:, None, :]

    def atlas(self, decimate: int = 1):
        """The blocks' textures as one atlas (N tiles of (T + 2)^2 with a replicated border, so bilinear lookups
        never bleed between tiles), optionally average-pooled by ``decimate`` and upsampled back (DBW's coarse
        textures). Returns (atlas (Ha, Wa, 3), cols)."""
        N, T = self.n, self.tex_size
        tex = self.texture.permute(0, 3, 1, 2)
        if decimate > 1:
            tex = Fn.interpolate(Fn.avg_pool2d(tex, decimate), size=(T, T), mode="nearest")
        tex = Fn.pad(tex, (1, 1, 1, 1), mode="replicate")                   # (N, 3, T + 2, T + 2)
        cols = math.ceil(math.sqrt(N))
        rows = math.ceil(N / cols)
        if rows * cols > N:
            tex = torch.cat([tex, tex.new_zeros(rows * cols - N, *tex.shape[1:])])
        grid = tex.reshape(rows, cols, 3, T + 2, T + 2).permute(0, 3, 1, 4, 2).reshape(rows * (T + 2),
                                                                                        cols * (T + 2), 3)
        return grid, cols

    def atlas_uvs(self, cols: int) -> torch.Tensor:
        """(N * F, 3, 2) per-corner uvs into the atlas (OBJ convention: v up)."""
        N, T = self.n, self.tex_size
        rows = math.ceil(N / cols)
        k = torch.arange(N)
        r, c = k // cols, k % cols
        Wa, Ha = cols * (T + 2), rows * (T + 2)
        u = (c[:, None, None] * (T + 2) + 1 + self.uvs[None, ..., 0] * T) / Wa
        # texture rows run top to bottom; v up means row (1 - v)
        row = r[:, None, None] * (T + 2) + 1 + (1 - self.uvs[None, ..., 1]) * T
        v = 1 - row / Ha
        return torch.stack([u, v], -1).reshape(-1, 3, 2)

    # ---- rendering ----------------------------------------------------------------------------------------------
    def render(self, cams: Camera, sigma: float = 1e-4, faces_per_pixel: int = 8, noise: float = 0.0,
               decimate: int = 1, generator=None, flat_colours=None, env: bool | None = None, keep=None):
        """Render B views. Returns (rgb (B, H, W, 3), blocks' alpha (B, H, W)).

        ``flat_colours`` (N, 3) replaces the textures with one colour per block (the video's third panel);
        ``keep`` (N,) bool hides the other blocks.
        """
        verts = self.block_verts()                                           # (N, V, 3)
        N, V = verts.shape[:2]
        faces = (self.faces[None] + (torch.arange(N) * V)[:, None, None]).reshape(-1, 3)
        F = self.faces.shape[0]
        alpha = self.alpha(noise, generator)
        if keep is not None:
            alpha = alpha * keep
        opac = alpha.repeat_interleave(F)
        if self.use_env if env is None else env:
            bg = render_environment(cams, self.ground, self.ground_tex, self.background, self.extent)
        else:
            bg = self.background.expand(cams.batch, cams.height, cams.width, 3)
        if flat_colours is not None:
            fc = torch.as_tensor(flat_colours, dtype=verts.dtype).repeat_interleave(F, 0)
            out = render_mesh(verts.reshape(-1, 3), faces, cams, face_colors=fc, mode="soft", sigma=sigma,
                              faces_per_pixel=faces_per_pixel, opacity=opac, background=bg)
        else:
            atlas, cols = self.atlas(decimate)
            out = render_mesh(verts.reshape(-1, 3), faces, cams, uvs=self.atlas_uvs(cols), texture=atlas,
                              mode="soft", sigma=sigma, faces_per_pixel=faces_per_pixel, opacity=opac,
                              background=bg)
        return out.rgb, out.alpha

    # ---- regularisers -------------------------------------------------------------------------------------------
    def parsimony(self):
        """DBW's parsimony: mean over live blocks of sqrt(alpha)."""
        a = self.alpha()
        return (a.clamp_min(1e-8).sqrt() * self.alive).sum() / self.alive.sum().clamp_min(1)

    def texture_tv(self):
        """Mean squared difference of neighbouring texels (blocks and ground)."""
        t, g = self.texture, self.ground_tex
        tv = ((t[:, 1:] - t[:, :-1]) ** 2).mean() + ((t[:, :, 1:] - t[:, :, :-1]) ** 2).mean()
        return tv + ((g[1:] - g[:-1]) ** 2).mean() + ((g[:, 1:] - g[:, :-1]) ** 2).mean()

    def overlap(self, n_points: int = 200, tau: float = 0.005, limit: float = 1.95, generator=None):
        """DBW's overlap penalty: points sampled uniformly in each live block's bounding box; occupancy of a point
        by block j is sigmoid(-sdf_j / tau) * alpha_j (sdf_j the radial distance estimate
        ``|p| (1 - F^(-e1/2))``); the mean excess of the summed occupancy over ``limit``."""
        idx = torch.nonzero(self.alive).flatten()
        if len(idx) < 2:
            return self.trans.sum() * 0
        R, t, s, e = self.rotation()[idx], self.trans[idx], self.scale()[idx], self.eps()[idx]
        a = self.alpha()[idx]
        u = torch.rand(len(idx), n_points, 3, generator=generator) * 2 - 1
        pts = ((u * s[:, None]) @ R.transpose(1, 2) + t[:, None]).reshape(-1, 3)            # (M, 3)
        loc = torch.einsum("nji,mnj->mni", R, pts[:, None, :] - t[None])                     # (M, n, 3)
        logF = log_inside_outside(loc, e[None], s[None])
        sdf = loc.norm(dim=-1) * (1 - torch.exp(-e[None, :, 0] / 2 * logF.clamp_min(math.log(1e-6))))
        occ = (torch.sigmoid(-sdf / tau) * a[None]).sum(1)
        return torch.relu(occ - limit).mean()
