"""Body model: torch LBS equals anny's own forward; inverse skinning round-trips; bone transforms compose."""
import numpy as np
import pytest
import torch

from tasks.avatar.body import AnnyBody, POSES, axis_angle_to_matrix, inverse_lbs, lbs, motion, rigid


@pytest.fixture(scope="module")
def body():
    return AnnyBody(dtype=torch.float64)


def _random_pose(body, seed, scale=0.4):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(2, body.n_bones, 3, generator=g, dtype=torch.float64)


def test_lbs_matches_anny(body):
    p = _random_pose(body, 0)
    ours = body.pose(p).verts
    theirs = body.anny_vertices(p)
    assert ours.shape == (2, 13718, 3)
    assert (ours - theirs).abs().max() < 1e-6
    assert (ours - body.rest_verts).abs().max() > 0.05           # the pose really moves the body


def test_inverse_skinning_round_trip(body):
    p = _random_pose(body, 1)
    posed = body.pose(p, Rh=torch.tensor([0.1, 0.5, -0.2]), Th=torch.tensor([0.3, 0.0, -1.0]))
    back = inverse_lbs(posed.verts, body.skin_idx, body.skin_w, posed.transforms)
    assert (back - body.rest_verts).abs().max() < 1e-9


def test_transforms_compose(body):
    idx = {n: i for i, n in enumerate(body.bone_labels)}
    hip, knee, foot = idx["upperleg01.L"], idx["lowerleg01.L"], idx["foot.L"]
    A, B = torch.tensor([-0.6, 0.1, 0.2]), torch.tensor([0.9, 0.0, 0.0])
    p = torch.zeros(1, body.n_bones, 3, dtype=torch.float64)
    p[0, hip] = A
    p[0, knee] = B
    T = body.bone_transforms(p)[0]
    heads = body.rest_bone_heads.double()

    def about(aa, h):
        R = axis_angle_to_matrix(aa.double())
        return rigid(R, h - R @ h)

    T_hip = about(A, heads[hip])
    assert torch.allclose(T[hip], T_hip, atol=1e-9)
    # the knee composes the hip's transform with its own rotation about its rest head; the foot inherits it
    assert torch.allclose(T[knee], T_hip @ about(B, heads[knee]), atol=1e-9)
    assert torch.allclose(T[foot], T[knee], atol=1e-9)
    # bones outside the leg's subtree do not move; a global Rh/Th multiplies every transform from the left
    assert torch.allclose(T[idx["head"]], torch.eye(4, dtype=torch.float64), atol=1e-9)
    G = rigid(axis_angle_to_matrix(torch.tensor([0.0, 0.7, 0.0], dtype=torch.float64)),
              torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
    Tg = body.bone_transforms(p, Rh=torch.tensor([0.0, 0.7, 0.0]), Th=torch.tensor([1.0, 0.0, 2.0]))[0]
    assert torch.allclose(Tg, G @ T, atol=1e-9)


def test_pose_library_and_joint_count(body):
    for name in POSES:
        m = motion(body, name, 4)
        assert m.shape == (4, body.n_bones, 3) and np.abs(m).max() > 0.1
    verts = body.pose(torch.as_tensor(motion(body, "walk", 4))).verts
    # a walk keeps the feet on roughly the same level and the body upright
    assert verts[..., 1].max() - verts[..., 1].min() > 1.4
    with pytest.raises(ValueError, match="104"):
        body.pose(torch.zeros(1, 24, 3))
    with pytest.raises(ValueError, match="unknown motion"):
        motion(body, "moonwalk", 3)


def test_garment_weights_follow_nearest_body(body):
    pts = body.rest_verts[:50].double()
    idx, w = body.skin_weights_for(pts, k=1)
    p = _random_pose(body, 2)
    T = body.bone_transforms(p)
    assert torch.allclose(lbs(pts, idx, w, T), body.pose(p).verts[:, :50], atol=1e-6)
