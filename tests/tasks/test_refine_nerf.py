"""The hash-grid NeRF representation (tasks/refine/nerf.py) distilled through distill.distill."""
import pytest
import torch

from engine.fields import icosphere
from tasks.refine import distill, views
from tasks.refine.nerf import NerfField
from tasks.refine.shapes import Asset


def _two_tone_ball():
    """Radius 0.45 at the cameras' target, red on top, blue below: the prior ball (0.4, grey) is visibly wrong."""
    v, f = icosphere(3, 0.45)
    v = v + torch.tensor(views.TARGET, dtype=v.dtype)
    up = (v[:, 1] > views.TARGET[1]).to(v.dtype)[:, None]
    c = up * torch.tensor([0.9, 0.2, 0.1], dtype=v.dtype) + (1 - up) * torch.tensor([0.1, 0.3, 0.9], dtype=v.dtype)
    return Asset(v, f, c)


def test_field_shapes_and_prior():
    rep = NerfField()
    pts = torch.tensor(views.TARGET, dtype=torch.float64) + torch.tensor([[0.0, 0, 0], [0.9, 0, 0]],
                                                                           dtype=torch.float64)
    sigma, feat = rep.field(pts.reshape(1, 2, 3))
    assert sigma.shape == (1, 2) and feat.shape == (1, 2, 6)
    assert sigma[0, 0].item() > 100 * sigma[0, 1].item()          # dense inside the prior ball, empty far out
    assert torch.allclose(feat[..., 3:].norm(dim=-1), torch.ones(1, 2, dtype=feat.dtype))


@pytest.mark.slow
def test_nerf_distillation_reaches_psnr():
    asset = _two_tone_ball()
    rep = NerfField()
    start = distill.evaluate(rep.eval(), asset, 24)
    rep.train()
    rep, report = distill.distill(asset, "mesh", steps=20, size=24, lr=0.03, rep=rep)
    rep.eval()
    end = distill.evaluate(rep, asset, 24)
    # measured at 25 steps: 20.5 -> 26.8 dB
    assert end["psnr"] > 23.0 and end["psnr"] > start["psnr"] + 3.0, (start, end)
    surf = rep.asset()
    assert len(surf.faces) > 100
    r = (surf.verts - torch.tensor(views.TARGET, dtype=surf.verts.dtype)).norm(dim=-1)
    assert 0.3 < float(r.mean()) < 0.55
    assert set(rep.exports("nerf")) == {"nerf.glb"}
