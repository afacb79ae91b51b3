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
from tasks.avatar.scene import AvatarScene


@dataclass
class Config:
    data: str = ""
    """Dataset folder in the ZJU-MoCap layout; empty: generate (or reuse) the cached clothed-character sequence."""
    size: Annotated[int, Range(ge=32, le=1024)] = 128
    """Image size of the generated dataset (pixels, square)."""
    cams: Annotated[int, Range(ge=2)] = 10
    """Cameras of the generated dataset (3 are held out for novel views)."""
    frames_per_motion: Annotated[int, Range(ge=1)] = 6
    """Frames per motion of the generated dataset (train: walk, wave, squat; test: run, turn)."""
    iterations: Annotated[int, Range(ge=0)] = 600
    """Training iterations of the Gaussian avatar."""
    baseline_iterations: Annotated[int, Range(ge=0)] = 300
    """Training iterations of the mesh baseline."""
    n_gaussians: Annotated[int, Range(ge=100)] = 8000
    """Number of Gaussians, anchored to body faces drawn in proportion to their area."""
    rectifier: bool = True
    """Use the pose-conditioned rectifier MLP (False: static anchored Gaussians)."""
    denoiser: bool = True
    """Train the part-conditioned 2D denoiser UNet (its output is reported as 'gaussian_denoised')."""
    alternate: bool = True
    """Alternate denoise and rectify phases (False: train both jointly every step once the denoiser starts)."""
    views: Annotated[int, Range(ge=1)] = 3
    """Training cameras per iteration (one frame per iteration)."""
    lr: Annotated[float, Range(gt=0)] = 1.0
    """Multiplier on all Gaussian learning rates."""
    w_mask: Annotated[float, Range(ge=0)] = 0.5
    """Weight of the mask (alpha) MSE."""
    w_ssim: Annotated[float, Range(ge=0)] = 0.2
    """Weight of the (1 - SSIM) loss."""
    w_den: Annotated[float, Range(ge=0)] = 0.5
    """Weight of the denoised render's loss in the rectify phase."""
    period: Annotated[int, Range(ge=1)] = 20
    """Iterations per phase of the alternating denoise -> rectify loop."""
    frame_every: Annotated[int, Range(ge=1)] = 100
    """Add a training-progress frame to the video every this many iterations."""
    frames: Annotated[int, Range(ge=1)] = 24
    """Novel-pose video frames after training (held-out motions, a held-out camera)."""
    seed: Annotated[int, Range(ge=0)] = 0
    """Seed for batch sampling and initialisation."""


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
