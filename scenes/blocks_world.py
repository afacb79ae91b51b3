"""Blocks world: parse posed photos into a few textured superquadric blocks on a ground plane (Differentiable Blocks World on tide's soft rasterizer); with no data, a synthetic scene.

`tide run blocks_world --set data=FOLDER` reads a Blender/nerfstudio transforms.json or a DTU/IDR cameras.npz
folder; the up axis, centre, radius and ground are estimated, never hand-set. Outputs: blocks.json, blocks.obj,
blocks.glb, video.mp4 (input | reconstruction | blocks in flat colours), metrics.json (blocks, PSNR, Chamfer-L1
where the folder has gt_points.npy or gt.obj), loss.png, checkpoints.
"""
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch

from engine import backend
from engine.errors import ConfigError
from engine.scene import Choices, Range


@dataclass
class Config:
    data: str = ""
    """Folder with transforms.json (Blender/nerfstudio) or cameras.npz + image/ (DTU/IDR). Empty: make a synthetic
    scene (see synthetic_seed) in a temporary folder and fit it."""
    resolution: Annotated[int, Range(ge=0, le=2048)] = 96
    """Longest image side used for fitting, pixels (images are box-filtered down; 0 keeps them)."""
    alpha: Annotated[str, Choices("white", "mask")] = "white"
    """RGBA inputs: "white" composites over white; "mask" also drops the ground and fits the blocks over a white
    background (the alpha-composited inputs)."""
    max_blocks: Annotated[int, Range(ge=1, le=64)] = 10
    """Number of superquadrics at the start (DBW: 10); unused ones fade out and are deleted."""
    iterations: Annotated[int, Range(ge=0)] = 1500
    """Adam iterations of the whole schedule."""
    batch: Annotated[int, Range(ge=1)] = 4
    """Views per iteration (DBW: 4)."""
    lr: Annotated[float, Range(gt=0)] = 0.02
    """Learning rate of the block geometry and opacities."""
    lr_texture: Annotated[float, Range(gt=0)] = 0.05
    """Learning rate of the block textures."""
    w_parsimony: Annotated[float, Range(ge=0)] = 0.0003
    """Weight of the parsimony term mean(sqrt(alpha)) (ramped in from 20 % to 50 % of the run)."""
    w_tv: Annotated[float, Range(ge=0)] = 0.1
    """Weight of the texture total variation."""
    w_overlap: Annotated[float, Range(ge=0)] = 1.0
    """Weight of the overlap penalty (summed occupancy above 1.95 at sampled points)."""
    texture_size: Annotated[int, Range(ge=2, le=512)] = 32
    """Texels per side of each block's texture."""
    mesh_level: Annotated[int, Range(ge=0, le=4)] = 2
    """Icosphere subdivision of each block (2: 320 faces)."""
    synthetic_seed: Annotated[int, Range(ge=0)] = 1000
    """Seed of the synthetic scene when data is empty."""
    synthetic_views: Annotated[int, Range(ge=2, le=200)] = 24
    """Views of the synthetic scene."""
    simulate: bool = False
    """Drop the recovered blocks as elastic MPM bodies on the ground and write simulation.mp4."""
    frames: Annotated[int, Range(ge=0)] = 96
    """Video frames of the orbit (input | reconstruction | flat colours)."""
    torch_threads: Annotated[int, Range(ge=0, le=256)] = 1
    """torch CPU threads (1 avoids OpenMP spin-waiting against Taichi's threads on a busy CPU)."""
    seed: Annotated[int, Range(ge=0)] = 0
    """Seed of the random block initialisation and the view batches."""

    def validate(self):
        if self.resolution and self.resolution < 16:
            raise ConfigError(f"resolution must be 0 (the images' own) or >= 16, got {self.resolution}")


class Scene:
    def __init__(self, config: Config):
        config.validate()
        self.cfg = config

    # ---- set-up -------------------------------------------------------------------------------------------------
    def build(self):
        import tempfile

        from tasks.blocks import estimate_frame, load_gt_points, load_views
        from tasks.blocks.fit import FitSettings, Fitter, block_points, chamfer_l1
        from tasks.blocks.model import BlocksModel, sweep_ground
        from tasks.blocks.synthetic import write_scene

        backend.ensure()
        c = self.cfg
        torch.set_num_threads(max(1, c.torch_threads))
        folder = c.data
        if not folder:
            self._tmp = tempfile.TemporaryDirectory(prefix="tide-blocks-")
            folder = self._tmp.name
            info = write_scene(folder, seed=c.synthetic_seed, views=c.synthetic_views, size=max(c.resolution, 16))
            print(f"blocks_world: synthetic scene (seed {c.synthetic_seed}): {info['blocks']} blocks "
                  f"{', '.join(info['kinds'])}, {c.synthetic_views} views")
        views = load_views(folder, resolution=c.resolution, dtype=torch.float32)
        self.views = views
        self.gt = load_gt_points(folder)
        self.frame = estimate_frame(views.cameras)
        cams = self.frame.cameras_to_norm(views.cameras)
        self.cams = cams
        images = views.images
        mask_mode = c.alpha == "mask" and views.masks is not None
        if mask_mode:
            ground, gtex = -0.6, None
        else:
            ground, gtex, _ = sweep_ground(images, cams, np.linspace(-1.2, 0.3, 31), 2.0, 128)
        print(f"blocks_world: {self.frame.describe()}; ground plane {ground:+.3f} radii along up from the centre "
              f"({views.count} views, {cams.width}x{cams.height})")
        gen = torch.Generator().manual_seed(c.seed)
        self.model = BlocksModel(c.max_blocks, level=c.mesh_level, tex_size=c.texture_size, ground=ground,
                                 ground_tex=gtex, generator=gen, colour=images.reshape(-1, 3).mean(0))
        if mask_mode:                     # no ground: the blocks over a white background, as the inputs are
            self.model.use_env = False
            with torch.no_grad():
                self.model.background.fill_(1.0)
        self.settings = FitSettings(iterations=c.iterations, batch=min(c.batch, views.count), lr=c.lr,
                                    lr_texture=c.lr_texture, w_parsimony=c.w_parsimony, w_tv=c.w_tv,
                                    w_overlap=c.w_overlap, lr_ground=0.0 if mask_mode else 0.005)
        self.fitter = Fitter(self.model, images, cams, self.settings, seed=c.seed)
        self._chamfer = lambda keep: (None if self.gt is None else chamfer_l1(
            block_points(self.model, keep, self.frame, seed=c.seed), self.gt))
        self.chamfer_start = self._chamfer(self.model.alive.clone())
        self.frame_index = 0
        self._order = self._orbit_order()

    def _orbit_order(self):
        # training views sorted by azimuth about the estimated up axis, so the video orbits
        C = self.frame.to_norm(self.views.cameras.center.double().numpy())
        return np.argsort(np.arctan2(C[:, 2], C[:, 0]))

    # ---- optimisation -------------------------------------------------------------------------------------------
    def optimize(self, run):
        f = self.fitter
        for it in run.loop(self.settings.iterations, state=f.state, load=f.load, desc="blocks"):
            run.log(**f.step(it))
        f.prune(self.settings.delete_below)

    # ---- video --------------------------------------------------------------------------------------------------
    def step(self, frame: int):
        self.frame_index = frame

    def render(self):
        from PIL import Image, ImageDraw

        from tasks.blocks.fit import sigma_ndc

        n = len(self._order)
        pos = self.frame_index * n / max(self.cfg.frames, 1)
        i = int(self._order[int(pos) % n])
        cam = self.fitter._batch(torch.tensor([i]))
        keep = self.fitter.kept()
        with torch.no_grad():
            sig = sigma_ndc(self.settings.sigma_fine, cam)
            rec, _ = self.model.render(cam, sigma=sig, keep=keep)
            flat, _ = self.model.render(cam, sigma=sig, keep=keep, flat_colours=self.palette())
        panels = [self.views.images[i], rec[0], flat[0]]
        img = np.concatenate([(p.clamp(0, 1).numpy() * 255).astype(np.uint8) for p in panels], 1)
        scale = max(1, 256 // img.shape[0])
        im = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("RGB", (im.width, im.height + 18), (255, 255, 255))
        canvas.paste(im, (0, 18))
        d = ImageDraw.Draw(canvas)
        w = im.width // 3
        for k, label in enumerate(("input", "reconstruction", f"blocks ({int(keep.sum())})")):
            d.text((k * w + 4, 3), label + (f"  view {i}" if k == 0 else ""), fill=(0, 0, 0))
        return np.asarray(canvas)

    def geometry(self):
        """The kept blocks in their flat colours on the ground plane (the normalised frame, y up), turning as the
        video orbits the views."""
        keep = self.fitter.kept()
        with torch.no_grad():
            verts = self.model.block_verts().double().numpy()
            ground = float(self.model.ground)
        a = -2 * np.pi * self.frame_index / max(self.cfg.frames, 1)
        c, s = np.cos(a), np.sin(a)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        faces = self.model.faces.numpy()
        pal = self.palette().numpy()
        meshes = [{"vertices": verts[i] @ rot.T, "faces": faces, "color": pal[i]}
                  for i in torch.nonzero(keep).flatten().tolist()]
        return {"meshes": meshes, "ground": ground, "bounds": ((-1.0, ground, -1.0), (1.0, ground + 1.2, 1.0))}

    def palette(self) -> torch.Tensor:
        """(N, 3) distinct flat colours, one per block (golden-ratio hues)."""
        import colorsys

        h = (np.arange(self.model.n) * 0.618034) % 1.0
        return torch.tensor([colorsys.hsv_to_rgb(x, 0.65, 0.95) for x in h], dtype=torch.float32)

    # ---- results ------------------------------------------------------------------------------------------------
    def metrics(self):
        keep = self.fitter.kept()
        out = {"blocks": int(keep.sum()), "psnr": self.fitter.evaluate_psnr(), "frame": self.frame.as_dict(),
               "ground_height_normalised": float(self.model.ground.detach()), "views": self.views.count,
               "resolution": [self.cams.width, self.cams.height], "iterations": self.settings.iterations}
        if self.gt is not None:
            ch = self._chamfer(keep)
            out["chamfer_l1"] = ch if np.isfinite(ch) else None          # None: no block kept
            out["chamfer_l1_start"] = self.chamfer_start
        return out

    def exports(self):
        from tasks.blocks.export import blocks_glb, blocks_json, blocks_obj, world_blocks

        keep = self.fitter.kept()
        blocks = world_blocks(self.model, keep, self.frame)
        tex = [(self.model.texture[b["index"]].detach().clamp(0, 1).numpy() * 255).astype(np.uint8) for b in blocks]
        gtex = (self.model.ground_tex.detach().clamp(0, 1).numpy() * 255).astype(np.uint8)
        ground = float(self.model.ground.detach())
        out = {"blocks.json": blocks_json(blocks, self.frame, ground),
               "blocks.glb": blocks_glb(self.model, blocks, self.frame, tex, gtex, self.model.extent),
               "ground.png": gtex}
        for k, t in enumerate(tex):
            out[f"block_{k}.png"] = t
        if blocks:
            out["blocks.obj"] = blocks_obj(blocks)
        if self.cfg.simulate:
            from tasks.blocks.simulate import simulation_video

            out["simulation.mp4"] = simulation_video(blocks, self.frame, ground)
        return out
