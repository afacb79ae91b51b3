"""Gaussian avatar (3D²-Actor style): face-anchored Gaussians on the anny body, a pose-conditioned rectifier and a
part-conditioned 2D denoiser, trained on multi-view video of a clothed character and tested on held-out motions.

The data (ZJU-MoCap layout) is generated and cached on first use (`--set data=FOLDER` reads your own). The run
also fits the baseline (the posed body mesh with learned vertex colours) and reports novel-view and novel-pose
PSNR/SSIM inside each frame's bounding box for the baseline, the Gaussians and the Gaussians + denoiser.
"""
from dataclasses import dataclass
from typing import Annotated

import torch

from engine.scene import Range
from tasks.avatar.scene import AvatarConfig, AvatarScene


@dataclass
class Config(AvatarConfig):
    iterations: Annotated[int, Range(ge=0)] = 600
    frame_every: Annotated[int, Range(ge=1)] = 100
    n_gaussians: Annotated[int, Range(ge=100)] = 8000
    """Number of Gaussians, anchored to body faces drawn in proportion to their area."""
    rectifier: bool = True
    """Use the pose-conditioned rectifier MLP (False: static anchored Gaussians)."""
    denoiser: bool = True
    """Train the part-conditioned 2D denoiser UNet (its output is reported as 'gaussian_denoised')."""
    alternate: bool = True
    """Alternate denoise and rectify phases (False: train both jointly every step once the denoiser starts)."""
    w_den: Annotated[float, Range(ge=0)] = 0.5
    """Weight of the denoised render's loss in the rectify phase."""
    period: Annotated[int, Range(ge=1)] = 20
    """Iterations per phase of the alternating denoise -> rectify loop."""


class Scene(AvatarScene):
    name = "gaussian"

    def make_trainer(self):
        from tasks.avatar.train import GaussianTrainer

        c = self.cfg
        return GaussianTrainer(self.seq, c.iterations, c.n_gaussians, c.rectifier, c.denoiser, c.alternate, c.views,
                               c.lr, c.w_mask, c.w_ssim, c.w_den, c.period, seed=c.seed)

    def model_metrics(self):
        t = self.trainer
        r = t.metrics("gaussian_", t.predict)
        if t.use_den:
            r.update(t.metrics("gaussian_denoised_", lambda f, cams: t.predict(f, cams, denoised=True)))
        r.update(n_gaussians=len(t.model.face), train_cams=len(self.seq.train_cams),
                 test_cams=len(self.seq.test_cams))
        r.update(t.part_report())
        return r

    def tiles(self, f, cam):
        t = self.trainer
        imgs, labels = [t.predict(f, cam)[0]], ["gaussians"]
        if t.use_den:
            imgs.append(t.predict(f, cam, denoised=True)[0])
            labels.append("+ denoiser")
        return imgs, labels

    def model_geometry(self, f):
        """The Gaussians' centres in their colours (M hides the body mesh under them)."""
        t = self.trainer
        with torch.no_grad():
            means, scales, _, _, col = t.model.gaussians(self.seq.verts[f], t.faces, t.pose[f])
        return {"particles": {"x": means.double().cpu().numpy(), "color": col.double().clamp(0, 1).cpu().numpy(),
                              "radius": float(scales.mean())}}

    def exports(self):
        from tasks.avatar.gaussian import gaussians_ply

        out = {}
        t = self.trainer
        with torch.no_grad():
            for f in self.seq.test_frames:
                g = t.model.gaussians(self.seq.verts[f], t.faces, t.pose[f])
                out[f"gaussians/frame_{f:04d}.ply"] = gaussians_ply(*g)
        out.update(self.novel_pose_panels())
        return out
