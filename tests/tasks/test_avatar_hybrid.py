"""Hybrid avatar: k-NN inverse skinning (exact under one rigid motion, cut-off; the posed-body case is in
test_avatar_fit.py), the hybrid render's composition, and one-line config errors of the avatar scenes."""

import pytest
import torch

from tasks.avatar.body import AnnyBody, axis_angle_to_matrix, lbs, rigid
from tasks.avatar.hybrid import HybridAvatar, knn_inverse_skinning


@pytest.fixture(scope="module")
def body():
    return AnnyBody(dtype=torch.float64)


def test_knn_inverse_skinning_rigid_is_exact(body):
    # every bone moved by the same rigid transform G: any blend of the weights is G, so x_c = G^-1 x exactly
    G = rigid(axis_angle_to_matrix(torch.tensor([0.3, -0.8, 0.2], dtype=torch.float64)),
              torch.tensor([0.2, 0.1, -0.4], dtype=torch.float64))
    T = G.expand(body.n_bones, 4, 4)
    verts = lbs(body.rest_verts, body.skin_idx, body.skin_w, T[None])[0]
    g = torch.Generator().manual_seed(0)
    rest_pts = body.rest_verts[torch.randint(0, len(body.rest_verts), (200,), generator=g)]
    rest_pts = rest_pts + 0.03 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    posed = rest_pts @ G[:3, :3].T + G[:3, 3]
    far = torch.tensor([[5.0, 5.0, 5.0]], dtype=torch.float64)
    canon, valid, d = knn_inverse_skinning(torch.cat([posed, far]), verts, body.skin_idx, body.skin_w, T, k=6,
                                           cutoff=0.15)
    assert valid[:-1].all() and not valid[-1] and d[-1] > 4
    assert (canon[:-1] - rest_pts).abs().max() < 1e-9
    assert torch.equal(canon[-1], far[0])                 # invalid points are left where they are


def test_hybrid_render_composes_body_and_clothes(body):
    from engine import backend
    from engine.render import Camera

    backend.ensure()
    dt = backend.torch_dtype()
    b = AnnyBody(dtype=dt)
    m = HybridAvatar(b, voxel=0.08, knn_verts=500, log2_size=12, levels=4)
    cams = Camera.from_look_at((0.0, 0.9, 3.0), (0.0, 0.9, 0.0), fov_y=40.0, width=24, height=24)
    T = torch.eye(4, dtype=dt).expand(b.n_bones, 4, 4)
    with torch.no_grad():
        m.head.net[-1].bias.copy_(torch.tensor([-20.0, 0.0, 0.0, 0.0], dtype=dt))   # an empty clothing field
        rgb, alpha, mesh_alpha, cloth_alpha = m.render(0, T, cams, 8, stratified=False)
        only_body = m.render(0, T, cams, 8, stratified=False, with_clothes=False)
    assert mesh_alpha.sum() > 20 and torch.allclose(alpha, mesh_alpha, atol=1e-6)   # softplus(-20): ~1e-7 1/m
    # with no density in front, each covered ray ends on the mesh colour (sigmoid(0) = 0.5 grey)
    cov = mesh_alpha > 0.5
    assert torch.allclose(rgb[cov], torch.full_like(rgb[cov], 0.5), atol=1e-4)
    assert torch.allclose(rgb, only_body[0], atol=1e-5)


@pytest.mark.parametrize("scene, bad, message", [
    ("avatar_hybrid", "voxel=0.0", "voxel"),
    ("avatar_hybrid", "iterations=-1", "iterations"),
    ("avatar_gaussian", "n_gaussians=5", "n_gaussians"),
])  # dataset errors (raised while the scene builds): test_avatar_fit.py::test_cli_bad_dataset_exits_2
def test_bad_config_one_line_exit_2(tmp_path, capsys, scene, bad, message):
    from engine import cli

    out = tmp_path / "out"
    code = cli.main(["run", scene, "--set", bad, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not out.exists()


def _check_carving(seq, hyb):
    """The hull carved from the cloth segmentations lies on the generator's own skirt and hair (their canonical
    meshes, which the avatar never sees): measured on this tiny set, 94 % of hull points inside the skirt's
    region (its height span and hem radius, +-6 cm) or within 5 cm of the hair, and 93 % / 92 % of the skirt /
    hair vertices within 5 cm of a hull point."""
    import numpy as np
    from scipy.spatial import cKDTree

    from tasks.avatar.data import make_character

    pts, hull, _ = hyb.carve(seq.train_frames[:3])
    meshes = {name: v.numpy() for name, v, *_ in make_character(seq.body).meshes}
    skirt, hair = meshes["skirt"], meshes["hair"]
    q = pts[hull].double().numpy()
    assert len(q) > 500
    c, d = skirt.mean(0), 0.06
    rad = np.linalg.norm((skirt - c)[:, [0, 2]], axis=1).max()
    in_skirt = ((q[:, 1] < skirt[:, 1].max() + d) & (q[:, 1] > skirt[:, 1].min() - d)
                & (np.linalg.norm((q - c)[:, [0, 2]], axis=1) < rad + d))
    near_hair = cKDTree(hair).query(q)[0] < 0.05
    assert (in_skirt | near_hair).mean() > 0.85
    tree = cKDTree(q)
    assert (tree.query(skirt)[0] < 0.05).mean() > 0.8 and (tree.query(hair)[0] < 0.05).mean() > 0.8


@pytest.mark.slow
def test_short_hybrid_fit_beats_baseline(tmp_path):
    # 60 iterations each on a 48-pixel, 4-camera dataset; measured before the cloth loss and the warm start: novel
    # pose 17.7 -> 20.1 dB, novel view 15.5 -> 16.2 dB (baseline -> hybrid); the margins asserted are about half of
    # those (passes with both added; 5.4 min at load ~5, of which the dataset's ray casting is a large part)
    from tasks.avatar.common import load_sequence
    from tasks.avatar.data import generate
    from tasks.avatar.train import BaselineTrainer, HybridTrainer

    root = generate(tmp_path / "tiny", size=48, n_cams=4, frames_per_motion=2, train_motions=("walk", "wave"),
                    test_motions=("run",))
    seq = load_sequence(str(root), holdout_cams=1)
    base = BaselineTrainer(seq, views=3)
    hyb = HybridTrainer(seq, views=3, n_samples=24, voxel=0.04)
    _check_carving(seq, hyb)
    for it in range(60):
        base.step(it)
        hyb.step(it)
    b, h = base.metrics("", base.predict), hyb.metrics("", hyb.predict)
    assert h["novel_pose_psnr"] > b["novel_pose_psnr"] + 1.0 and h["novel_pose_ssim"] > b["novel_pose_ssim"]
    assert h["novel_view_psnr"] > b["novel_view_psnr"] + 0.3
