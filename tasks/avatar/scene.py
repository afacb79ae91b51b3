"""What the avatar scenes share: data, the mesh baseline, the training loop, the metrics and the comparison panels.

``scenes/avatar_gaussian.py`` and ``scenes/avatar_hybrid.py`` subclass ``AvatarScene`` and add only their model:
``make_trainer()``, ``model_metrics()``, ``tiles()`` (the panel images after ground truth and baseline) and their
own exports. Their Config subclasses ``AvatarConfig``, which declares the fields both share (documentation and
ranges are read through the dataclass MRO), and adds only the model's own.
"""
from dataclasses import dataclass
from typing import Annotated

import torch

from engine import backend
from engine.scene import Range


@dataclass
class AvatarConfig:
    data: str = ""
    """Dataset folder in the ZJU-MoCap layout; empty: generate (or reuse) the cached clothed-character sequence."""
    size: Annotated[int, Range(ge=32, le=1024)] = 128
    """Image size of the generated dataset (pixels, square)."""
    cams: Annotated[int, Range(ge=2)] = 10
    """Cameras of the generated dataset (3 are held out for novel views)."""
    frames_per_motion: Annotated[int, Range(ge=1)] = 6
    """Frames per motion of the generated dataset (train: walk, wave, squat; test: run, turn)."""
    iterations: Annotated[int, Range(ge=0)] = 300
    """Training iterations of the avatar."""
    baseline_iterations: Annotated[int, Range(ge=0)] = 300
    """Training iterations of the mesh baseline."""
    views: Annotated[int, Range(ge=1)] = 3
    """Training cameras per iteration (one frame per iteration)."""
    lr: Annotated[float, Range(gt=0)] = 1.0
    """Multiplier on all of the avatar's learning rates."""
    w_mask: Annotated[float, Range(ge=0)] = 0.5
    """Weight of the mask (alpha) MSE."""
    w_ssim: Annotated[float, Range(ge=0)] = 0.2
    """Weight of the (1 - SSIM) loss."""
    frame_every: Annotated[int, Range(ge=1)] = 50
    """Add a training-progress frame to the video every this many iterations."""
    frames: Annotated[int, Range(ge=1)] = 24
    """Novel-pose video frames after training (held-out motions, a held-out camera)."""
    seed: Annotated[int, Range(ge=0)] = 0
    """Seed for batch sampling and initialisation."""


class AvatarScene:
    name = "avatar"
    """Used in the progress bar: "<name> avatar"."""

    def __init__(self, config):
        self.cfg = config

    # ---- to override ------------------------------------------------------------------------------------------
    def make_trainer(self):
        raise NotImplementedError

    def model_metrics(self) -> dict:
        """The model's prefixed PSNR/SSIM entries and any model-specific counts."""
        raise NotImplementedError

    def tiles(self, f: int, cam: list, **options):
        """``(images, labels)`` of the model for frame ``f`` seen from ``cam`` (one camera index in a list)."""
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------------------------------------
    def build(self):
        from tasks.avatar.common import load_sequence
        from tasks.avatar.train import BaselineTrainer

        backend.ensure()
        c = self.cfg
        self.seq = load_sequence(c.data, c.size, c.cams, c.frames_per_motion)
        self.trainer = self.make_trainer()
        self.baseline = BaselineTrainer(self.seq, c.views, seed=c.seed)
        self.results = {}
        self.frame = 0

    def optimize(self, run):
        c = self.cfg
        for it in run.loop(c.iterations, state=self.trainer.state, load=self.trainer.load, desc=f"{self.name} avatar"):
            run.log(**self.trainer.step(it))
            if it % c.frame_every == 0 or it == c.iterations - 1:
                run.frame(self.panel(self.seq.train_frames[it % len(self.seq.train_frames)], training=it))
        for it in range(c.baseline_iterations):
            self.baseline.step(it)
        self.evaluate()

    def evaluate(self):
        from tasks.avatar.train import report

        t, b = self.trainer, self.baseline
        r = dict(b.metrics("baseline_", b.predict))
        r.update(self.model_metrics())
        r.update(seconds_per_iteration=report(t.step_times), baseline_seconds_per_iteration=report(b.step_times),
                 iterations=len(t.step_times), train_frames=len(self.seq.train_frames),
                 test_frames=len(self.seq.test_frames))
        self.results = r

    @torch.no_grad()
    def panel(self, f, training=None, **options):
        """Comparison strip for frame ``f`` from the first held-out camera: ground truth, baseline, the model's
        tiles; captioned with the training iteration or as a novel pose."""
        from tasks.avatar.viz import panel

        cam = [self.seq.test_cams[0]]
        imgs, labels = self.tiles(f, cam, **options)
        imgs = [self.seq.images[cam[0], f], self.baseline.predict(f, cam)[0], *imgs]
        labels = ["ground truth", "baseline mesh", *labels]
        motion = self.seq.ds.split.get("motions", {}).get(str(f), "")
        cap = (f"training it {training}, frame {f} ({motion})" if training is not None
               else f"novel pose: frame {f} ({motion}), held-out camera {self.seq.ds.cam_names[cam[0]]}")
        return panel(imgs, labels, cap)

    def novel_pose_panels(self, **options) -> dict:
        """``{novel_pose_FFFF.png: panel}`` for about four held-out frames."""
        tf = self.seq.test_frames or self.seq.train_frames
        return {f"novel_pose_{f:04d}.png": self.panel(f, **options) for f in tf[:: max(1, len(tf) // 4)]}

    def step(self, frame: int):
        self.frame = frame

    def render(self):
        frames = self.seq.test_frames or self.seq.train_frames
        return self.panel(frames[self.frame % len(frames)])

    @torch.no_grad()
    def geometry(self) -> dict:
        """The posed body mesh of the video's current frame (y up, metres) on the floor, plus what the model
        adds (``model_geometry``)."""
        frames = self.seq.test_frames or self.seq.train_frames
        f = frames[self.frame % len(frames)]
        verts = self.seq.verts[f].double().cpu().numpy()
        out = {"meshes": [{"vertices": verts, "faces": self.seq.body.faces.cpu().numpy(), "color": (0.85, 0.72, 0.62)}]}
        out.update(self.model_geometry(f))
        lo, hi = verts.min(0), verts.max(0)
        out.update(ground=float(lo[1]), bounds=(lo - 0.1, hi + 0.1))
        return out

    def model_geometry(self, f: int) -> dict:
        """Geometry keys (see ``engine.viewer``) the model adds or replaces for frame ``f``."""
        return {}

    def metrics(self):
        return dict(self.results)
