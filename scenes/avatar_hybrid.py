"""Hybrid avatar (DELTA style): a skinned anny body mesh with learned offsets and colours, plus clothing and hair as
a canonical hash-grid radiance field posed by k-NN inverse skinning, rendered by tide's hybrid volume renderer.

The data (ZJU-MoCap layout) is generated and cached on first use (`--set data=FOLDER` reads your own). The run
also fits the baseline (the posed body mesh alone with learned vertex colours), reports novel-view and novel-pose
PSNR/SSIM inside each frame's bounding box, exports the body mesh and the clothing mesh (marching cubes of the
field) separately, and renders the clothing transferred to a body of other phenotype parameters.
"""
from dataclasses import dataclass
from typing import Annotated

import torch

from engine.scene import Range
from tasks.avatar.scene import AvatarConfig, AvatarScene


@dataclass
class Config(AvatarConfig):
    n_samples: Annotated[int, Range(ge=2)] = 48
    """Volume samples per ray (in front of the body mesh, which ends each ray it hits)."""
    voxel: Annotated[float, Range(ge=0.005, le=0.2)] = 0.025
    """Spacing of the per-frame posed grid the field is resampled onto (metres)."""
    cutoff: Annotated[float, Range(ge=0.01, le=0.5)] = 0.15
    """k-NN inverse-skinning cut-off: points farther from the body get no density (metres)."""
    w_offset: Annotated[float, Range(ge=0)] = 10.0
    """Weight of the squared body-vertex offset penalty (m^-2)."""
    w_cloth: Annotated[float, Range(ge=0)] = 1.0
    """Weight of the clothing-segmentation MSE on the field's opacity in front of the mesh (DELTA; used where the
    dataset has <frame>_cloth.png segmentations)."""
    offset_every: Annotated[int, Range(ge=0)] = 4
    """Update the body-vertex offsets every this many iterations (their raster backward is the costliest part of an
    iteration); 0 freezes them."""
    density_bias: Annotated[float, Range(ge=-10, le=5)] = -5.0
    """Initial raw density of the clothing field (softplus(bias) * 30 1/m; -5: 0.2 1/m, nearly empty)."""
    warm_iterations: Annotated[int, Range(ge=0)] = 80
    """Warm start: fit the clothing field to the hull carved from the cloth segmentations (the body mesh's
    occlusion respected) for this many steps before training; 0 (or data without segmentations): none."""
    transfer_weight: Annotated[float, Range(ge=0, le=1)] = 0.9
    """anny 'weight' phenotype of the body the clothing is transferred to (the data's body has 0.5)."""


class Scene(AvatarScene):
    name = "hybrid"

    def build(self):
        super().build()
        self._other = None

    def make_trainer(self):
        from tasks.avatar.train import HybridTrainer

        c = self.cfg
        return HybridTrainer(self.seq, c.views, c.n_samples, c.voxel, c.cutoff, c.w_mask, c.w_ssim, c.w_offset, c.lr,
                             seed=c.seed, w_cloth=c.w_cloth, offset_every=c.offset_every, density_bias=c.density_bias,
                             warm_iterations=c.warm_iterations)

    def model_metrics(self):
        r = self.trainer.metrics("hybrid_", self.trainer.predict)
        r.update(self.trainer.part_report())
        return r

    def _transfer(self):
        """The other body (anny with ``transfer_weight``) and its bone transforms for every frame."""
        if self._other is None:
            from tasks.avatar.body import AnnyBody

            ds, dt = self.seq.ds, self.seq.verts.dtype
            pheno = {} if set(ds.phenotype) == {"default"} else dict(ds.phenotype)
            pheno["weight"] = self.cfg.transfer_weight
            other = AnnyBody(pheno, dtype=dt)
            T = other.bone_transforms(torch.as_tensor(ds.poses, dtype=dt), torch.as_tensor(ds.Rh, dtype=dt),
                                      torch.as_tensor(ds.Th, dtype=dt))
            # same topology: the vertex correspondence maps the other body's canonical space into ours
            shift = self.seq.body.rest_verts - other.rest_verts
            self._other = (other, T, shift)
        return self._other

    def tiles(self, f, cam, transfer=False):
        """The hybrid, its body alone and its clothes alone; the video's frames (training and novel pose) share one
        size, so the clothing-transfer tile goes only into the exported PNGs (``transfer=True``)."""
        t, m = self.trainer, self.trainer.model
        T, cams = self.seq.transforms[f], self.seq.cameras(cam)
        imgs = [t.predict(f, cam)[0], m.render(f, T, cams, t.S, stratified=False, with_clothes=False)[0][0],
                m.render(f, T, cams, t.S, stratified=False, with_body=False)[0][0]]
        labels = ["hybrid", "body only", "clothes only"]
        if transfer:
            other, To, shift = self._transfer()
            imgs.append(m.render(("transfer", f), To[f], cams, t.S, stratified=False, body=other,
                                 rest_shift=shift)[0][0])
            labels.append(f"transfer w={self.cfg.transfer_weight:g}")
        return imgs, labels

    def model_geometry(self, f):
        """The skinned body with its learned offsets and colours (the clothing field is in the video and the
        exports)."""
        m = self.trainer.model
        with torch.no_grad():
            verts = m.body_verts(self.seq.transforms[f]).double().cpu().numpy()
            col = torch.sigmoid(m.colour).double().clamp(0, 1).cpu().numpy()
        return {"meshes": [{"vertices": verts, "faces": self.seq.body.faces.cpu().numpy(), "colors": col}]}

    def exports(self):
        import numpy as np
        import trimesh

        m = self.trainer.model
        body = self.seq.body
        out = {}
        with torch.no_grad():
            bv = (body.rest_verts + m.offset).numpy()
            bc = (torch.sigmoid(m.colour).clamp(0, 1).numpy() * 255).astype(np.uint8)
        out["body_canonical.ply"] = trimesh.Trimesh(bv, body.faces.numpy(), vertex_colors=bc,
                                                    process=False).export(file_type="ply")
        cv, cf, cc = m.clothing_mesh()
        if len(cf):
            out["clothing_canonical.ply"] = trimesh.Trimesh(cv, cf, vertex_colors=(np.clip(cc, 0, 1) * 255)
                                                            .astype(np.uint8), process=False).export(file_type="ply")
        out.update(self.novel_pose_panels(transfer=True))
        return out
