"""Procedural shape classes, the held-out split and the coarse-asset maker (tasks/refine/shapes.py)."""
import numpy as np
import pytest
import torch
import trimesh

from engine.fields import chamfer_distance, sample_surface
from tasks.refine import shapes


def _chamfer_l1(a, b, n=1500, seed=0):
    """Chamfer-L1 of area-uniform samples; two samplings of one surface give about 0.03 at n = 1500 (the floor)."""
    g = torch.Generator().manual_seed(seed)
    pa, _ = sample_surface(a.verts, a.faces, n, generator=g)
    pb, _ = sample_surface(b.verts, b.faces, n, generator=g)
    return float(chamfer_distance(pa, pb, squared=False))


def test_shapes_are_deterministic_per_seed_and_differ_across_seeds():
    p = np.random.default_rng(0).uniform(-1, 1, (4000, 3))
    for cls in shapes.CLASSES:
        a, b, c = shapes.shape(cls, 3), shapes.shape(cls, 3), shapes.shape(cls, 4)
        assert np.array_equal(a.sdf(p), b.sdf(p)) and np.array_equal(a.color(p), b.color(p))
        assert not np.allclose(a.sdf(p), c.sdf(p))
        h = shapes.held_out_shape(cls, 0)
        assert h.seed >= shapes.HELD_OUT and not np.allclose(h.sdf(p), a.sdf(p))


@pytest.mark.parametrize("cls", shapes.CLASSES)
def test_fine_mesh_is_watertight_on_the_sdf_and_stands_on_the_floor(cls):
    s = shapes.held_out_shape(cls, 1)
    m = s.mesh(32)
    tm = trimesh.Trimesh(m.verts.numpy(), m.faces.numpy(), process=False)
    assert tm.is_watertight and tm.volume > 0.01
    voxel = 2.0 / 31
    # vertices lie on the zero level set: linear interpolation across a sharp box edge or corner is off by up to
    # about half a voxel (measured 0.47 for chairs), smooth parts far less
    assert np.abs(s.sdf(m.verts.numpy().astype(np.float64))).max() < 0.55 * voxel
    assert abs(float(m.verts[:, 1].min()) - shapes.FLOOR) < voxel
    assert float(m.verts.abs().max()) < 1.0
    assert m.colors.shape == m.verts.shape and 0 <= float(m.colors.min()) and float(m.colors.max()) <= 1


def test_coarse_asset_is_deterministic_measurably_off_and_still_the_same_object():
    fines = {cls: shapes.held_out_shape(cls, 0).mesh(32) for cls in ("chair", "mug", "lamp")}
    for cls, fine in fines.items():
        s = shapes.held_out_shape(cls, 0)
        c1, c2 = shapes.make_coarse(s, seed=5), shapes.make_coarse(s, seed=5)
        assert torch.equal(c1.verts, c2.verts) and torch.equal(c1.colors, c2.colors)
        assert not torch.equal(c1.verts, shapes.make_coarse(s, seed=6).verts)
        assert trimesh.Trimesh(c1.verts.numpy(), c1.faces.numpy(), process=False).is_watertight
        own = _chamfer_l1(c1, fine)
        floor = _chamfer_l1(fine, fine, seed=1)
        others = [_chamfer_l1(c1, f) for k, f in fines.items() if k != cls]
        assert 1.3 * floor < own < 0.3, (own, floor)
        assert own < min(others), (cls, own, others)
        assert len(c1.faces) < len(s.mesh(48).faces)      # decimated: fewer faces than the scene's ground truth


def test_every_class_gives_a_coarse_asset_on_held_out_shapes():
    for cls in shapes.CLASSES:
        for i in range(3):
            c = shapes.make_coarse(shapes.held_out_shape(cls, i))
            assert len(c.faces) > 50, (cls, i)


def test_coarse_from_a_mesh_asset_matches_coarse_from_the_sdf():
    # an exact SDF (a ball), so the mesh path's trimesh distances and the analytic ones agree off the surface too
    c = np.array([0.1, -0.2, 0.0])
    ball = shapes.Shape("vase", 0, [(lambda p: np.linalg.norm(p - c, axis=1) - 0.4, np.array([0.8, 0.3, 0.2]))])
    a = shapes.make_coarse(ball, noise=0.0)
    b = shapes.make_coarse(ball.mesh(24), noise=0.0)
    ra, rb = ((x.verts - torch.as_tensor(c)).norm(dim=-1) for x in (a, b))
    # both meshed at the dilated level: radius 0.4 + dilate 0.03, up to the blur's rounding
    assert abs(float(ra.mean()) - float(rb.mean())) < 0.01
    assert abs(float(ra.mean()) - 0.43) < 0.03
    assert np.allclose(b.colors.numpy(), [0.8, 0.3, 0.2], atol=1e-6)


def test_unknown_class_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="unknown shape class 'sofa'") as e:
        shapes.shape("sofa", 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("cls", ["chair", "table"])
def test_coarse_asset_keeps_the_legs(cls):
    """A horizontal slice just above the floor cuts only the legs: nearly all of the fine shape's slice must be
    inside the coarse mesh (the legs survive the decimation and blur), and the coarse slice must stay near the
    fine legs (they are thicker, not merged into a slab)."""
    a = np.linspace(-1, 1, 121)
    X, Z = np.meshgrid(a, a, indexing="ij")
    for i in range(2):
        s = shapes.held_out_shape(cls, i)
        pts = np.stack([X.ravel(), np.full(X.size, shapes.FLOOR + 0.15), Z.ravel()], 1)
        fine_in = s.sdf(pts) < 0
        c = shapes.make_coarse(s)
        coarse_in = trimesh.Trimesh(c.verts.numpy(), c.faces.numpy(), process=False).contains(pts)
        assert fine_in.sum() > 20
        assert coarse_in[fine_in].mean() > 0.9, (cls, i, coarse_in[fine_in].mean())
        # every coarse slice point lies within 0.1 of the fine shape (dilation 0.03 + a voxel of decimation)
        assert s.sdf(pts[coarse_in]).max() < 0.1, (cls, i)
