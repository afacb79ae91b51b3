"""SSIM against skimage, the bounding box, and the local-frame helpers of the Gaussian avatar."""
import numpy as np
import torch

from tasks.avatar.common import bbox, ssim
from tasks.avatar.gaussian import face_frames, rotmat_to_quat
from engine.render import quat_to_rotmat


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = rng.random((40, 33, 3))
    b = np.clip(a + 0.1 * rng.normal(size=a.shape), 0, 1)
    ref = structural_similarity(a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    ours = float(ssim(torch.as_tensor(a), torch.as_tensor(b)))
    assert abs(ours - ref) < 1e-6
    assert abs(float(ssim(torch.as_tensor(a), torch.as_tensor(a))) - 1) < 1e-9


def test_bbox_pads_and_keeps_window():
    m = torch.zeros(64, 64)
    m[20:30, 40:42] = 1
    y0, y1, x0, x1 = bbox(m, pad=2)
    assert (y0, y1) == (18, 32) and x1 - x0 >= 11 and x0 <= 38 and x1 >= 44
    assert bbox(torch.zeros(8, 8)) == (0, 8, 0, 8)


def test_face_frames_and_quaternions():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(30, 3, generator=g, dtype=torch.float64)
    f = torch.randint(0, 30, (40, 3), generator=g)
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    R, area = face_frames(v, f)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-9) and torch.allclose(torch.det(R), torch.ones(len(f), dtype=torch.float64))
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    assert torch.allclose(area, 0.5 * torch.cross(e1, e2, dim=-1).norm(dim=-1))
    # quaternions of random rotations, including near-180-degree ones, map back to the same matrices
    q = torch.randn(200, 4, generator=g, dtype=torch.float64)
    q[:50, 0] = 1e-4
    Rq = quat_to_rotmat(q)
    assert torch.allclose(quat_to_rotmat(rotmat_to_quat(Rq)), Rq, atol=1e-9)
