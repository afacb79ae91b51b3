"""Avatar models: gradients of the face anchoring against central differences, k-NN inverse skinning against the
posed body, a short fit that beats the mesh baseline, and one-line exit-2 errors from the CLI."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.avatar.body import AnnyBody, lbs
from tasks.avatar.gaussian import GaussianAvatar
from tasks.avatar.hybrid import knn_inverse_skinning

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def body():
    return AnnyBody(dtype=torch.float64)


def test_anchored_gaussians_gradcheck():
    # a small closed mesh (octahedron): means, scales, quaternions, opacities and colours are differentiable in
    # the posed vertices and in the rectifier's parameters; central differences in f64
    v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64) * 0.05
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    m = GaussianAvatar(v, f, pose_dim=3, n_gaussians=8, hidden=8, latent=4, pose_code=4)
    with torch.no_grad():
        m.mlp[-1].weight.normal_(0, 0.3)
        m.offset.normal_(0, 0.005)
        m.quat.add_(0.2 * torch.randn_like(m.quat))
    pose = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    verts = (v + 0.003 * torch.randn_like(v)).requires_grad_()  # scales stay inside their clamp

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, verts):
            return self.m.gaussians(verts, f, pose)

    wrap = Wrap()
    keys = ["m.offset", "m.quat", "m.log_scale", "m.mlp.4.weight", "m.pose_enc.0.weight"]
    named = dict(wrap.named_parameters())
    inputs = tuple(named[k].detach().clone().requires_grad_() for k in keys)

    def fn(verts, *params):
        return torch.func.functional_call(wrap, dict(zip(keys, params)), (verts,))

    assert torch.autograd.gradcheck(fn, (verts, *inputs), eps=1e-6, atol=1e-6)


def test_knn_inverse_skinning_recovers_rest(body):
    g = torch.Generator().manual_seed(0)
    poses = 0.4 * torch.randn(1, body.n_bones, 3, generator=g, dtype=torch.float64)
    T = body.bone_transforms(poses)[0]
    posed = lbs(body.rest_verts, body.skin_idx, body.skin_w, T[None])[0]
    sel = torch.arange(0, len(posed), 7)
    # posed vertices sit on the body: their neighbourhood's blended transform is their own, to first order
    canon, valid, d = knn_inverse_skinning(posed[sel], posed, body.skin_idx, body.skin_w, T)
    assert valid.all() and d.max() < 1e-9
    err = (canon - body.rest_verts[sel]).norm(dim=1)
    assert err.median() < 1e-3 and err.max() < 0.03
    # a point 5 cm out along the body moves rigidly with its nearest bones; one 1 m away is cut off
    far = posed[:1] + torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64) * 1.0
    canon, valid, _ = knn_inverse_skinning(torch.cat([posed[sel[:50]] * 1.0, far]), posed, body.skin_idx,
                                           body.skin_w, T, cutoff=0.15)
    assert valid[:50].all() and not valid[50]


@pytest.mark.slow
def test_short_fit_beats_baseline(tmp_path):
    from tasks.avatar.common import load_sequence
    from tasks.avatar.data import generate
    from tasks.avatar.train import BaselineTrainer, GaussianTrainer

    root = generate(tmp_path / "tiny", size=48, n_cams=4, frames_per_motion=2, train_motions=("walk", "wave"),
                    test_motions=("run",))
    seq = load_sequence(str(root), holdout_cams=1)
    base = BaselineTrainer(seq, views=3)
    gauss = GaussianTrainer(seq, iterations=60, n_gaussians=2000, denoiser=False, views=3)
    for it in range(60):
        base.step(it)
        gauss.step(it)
    b = base.metrics("", base.predict)
    gm = gauss.metrics("", gauss.predict)
    assert gm["novel_pose_psnr"] > b["novel_pose_psnr"] + 0.5
    assert gm["novel_view_psnr"] > b["novel_view_psnr"] + 0.5


def _cli(*args, capsys):
    """The CLI in this process, on the test session's backend (a dataset error surfaces while the scene builds,
    after the backend is initialised, so it must be the session's arch and precision); returns (code, stderr)."""
    from engine import backend, cli

    s = backend.settings()
    code = cli.main(["run", *args, "--no-progress", "--arch", s.arch, "--precision", s.precision])
    return code, capsys.readouterr().err.strip()


def test_cli_bad_dataset_exits_2(tmp_path, capsys, monkeypatch):
    from tasks.avatar.data import ring_cameras, write_dataset

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code, err = _cli(str(ROOT / "scenes" / "avatar_gaussian.py"), "--out", str(out), "--set",
                     f"data={tmp_path / 'nope'}", capsys=capsys)
    assert code == 2 and "dataset folder not found" in err and not out.exists()
    cams = ring_cameras(2, 16)
    ds = tmp_path / "ds"
    write_dataset(ds, cams, {n: [np.zeros((16, 16, 3))] for n in cams}, {n: [np.zeros((16, 16), bool)] for n in cams},
                  [{"poses": np.zeros((24, 3))}])
    code, err = _cli(str(ROOT / "scenes" / "avatar_hybrid.py"), "--out", str(out), "--set", f"data={ds}", capsys=capsys)
    assert code == 2 and "24 joints" in err and len(err.splitlines()) == 1
    assert not out.exists()
    (ds / "1" / "000000.png").unlink()
    code, err = _cli(str(ROOT / "scenes" / "avatar_gaussian.py"), "--out", str(out), "--set", f"data={ds}",
                     capsys=capsys)
    assert code == 2 and "missing mask" in err and len(err.splitlines()) == 1 and not out.exists()
    assert "Traceback" not in err
