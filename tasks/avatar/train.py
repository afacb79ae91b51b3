"""Training loops of the avatars, written against ``engine.runner.Run`` (progress, checkpoints, --resume,
loss.png come from there). Each trainer exposes ``step(it) -> dict of scalars``, ``state()``/``load()`` for
checkpoints and ``predict(frame, cams)`` for evaluation and videos."""
from __future__ import annotations

import random
import time

import numpy as np
import torch

from .common import Sequence, evaluate, ssim
from .gaussian import Denoiser, GaussianAvatar, MeshBaseline, major_bones

__all__ = ["BaselineTrainer", "GaussianTrainer", "HybridTrainer", "pose_features", "part_images", "crop_box", "report"]


def pose_features(seq: Sequence) -> torch.Tensor:
    """(N, 3 * major bones) pose vectors: the rotations of the trunk and limb bones per frame."""
    idx = major_bones(seq.body.bone_labels)
    p = torch.as_tensor(seq.ds.poses, dtype=seq.verts.dtype)
    return p[:, idx].reshape(len(p), -1)


class _Parts:
    """Rendered body-part segmentations (one-hot, hard-rasterized posed body), cached per (frame, camera)."""

    def __init__(self, seq: Sequence):
        self.seq = seq
        self.cache = {}
        n = int(seq.parts.max()) + 1
        self.onehot = torch.nn.functional.one_hot(seq.parts, 8 if n <= 8 else n).to(seq.verts.dtype)

    @torch.no_grad()
    def __call__(self, f: int, cams: list) -> torch.Tensor:
        from engine.render import render_mesh

        need = [c for c in cams if (f, c) not in self.cache]
        if need:
            out = render_mesh(self.seq.verts[f], self.seq.body.faces, self.seq.cameras(need), colors=self.onehot,
                              mode="hard", background=0.0).rgb
            for k, c in enumerate(need):
                self.cache[(f, c)] = out[k]
        return torch.stack([self.cache[(f, c)] for c in cams])


def part_images(seq: Sequence):
    return _Parts(seq)


def crop_box(seg: torch.Tensor, pad: int = 6, multiple: int = 4):
    """(y0, y1, x0, x1) around the union of B segmentations (B, H, W, P), sides a multiple of ``multiple`` (the
    UNet halves the crop twice)."""
    B, H, W, _ = seg.shape
    occ = seg.sum(-1).amax(0) > 0
    ys, xs = torch.nonzero(occ, as_tuple=True)
    if len(ys) == 0:
        return 0, H, 0, W
    out = []
    for lo, hi, n in ((int(ys.min()) - pad, int(ys.max()) + 1 + pad, H), (int(xs.min()) - pad, int(xs.max()) + 1 + pad, W)):
        lo, hi = max(lo, 0), min(hi, n)
        size = min(n - n % multiple, ((hi - lo + multiple - 1) // multiple) * multiple)
        lo = min(max(lo - (size - (hi - lo)) // 2, 0), n - size)
        out += [lo, lo + size]
    return tuple(out)


class _Base:
    def __init__(self, seq: Sequence, views: int, seed: int):
        self.seq, self.views = seq, views
        self.rng = random.Random(seed)
        self.faces = seq.body.faces
        self.step_times = []

    def batch(self):
        f = self.rng.choice(self.seq.train_frames)
        cams = sorted(self.rng.sample(self.seq.train_cams, min(self.views, len(self.seq.train_cams))))
        return f, cams

    def metrics(self, prefix: str, predict) -> dict:
        seq = self.seq
        nv = evaluate(seq, predict, seq.test_cams, seq.train_frames[::2])
        npose = evaluate(seq, predict, list(range(len(seq.ds.cam_names))), seq.test_frames)
        return {f"{prefix}novel_view_psnr": nv["psnr"], f"{prefix}novel_view_ssim": nv["ssim"],
                f"{prefix}novel_pose_psnr": npose["psnr"], f"{prefix}novel_pose_ssim": npose["ssim"]}


class BaselineTrainer(_Base):
    """The posed body mesh with learned per-vertex colours (RGB MSE)."""

    def __init__(self, seq: Sequence, views: int = 3, lr: float = 0.05, seed: int = 0):
        super().__init__(seq, views, seed)
        self.model = MeshBaseline(len(seq.body.rest_verts), dtype=seq.verts.dtype)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)

    def step(self, it: int) -> dict:
        t0 = time.perf_counter()
        f, cams = self.batch()
        rgb, _ = self.model.render(self.seq.verts[f], self.faces, self.seq.cameras(cams))
        loss = ((rgb - self.seq.images[cams, f]) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step_times.append(time.perf_counter() - t0)
        return {"loss": loss.item()}

    @torch.no_grad()
    def predict(self, f: int, cams: list) -> torch.Tensor:
        return self.model.render(self.seq.verts[f], self.faces, self.seq.cameras(cams))[0]

    def state(self):
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "rng": self.rng.getstate()}

    def load(self, blob):
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["opt"])
        self.rng.setstate(blob["rng"])


class GaussianTrainer(_Base):
    """Gaussian avatar + optional denoiser, trained by alternating phases.

    Losses: RGB MSE + ``w_mask`` mask MSE + ``w_ssim`` (1 - SSIM). With the denoiser, after ``denoise_start``
    (a fraction of the iterations) the loop alternates every ``period`` iterations between a denoise phase (the
    UNet learns to map detached renders + part segmentation to the target) and a rectify phase (Gaussians and
    rectifier learn from the raw render's loss plus ``w_den`` times the loss of the denoised render, the UNet
    frozen, so the rectifier learns what the denoiser can not fix).
    """

    def __init__(self, seq: Sequence, iterations: int, n_gaussians: int = 8000, rectifier: bool = True,
                 denoiser: bool = True, alternate: bool = True, views: int = 3, lr: float = 1.0,
                 w_mask: float = 0.5, w_ssim: float = 0.2, w_den: float = 0.5, period: int = 20,
                 denoise_start: float = 0.4, seed: int = 0):
        super().__init__(seq, views, seed)
        dt = seq.verts.dtype
        torch.manual_seed(seed)
        self.pose = pose_features(seq)
        self.model = GaussianAvatar(seq.body.rest_verts, self.faces, self.pose.shape[1], n_gaussians=n_gaussians,
                                    rectifier=rectifier, seed=seed)
        m = self.model
        groups = [{"params": [m.colour], "lr": 0.03 * lr}, {"params": [m.opacity], "lr": 0.03 * lr},
                  {"params": [m.offset], "lr": 2e-3 * lr}, {"params": [m.log_scale], "lr": 0.01 * lr},
                  {"params": [m.quat], "lr": 0.005 * lr}]
        if rectifier:
            groups.append({"params": [m.latent, *m.pose_enc.parameters(), *m.mlp.parameters()], "lr": 1e-3 * lr})
        self.opt = torch.optim.Adam(groups)
        self.iterations = iterations
        self.use_den = denoiser
        self.alternate = alternate
        self.w = dict(mask=w_mask, ssim=w_ssim, den=w_den)
        self.period = period
        self.den_start = int(denoise_start * iterations)
        self.parts = part_images(seq)
        self.part_times = []
        if denoiser:
            self.den = Denoiser(dtype=dt)
            self.opt_d = torch.optim.Adam(self.den.parameters(), lr=2e-3)

    def _loss(self, rgb, alpha, target, mask):
        l_rgb = ((rgb - target) ** 2).mean()
        loss = l_rgb + self.w["ssim"] * (1 - ssim(rgb, target))
        if alpha is not None:
            loss = loss + self.w["mask"] * ((alpha - mask) ** 2).mean()
        return loss, l_rgb

    def denoise(self, rgb, alpha, seg):
        """Denoised (B, H, W, 3) renders: the UNet runs on the crop around the person, the rest stays as is."""
        y0, y1, x0, x1 = crop_box(seg)
        out = rgb.clone()
        out[:, y0:y1, x0:x1] = self.den(rgb[:, y0:y1, x0:x1], alpha[:, y0:y1, x0:x1], seg[:, y0:y1, x0:x1])
        return out

    def phase(self, it: int) -> str:
        if not self.use_den or it < self.den_start:
            return "rectify"
        if not self.alternate:
            return "joint"
        return "denoise" if ((it - self.den_start) // self.period) % 2 == 0 else "rectify"

    def step(self, it: int) -> dict:
        t0 = time.perf_counter()
        seq = self.seq
        f, cams = self.batch()
        target, mask = seq.images[cams, f], seq.masks[cams, f]
        ph = self.phase(it)
        out = {}
        tm = {"phase": ph}
        if ph == "denoise":
            with torch.no_grad():
                rgb, alpha = self.model.render(seq.verts[f], self.faces, seq.cameras(cams), self.pose[f])
            tr = t1 = time.perf_counter()
            den = self.denoise(rgb, alpha, self.parts(f, cams))
            t2 = time.perf_counter()
            loss, l_rgb = self._loss(den, None, target, mask)
            t3 = time.perf_counter()
            self.opt_d.zero_grad()
            loss.backward()
            t4 = time.perf_counter()
            self.opt_d.step()
            out["denoised_mse"] = l_rgb.item()
        else:
            rgb, alpha = self.model.render(seq.verts[f], self.faces, seq.cameras(cams), self.pose[f])
            tr = time.perf_counter()
            t1 = t2 = 0.0
            loss, l_rgb = self._loss(rgb, alpha, target, mask)
            if ph in ("rectify", "joint") and self.use_den and it >= self.den_start:
                t1 = time.perf_counter()
                den = self.denoise(rgb, alpha, self.parts(f, cams))
                t2 = time.perf_counter()
                l_den, l_den_rgb = self._loss(den, None, target, mask)
                loss = loss + self.w["den"] * l_den
                out["denoised_mse"] = l_den_rgb.item()
            m = self.model
            # keep scales from blowing up into blobs and offsets from drifting far off the body
            loss = loss + 1e-3 * torch.relu(m.log_scale + 3.5).pow(2).mean() + 1e-2 * (m.offset ** 2).sum(1).mean()
            t3 = time.perf_counter()
            self.opt.zero_grad()
            if self.use_den:
                self.opt_d.zero_grad()
            loss.backward()
            t4 = time.perf_counter()
            self.opt.step()
            if ph == "joint":
                self.opt_d.step()
        t5 = time.perf_counter()
        # render: the rectifier + splatting forward; denoise: the UNet forward; loss: losses incl. SSIM
        tm.update(render=tr - t0, denoise=t2 - t1, loss=t3 - tr - (t2 - t1), backward=t4 - t3, adam=t5 - t4)
        self.part_times.append(tm)
        out.update(loss=loss.item(), rgb_mse=l_rgb.item())
        self.step_times.append(time.perf_counter() - t0)
        return out

    def part_report(self) -> dict:
        """Median seconds of each part of an iteration, per phase (rectify: Gaussians only, or Gaussians with the
        frozen UNet's loss once the denoiser runs; denoise: UNet only)."""
        out = {}
        for ph in ("rectify", "denoise", "joint"):
            rows = [t for t in self.part_times[2:] if t["phase"] == ph]
            for k in ("render", "denoise", "loss", "backward", "adam"):
                if rows:
                    out[f"seconds_{ph}_{k}"] = float(np.median([t[k] for t in rows]))
        return out

    @torch.no_grad()
    def predict(self, f: int, cams: list, denoised: bool = False) -> torch.Tensor:
        rgb, alpha = self.model.render(self.seq.verts[f], self.faces, self.seq.cameras(cams), self.pose[f])
        if denoised and self.use_den:
            rgb = self.denoise(rgb, alpha, self.parts(f, cams))
        return rgb

    def state(self):
        s = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "rng": self.rng.getstate()}
        if self.use_den:
            s.update(den=self.den.state_dict(), opt_d=self.opt_d.state_dict())
        return s

    def load(self, blob):
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["opt"])
        self.rng.setstate(blob["rng"])
        if self.use_den:
            self.den.load_state_dict(blob["den"])
            self.opt_d.load_state_dict(blob["opt_d"])


def report(times: list) -> float | None:
    """Median seconds per iteration (the first iterations include kernel compilation)."""
    return float(np.median(times[2:] if len(times) > 4 else times)) if times else None


class HybridTrainer(_Base):
    """Hybrid mesh + clothing-field avatar (DELTA): RGB + mask MSE + SSIM, plus DELTA's clothing-segmentation loss
    (the field's opacity in front of the mesh against the cloth mask, where the data has one) and a small offset
    penalty keeping the body mesh near the model's shape. The mesh learns through the terminal colour and the hard
    raster's interior gradients, the field through the volume samples.

    offset_every: the body-vertex offsets (whose raster backward costs more than everything else in an iteration)
        are updated every this many iterations, by their own optimiser; 0 freezes them.
    """

    def __init__(self, seq: Sequence, views: int = 3, n_samples: int = 48, voxel: float = 0.025,
                 cutoff: float = 0.15, w_mask: float = 0.5, w_ssim: float = 0.2, w_offset: float = 10.0,
                 lr: float = 1.0, seed: int = 0, w_cloth: float = 1.0, offset_every: int = 4,
                 density_bias: float = -5.0, warm_iterations: int = 80):
        super().__init__(seq, views, seed)
        from .hybrid import HybridAvatar

        torch.manual_seed(seed)
        self.model = HybridAvatar(seq.body, voxel=voxel, cutoff=cutoff, density_bias=density_bias)
        m = self.model
        self.opt = torch.optim.Adam([{"params": [m.colour], "lr": 0.05 * lr},
                                     {"params": [m.encoding.table], "lr": 0.02 * lr},
                                     {"params": m.head.parameters(), "lr": 5e-3 * lr}])
        self.opt_off = torch.optim.Adam([m.offset], lr=5e-4 * lr)
        self.S = n_samples
        self.w = dict(mask=w_mask, ssim=w_ssim, offset=w_offset, cloth=w_cloth if seq.cloth is not None else 0.0)
        self.offset_every = offset_every
        self.gen = torch.Generator().manual_seed(seed)
        self.part_times = []
        self.warm_iterations = warm_iterations
        self.warm = None                 # {"seconds", "loss", "hull_points"} once the warm start ran

    def prepare(self, frames):
        """Compute (and cache) the posed grids' canonical coordinates for these frames."""
        for f in frames:
            self.model.posed_grid(f, self.seq.transforms[f])

    @torch.no_grad()
    def carve(self, frames=None, min_views: int = 2):
        """Space carving of the clothing from the cloth segmentations: (canonical points (P, 3), in-hull (P,) bool,
        mean colour (P, 3)) over the posed grids of ``frames`` (default: the training frames).

        A grid point is in the clothing's hull when every training view that sees it (in front of the body mesh's
        depth there, so the body's occlusion is respected) sees clothing at its pixel, and at least ``min_views``
        views see it (points inside the body, which no view sees, stay empty). Its colour is the mean of those
        views' pixels.
        """
        from engine.render import render_mesh

        seq, m = self.seq, self.model
        cams = seq.train_cams
        H, W = seq.images.shape[2:4]
        out_p, out_h, out_c = [], [], []
        for f in seq.train_frames if frames is None else frames:
            T = seq.transforms[f]
            canon, valid, shape, (lo, hi) = m.posed_grid(f, T)
            axes = [torch.linspace(lo[i], hi[i], shape[i], dtype=canon.dtype) for i in range(3)]
            P = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)[valid]
            C = seq.cameras(cams)
            body = render_mesh(seq.verts[f], seq.body.faces, C, mode="hard")
            depth, cover = body.depth, body.alpha > 0.5                                      # (B, H, W)
            uvz = C.project(P)                                                               # (B, p, 3)
            u, v, z = uvz[..., 0].floor().long(), uvz[..., 1].floor().long(), uvz[..., 2]
            inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (z > 0)
            uc, vc = u.clamp(0, W - 1), v.clamp(0, H - 1)
            b = torch.arange(len(cams))[:, None].expand_as(uc)
            seen = inside & (~cover[b, vc, uc] | (z < depth[b, vc, uc] + 0.01))
            cloth = seq.cloth[cams, f][b, vc, uc] > 0.5
            hull = (seen.sum(0) >= min_views) & ~(seen & ~cloth).any(0)
            w = (seen & cloth).to(P.dtype)
            col = (seq.images[cams, f][b, vc, uc] * w[..., None]).sum(0) / w.sum(0).clamp_min(1)[:, None]
            out_p.append(canon[valid])
            out_h.append(hull)
            out_c.append(col)
        return torch.cat(out_p), torch.cat(out_h), torch.cat(out_c)

    def warm_start(self, iterations: int = 80, batch: int = 32768):
        """Fit the clothing field to the carved hull before training (DELTA-style density init near the garment):
        a 5 cm step's opacity 1 inside the hull and 0 outside, and the hull points' mean colours. Returns the
        final loss, or None where the data has no cloth segmentations."""
        if self.seq.cloth is None or iterations <= 0:
            return None
        pts, hull, col = self.carve()
        m = self.model
        opt = torch.optim.Adam([{"params": [m.encoding.table], "lr": 0.03},
                                {"params": m.head.parameters(), "lr": 1e-2}])
        g = torch.Generator().manual_seed(0)
        hf = hull.to(pts.dtype)
        for _ in range(iterations):
            idx = torch.randint(0, len(pts), (min(batch, len(pts)),), generator=g)
            sig, c = m.field(pts[idx])
            a = 1 - torch.exp(-0.05 * sig)
            loss = ((a - hf[idx]) ** 2).mean() + (((c - col[idx]) ** 2).sum(1) * hf[idx]).sum() / hf[idx].sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.hull_points = int(hull.sum())
        return float(loss.detach())

    def step(self, it: int) -> dict:
        if it == 0 and self.warm is None and self.warm_iterations > 0 and self.seq.cloth is not None:
            t = time.perf_counter()
            loss = self.warm_start(self.warm_iterations)
            self.warm = {"seconds": time.perf_counter() - t, "loss": loss, "hull_points": self.hull_points}
        t0 = time.perf_counter()
        seq = self.seq
        f, cams = self.batch()
        fresh = f not in self.model._grids
        move = self.offset_every > 0 and it % self.offset_every == 0
        times = {}
        r = self.model.render(f, seq.transforms[f], seq.cameras(cams), self.S, grad_offsets=move, timer=times)
        target, mask = seq.images[cams, f], seq.masks[cams, f]
        l_rgb = ((r.rgb - target) ** 2).mean()
        loss = l_rgb + self.w["mask"] * ((r.alpha - mask) ** 2).mean() + self.w["ssim"] * (1 - ssim(r.rgb, target))
        out = {}
        if self.w["cloth"] > 0:
            l_cloth = ((r.cloth_alpha - seq.cloth[cams, f]) ** 2).mean()
            loss = loss + self.w["cloth"] * l_cloth
            out["cloth_mse"] = l_cloth.item()
        if move:
            loss = loss + self.w["offset"] * (self.model.offset ** 2).sum(1).mean()
        t1 = time.perf_counter()
        self.opt.zero_grad()
        self.opt_off.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        self.opt.step()
        if move:
            self.opt_off.step()
        t3 = time.perf_counter()
        times.update(loss=t1 - t0 - sum(times.values()), backward=t2 - t1, adam=t3 - t2, offsets=float(move),
                     new_grid=float(fresh))
        self.part_times.append(times)
        self.step_times.append(time.perf_counter() - t0)
        out.update(loss=loss.item(), rgb_mse=l_rgb.item())
        return out

    def part_report(self) -> dict:
        """Median seconds of each part of an iteration (iterations that built a new frame's grid left out; the
        backward split by whether the offsets were updated)."""
        rows = [t for t in self.part_times[2:] if not t["new_grid"]] or self.part_times
        out = {}
        for k in ("lbs", "mesh", "field", "volume", "loss", "adam"):
            v = [t[k] for t in rows if k in t]
            if v:
                out[f"seconds_{k}"] = float(np.median(v))
        for moved, name in ((1.0, "seconds_backward_with_offsets"), (0.0, "seconds_backward")):
            v = [t["backward"] for t in rows if t["offsets"] == moved]
            if v:
                out[name] = float(np.median(v))
        g = [t["grid"] for t in self.part_times if t.get("new_grid") and "grid" in t]
        if g:
            out["seconds_new_frame_grid"] = float(np.median(g))
        if self.warm is not None:
            out.update(warm_start_seconds=self.warm["seconds"], warm_start_loss=self.warm["loss"],
                       warm_start_hull_points=self.warm["hull_points"])
        return out

    @torch.no_grad()
    def predict(self, f: int, cams: list) -> torch.Tensor:
        return self.model.render(f, self.seq.transforms[f], self.seq.cameras(cams), self.S, stratified=False).rgb

    def state(self):
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "opt_off": self.opt_off.state_dict(),
                "rng": self.rng.getstate()}

    def load(self, blob):
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["opt"])
        self.opt_off.load_state_dict(blob["opt_off"])
        self.rng.setstate(blob["rng"])
