"""Blocks world inputs: Blender/nerfstudio transforms.json and DTU/IDR cameras.npz parse into the same cameras, the
scene frame is estimated from the cameras, bad folders fail with one line, and the synthetic scenes are ray cast
by Embree."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import ConfigError
from tasks.blocks import synthetic
from tasks.blocks.data import GL_TO_CV, decompose_projection, load_transforms, load_views
from tasks.blocks.frame import estimate_frame


def _write_blender(folder, n=4, size=(12, 10), rgba=False, ext=True, angle=0.8):
    c2w, _ = synthetic.ring_cameras(n)
    frames = []
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        arr = rng.integers(0, 255, (size[1], size[0], 4 if rgba else 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "img" / f"f{k}.png")
        frames.append({"file_path": f"img/f{k}" + (".png" if ext else ""), "transform_matrix": c2w[k].tolist()})
    (folder / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return c2w


def test_transforms_json_opengl_to_opencv(tmp_path):
    c2w = _write_blender(tmp_path, ext=False)
    v = load_transforms(tmp_path, dtype=torch.float64)
    assert v.images.shape == (4, 10, 12, 3) and v.masks is None
    # the camera centre is the matrix's translation, and OpenGL's -z (view direction) is OpenCV's +z
    assert torch.allclose(v.cameras.center, torch.as_tensor(c2w[:, :3, 3]), atol=1e-9)
    assert torch.allclose(v.cameras.R[:, 2, :], -torch.as_tensor(c2w[:, :3, 2]), atol=1e-9)
    assert torch.allclose(v.cameras.R[:, 1, :], -torch.as_tensor(c2w[:, :3, 1]), atol=1e-9)
    assert v.cameras.fx[0].item() == pytest.approx(6 / math.tan(0.4))
    # a world point straight ahead of camera 0 projects to the principal point
    p = torch.as_tensor(c2w[0, :3, 3] - 2.0 * c2w[0, :3, 2])[None]
    uvz = v.cameras[0].project(p)[0, 0]
    assert uvz[0].item() == pytest.approx(6.0) and uvz[1].item() == pytest.approx(5.0) and uvz[2] > 0


def test_rgba_composited_over_white_and_resized(tmp_path):
    _write_blender(tmp_path, rgba=True, size=(20, 20))
    raw = np.asarray(Image.open(tmp_path / "img" / "f0.png"), dtype=np.float64) / 255
    v = load_transforms(tmp_path, dtype=torch.float64)
    a = raw[..., 3:]
    assert np.allclose(v.images[0].numpy(), raw[..., :3] * a + 1 - a, atol=1e-6)
    assert v.masks is not None and np.allclose(v.masks[0].numpy(), raw[..., 3], atol=1e-6)
    half = load_transforms(tmp_path, resolution=10, dtype=torch.float64)
    assert half.images.shape[1:3] == (10, 10)
    assert half.cameras.fx[0].item() == pytest.approx(v.cameras.fx[0].item() / 2)
    assert half.cameras.cx[0].item() == pytest.approx(5.0)


def test_dtu_cameras_round_trip(tmp_path):
    """world_mat = K [R | t] (times an arbitrary scale, in a 4x4) built from known matrices gives them back, and
    the same scene read as transforms.json gives the same cameras."""
    c2w = _write_blender(tmp_path / "blender", n=3, size=(16, 12))
    (tmp_path / "dtu" / "image").mkdir(parents=True)
    K = np.array([[20.0, 0.3, 7.5], [0.0, 21.0, 6.2], [0.0, 0.0, 1.0]])
    mats = {}
    for k in range(3):
        w2c = np.linalg.inv(c2w[k] @ GL_TO_CV)
        P = np.eye(4)
        P[:3, :4] = (2.5 + k) * K @ w2c[:3, :4]
        mats[f"world_mat_{k}"] = P
        mats[f"scale_mat_{k}"] = np.diag([3.0, 3.0, 3.0, 1.0])
        Kd, Rd, td = decompose_projection(P)
        assert np.allclose(Kd, K, atol=1e-9) and np.allclose(Rd, w2c[:3, :3], atol=1e-9)
        assert np.allclose(td, w2c[:3, 3], atol=1e-9)
        Image.open(tmp_path / "blender" / "img" / f"f{k}.png").save(tmp_path / "dtu" / "image" / f"{k:06d}.png")
    np.savez(tmp_path / "dtu" / "cameras.npz", **mats)
    dtu = load_views(tmp_path / "dtu", dtype=torch.float64)
    assert torch.allclose(dtu.cameras.R, load_transforms(tmp_path / "blender", dtype=torch.float64).cameras.R,
                          atol=1e-9)
    assert torch.allclose(dtu.cameras.fy, torch.full((3,), 21.0, dtype=torch.float64))
    assert torch.allclose(dtu.images, load_views(tmp_path / "blender", dtype=torch.float64).images)


def test_scene_frame_from_cameras():
    """Cameras on rings around a z-up target: up, centre and radius come back (radius = half-width of the view at
    the centre)."""
    from engine.render import Camera

    c2w, fov = synthetic.ring_cameras(12, distance=3.0, target=(0.3, -0.2, 0.5))
    w2c = np.linalg.inv(c2w @ GL_TO_CV)
    cams = Camera.from_Rt(torch.as_tensor(w2c[:, :3, :3]), torch.as_tensor(w2c[:, :3, 3]), width=64, height=64,
                          fx=32 / math.tan(fov / 2))
    f = estimate_frame(cams)
    assert np.allclose(f.up, [0, 0, 1], atol=1e-9)
    assert np.allclose(f.centre, [0.3, -0.2, 0.5], atol=1e-9)
    assert f.radius == pytest.approx(3.0 * math.tan(fov / 2))
    p = np.array([[0.3, -0.2, 1.5]])
    assert np.allclose(f.to_norm(p), [[0, 1 / f.radius, 0]]) and np.allclose(f.to_world(f.to_norm(p)), p)
    # the normalised cameras see the normalised point where the world cameras see the world point
    cn = f.cameras_to_norm(cams)
    assert torch.allclose(cn.project(torch.as_tensor(f.to_norm(p)))[..., :2], cams.project(torch.as_tensor(p))[
        ..., :2], atol=1e-9)


@pytest.mark.parametrize("case", ["missing_folder", "no_format", "missing_image", "other_size", "not_rigid",
                                  "one_view", "dtu_no_images", "bad_json"])
def test_bad_inputs_raise_one_line(tmp_path, case):
    folder = tmp_path / "d"
    if case != "missing_folder":
        folder.mkdir()
    if case in ("missing_image", "other_size", "not_rigid", "one_view", "bad_json"):
        _write_blender(folder, n=1 if case == "one_view" else 3)
    if case == "missing_image":
        (folder / "img" / "f1.png").unlink()
    elif case == "other_size":
        Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(folder / "img" / "f2.png")
    elif case == "not_rigid":
        meta = json.loads((folder / "transforms.json").read_text())
        meta["frames"][1]["transform_matrix"][0][0] *= 1.5
        (folder / "transforms.json").write_text(json.dumps(meta))
    elif case == "dtu_no_images":
        np.savez(folder / "cameras.npz", world_mat_0=np.eye(4))
    elif case == "bad_json":
        (folder / "transforms.json").write_text("{not json")
    with pytest.raises(ConfigError) as info:
        load_views(folder)
    assert "\n" not in str(info.value)


def test_synthetic_scene_uses_embree_and_matches_its_blocks(tmp_path, monkeypatch):
    """The scene is ray cast by Embree; a ray through a block's centre from a camera sees that block's colour."""
    import trimesh.ray.ray_pyembree as emb

    calls = []
    orig = emb.RayMeshIntersector.intersects_location

    def spy(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(emb.RayMeshIntersector, "intersects_location", spy)
    info = synthetic.write_scene(tmp_path, seed=3, views=4, size=24)
    assert calls and 2 <= info["blocks"] <= 5
    v = load_views(tmp_path, dtype=torch.float64)
    gt = json.loads((tmp_path / "gt_blocks.json").read_text())["blocks"]
    pts = np.load(tmp_path / "gt_points.npy")
    assert pts.shape[1] == 3 and pts[:, 2].min() > -1e-6
    assert len(gt) == info["blocks"]
    # rays pointing up see the sky; rays meeting the ground away from the blocks see the grey checker
    o, d = v.cameras.rays()
    sky = torch.as_tensor(synthetic.SKY)
    s = -o[..., 2] / d[..., 2]
    hit = o + s[..., None] * d
    up = (d[..., 2] >= 0) | (hit[..., :2].abs().max(-1).values > 8.2)      # beyond the 8-unit ground square
    assert up.sum() > 10 and ((v.images[up] - sky).abs().max(-1).values < 0.01).all()
    far = (d[..., 2] < -0.05) & (hit[..., :2].norm(dim=-1) > 1.3) & (hit[..., :2].abs().max(-1).values < 7)
    lit = 0.4 + 0.6 * synthetic.LIGHT[2]
    expect = torch.as_tensor(synthetic._checker(hit[far].numpy()) * lit)
    ok = (v.images[far] - expect).abs().max(-1).values < 0.01               # the checker square at the hit point
    assert far.sum() > 50 and ok.double().mean() > 0.9                      # (a few are hidden behind blocks)
