"""The DBW optimisation: losses, the coarse-to-fine curriculum, block deletion and filtering, and the metrics.

One ``Fitter`` holds the model, the Adam optimiser and the views (in the normalised frame). ``step(it)`` does one
iteration of the schedule below; ``state()`` / ``load()`` are what the runner checkpoints.

Schedule over ``iterations`` (fractions are of the total), following DBW's stages:

* coarse stage (``coarse`` fraction): the soft rasterizer's blur sigma shrinks log-linearly from
  ``sigma_coarse`` to ``sigma_fine`` pixels; Gaussian noise on the opacity logits; textures average-pooled
  x``decimate`` during the first half of it;
* fine stage: ``sigma_fine``, no noise, full textures; learning rates x0.1 for the last ``lr_drop`` fraction;
* every ``prune_every`` iterations after 20 %, blocks with alpha < ``delete_below`` are deleted; at the end,
  blocks with alpha < ``keep_above`` are filtered out of the result;
* at the ``respawn_at`` fractions, unused blocks (deleted, or alpha < ``respawn_below``) are re-initialised where
  the current model explains the images worst (``Fitter.respawn``: multi-view voting of the colour residual on a 3D
  grid). This is not in DBW; it recovers objects that no initial block reached, which were otherwise lost (low
  objects the ground texture half-explains, blocks that faded out during the noisy coarse stage).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.render import Camera

from .frame import SceneFrame
from .model import BlocksModel, superquadric_points

__all__ = ["FitSettings", "Fitter", "sigma_ndc", "chamfer_l1", "block_points", "psnr"]


@dataclass
class FitSettings:
    """Loss weights and schedule (see the module docstring). sigma_* are blur radii in pixels:
    DBW's 1e-4 and 5e-6 squared-NDC at 300 px are 1.5 and 0.33 px. ``respawn_min`` is the least residual score
    (mean L1 colour error over RGB, 0-3) for which a block is respawned."""

    iterations: int = 1500
    batch: int = 4
    lr: float = 0.02
    lr_texture: float = 0.05
    lr_ground: float = 0.005
    w_rgb: float = 1.0
    w_parsimony: float = 0.01
    parsimony_ramp: tuple = (0.2, 0.5)
    ground_warmup: float = 0.3
    w_tv: float = 0.1
    w_overlap: float = 1.0
    overlap_points: int = 200
    sigma_coarse: float = 1.5
    sigma_fine: float = 0.33
    faces_per_pixel: int = 8
    opacity_noise: float = 0.3
    decimate: int = 8
    coarse: float = 0.6
    lr_drop: float = 0.1
    prune_every: int = 50
    delete_below: float = 0.01
    keep_above: float = 0.5
    respawn_at: tuple = (0.15, 0.3, 0.45)
    respawn_below: float = 0.1
    respawn_min: float = 0.15


def sigma_ndc(px: float, cams: Camera) -> float:
    """A blur radius in pixels as the rasterizer's sigma (squared NDC units: NDC spans 2 over the shorter side)."""
    return (px * 2.0 / min(cams.width, cams.height)) ** 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class Fitter:
    """Fit ``model`` to ``images`` (N, H, W, 3) seen by ``cams`` (normalised frame)."""

    def __init__(self, model: BlocksModel, images: torch.Tensor, cams: Camera, s: FitSettings, seed: int = 0):
        self.model, self.images, self.cams, self.s = model, images, cams, s
        self.gen = torch.Generator().manual_seed(seed)
        self._it, self.respawned = 0, []
        tex, env = [model.texture], [model.ground_tex, model.background]
        geo = [p for p in model.parameters() if all(p is not t for t in tex + env)]
        self.opt = torch.optim.Adam([{"params": geo, "lr": s.lr, "base": s.lr},
                                     {"params": tex, "lr": s.lr_texture, "base": s.lr_texture},
                                     {"params": env, "lr": s.lr_ground, "base": s.lr_ground}])

    # ---- schedule -----------------------------------------------------------------------------------------------
    def schedule(self, it: int) -> dict:
        s, n = self.s, max(self.s.iterations, 1)
        f = it / n
        coarse = f < s.coarse
        k = min(f / max(s.coarse, 1e-9), 1.0)
        px = math.exp((1 - k) * math.log(s.sigma_coarse) + k * math.log(s.sigma_fine))
        return {"sigma": sigma_ndc(px, self.cams), "noise": s.opacity_noise if coarse else 0.0,
                "decimate": s.decimate if f < s.coarse / 2 else 1, "lr_scale": 0.1 if f >= 1 - s.lr_drop else 1.0,
                "parsimony": min(max((f - s.parsimony_ramp[0]) / max(s.parsimony_ramp[1] - s.parsimony_ramp[0],
                                                                         1e-9), 0.0), 1.0),
                "ground": 0.0 if f < s.ground_warmup else 1.0}

    def _batch(self, idx) -> Camera:
        c = self.cams
        return Camera(c.R[idx], c.t[idx], c.fx[idx], c.fy[idx], c.cx[idx], c.cy[idx], c.width, c.height)

    # ---- one iteration ------------------------------------------------------------------------------------------
    def step(self, it: int) -> dict:
        s, m = self.s, self.model
        sch = self.schedule(it)
        self._it = it
        for g in self.opt.param_groups:
            g["lr"] = g["base"] * sch["lr_scale"]
        self.opt.param_groups[2]["lr"] *= sch["ground"]
        idx = torch.randperm(self.images.shape[0], generator=self.gen)[:s.batch]
        rgb, _ = m.render(self._batch(idx), sigma=sch["sigma"], faces_per_pixel=s.faces_per_pixel,
                          noise=sch["noise"], decimate=sch["decimate"], generator=self.gen)
        mse = ((rgb - self.images[idx]) ** 2).mean()
        pars, tv = m.parsimony(), m.texture_tv()
        ovl = m.overlap(s.overlap_points, generator=self.gen) if s.w_overlap > 0 else mse * 0
        loss = s.w_rgb * mse + s.w_parsimony * sch["parsimony"] * pars + s.w_tv * tv + s.w_overlap * ovl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            m.texture.clamp_(0, 1), m.ground_tex.clamp_(0, 1), m.background.clamp_(0, 1)
        done = it + 1
        if done % s.prune_every == 0 and done >= 0.2 * s.iterations:
            self.prune(s.delete_below)
        if any(done == max(1, round(f * s.iterations)) for f in s.respawn_at):
            self.respawn()
        return {"loss": loss.item(), "mse": mse.item(), "parsimony": pars.item(), "overlap": ovl.item(),
                "blocks": int((m.alpha().detach() >= s.keep_above).sum())}

    @torch.no_grad()
    def prune(self, below: float) -> int:
        """Delete (mark dead) blocks whose opacity fell below ``below``; returns how many are left."""
        a = torch.sigmoid(self.model.alpha_logit)
        self.model.alive &= a >= below
        return int(self.model.alive.sum())

    @torch.no_grad()
    def residual_votes(self, points: torch.Tensor, chunk: int = 4, blur: int = 5):
        """Score 3D points by how badly the current model explains the pixels they project to: the mean over the
        views that see a point (in front, inside the image) of the blurred per-pixel colour error (L1 over RGB) at
        its projection. A missed object scores high from every view (its pixels are wrong wherever it is seen);
        points in front of or behind it only from the few views whose rays pass through both, as in voxel voting.
        Also returns each point's mean observed colour. Returns (scores (P,), colours (P, 3))."""
        m, P = self.model, points.shape[0]
        num, den, col = torch.zeros(P), torch.zeros(P), torch.zeros(P, 3)
        sch = self.schedule(self._it)
        for i in range(0, self.images.shape[0], chunk):
            idx = torch.arange(i, min(i + chunk, self.images.shape[0]))
            cams = self._batch(idx)
            rgb, _ = m.render(cams, sigma=sch["sigma"], faces_per_pixel=self.s.faces_per_pixel)
            img = self.images[idx].float()
            err = (rgb.float() - img).abs().sum(-1, keepdim=True).permute(0, 3, 1, 2)  # (B, 1, H, W)
            err = torch.nn.functional.avg_pool2d(err, blur, 1, blur // 2, count_include_pad=False)
            uvz = cams.project(points.to(cams.R.dtype))                                # (B, P, 3)
            g = torch.stack([uvz[..., 0] / cams.width * 2 - 1, uvz[..., 1] / cams.height * 2 - 1], -1)
            ok = (uvz[..., 2] > 1e-3) & (g.abs() < 1).all(-1)
            e = torch.nn.functional.grid_sample(err, g[:, :, None].float(), align_corners=False)[:, 0, :, 0]
            c = torch.nn.functional.grid_sample(img.permute(0, 3, 1, 2), g[:, :, None].float(),
                                                align_corners=False)[..., 0].permute(0, 2, 1)
            num += (e * ok).sum(0)
            den += ok.sum(0)
            col += (c * ok[..., None]).sum(0)
        seen = den >= 0.5 * self.images.shape[0]
        return torch.where(seen, num / den.clamp_min(1), torch.zeros_like(num)), col / den.clamp_min(1)[:, None]

    @torch.no_grad()
    def respawn(self, step: float = 0.05, bounds: float = 0.9, height: float = 0.6, radius: float = 0.25,
                size: float = 0.1) -> list:
        """Re-initialise unused blocks (deleted, or alpha < ``respawn_below``) where the model explains the images
        worst: candidate centres on a grid (``step``) over the bounds above the ground are scored by
        ``residual_votes``; the best-scoring one (if above ``respawn_min``) gets a small upright ellipsoid of the
        colour seen there at opacity 0.5, its Adam moments reset; points within ``radius`` of it are then skipped
        for the next free block. Returns the new centres."""
        m, s = self.model, self.s
        free = torch.nonzero(~m.alive | (torch.sigmoid(m.alpha_logit) < s.respawn_below)).flatten()
        if len(free) == 0:
            return []
        ax = torch.arange(-bounds, bounds + 1e-9, step)
        ay = float(m.ground) + size + torch.arange(0.0, height + 1e-9, step)
        X, Y, Z = torch.meshgrid(ax, ay, ax, indexing="ij")
        pts = torch.stack([X, Y, Z], -1).reshape(-1, 3)
        score, colour = self.residual_votes(pts)
        placed = []
        for k in free.tolist():
            j = int(score.argmax())
            if float(score[j]) < s.respawn_min:
                break
            p = pts[j]
            placed.append((p.tolist(), float(score[j])))
            score[(pts - p).norm(dim=-1) < radius] = 0
            m.trans[k] = p
            m.log_scale[k] = math.log(size - m.s_min)
            m.shape[k] = 0
            yaw = float(torch.rand(1, generator=self.gen)) * math.pi
            m.rot6d[k] = torch.tensor([math.sin(yaw), 0.0, math.cos(yaw), math.cos(yaw), 0.0, -math.sin(yaw)])
            m.alpha_logit[k] = 0.0
            m.texture[k] = colour[j]
            m.alive[k] = True
            for p_ in (m.trans, m.log_scale, m.shape, m.rot6d, m.alpha_logit, m.texture):
                st = self.opt.state.get(p_, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        st[key][k] = 0
        self.respawned += placed
        return placed

    def kept(self) -> torch.Tensor:
        """(N,) bool: the blocks in the result (alive, alpha >= keep_above)."""
        with torch.no_grad():
            return self.model.alive & (torch.sigmoid(self.model.alpha_logit) >= self.s.keep_above)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load(self, blob: dict) -> None:
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["opt"])
        self.gen.set_state(blob["gen"])

    @torch.no_grad()
    def evaluate_psnr(self, chunk: int = 4) -> float:
        """PSNR (dB) over all training views of the result: the kept blocks with their opacities, ground, background."""
        m, sse, count = self.model, 0.0, 0
        for i in range(0, self.images.shape[0], chunk):
            idx = torch.arange(i, min(i + chunk, self.images.shape[0]))
            rgb, _ = m.render(self._batch(idx), sigma=sigma_ndc(self.s.sigma_fine, self.cams),
                              faces_per_pixel=self.s.faces_per_pixel, keep=self.kept())
            sse += float(((rgb - self.images[idx]) ** 2).sum())
            count += rgb.numel()
        return 10 * math.log10(1.0 / max(sse / count, 1e-12))


def block_points(model: BlocksModel, keep: torch.Tensor, frame: SceneFrame, n: int = 20000, level: int = 4,
                 seed: int = 0) -> np.ndarray:
    """(n, 3) world points uniform over the kept blocks' surfaces (fine superquadric meshes), or (0, 3)."""
    import trimesh

    from engine.fields import icosphere

    idx = torch.nonzero(keep).flatten()
    if len(idx) == 0:
        return np.zeros((0, 3))
    dirs, faces = icosphere(level, dtype=torch.float64)
    with torch.no_grad():
        local = superquadric_points(dirs, model.eps()[idx].double(), model.scale()[idx].double())
        v = local @ model.rotation()[idx].double().transpose(1, 2) + model.trans[idx].double()[:, None]
    meshes = [trimesh.Trimesh(frame.to_world(vi.numpy()), faces.numpy(), process=False) for vi in v]
    pts, _ = trimesh.util.concatenate(meshes).sample(n, return_index=True, seed=seed)
    return np.asarray(pts)


def chamfer_l1(a: np.ndarray, b: np.ndarray) -> float:
    """The issue's Chamfer-L1: ½ (mean_a min_b |a - b| + mean_b min_a |a - b|), in the points' units."""
    from engine.fields import chamfer_distance

    if len(a) == 0 or len(b) == 0:
        return math.inf
    return 0.5 * float(chamfer_distance(torch.as_tensor(a), torch.as_tensor(b), squared=False))
