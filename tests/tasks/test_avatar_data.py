"""Dataset writer/reader in the ZJU-MoCap layout, the Embree ray caster, and one-line errors on bad folders."""
import json
import math

import numpy as np
import pytest
import trimesh

from tasks.avatar.data import DatasetError, read_dataset, ray_cast, ring_cameras, write_dataset


def _tiny(root, n_cams=3, n_frames=2, joints=5, size=16, cloth=False):
    rng = np.random.default_rng(0)
    cams = ring_cameras(n_cams, size)
    yy, xx = np.mgrid[0:size, 0:size] / size                      # smooth images: JPEG keeps them closely
    images = {n: [np.stack([xx, yy, 0.5 + 0.4 * rng.random() * xx * yy], -1) for _ in range(n_frames)] for n in cams}
    masks = {n: [rng.random((size, size)) > 0.5 for _ in range(n_frames)] for n in cams}
    models = [{"poses": rng.normal(size=(joints, 3)), "Rh": np.zeros(3), "Th": np.array([0.0, 0.1, i]),
               "phenotype": np.array([0.3]), "phenotype_labels": np.array(["age"])} for i in range(n_frames)]
    segs = {n: [m & (rng.random(m.shape) > 0.5) for m in masks[n]] for n in cams} if cloth else None
    write_dataset(root, cams, images, masks, models, {"train": [0], "test": [1]}, segs)
    return cams, images, masks, models, segs


def test_round_trip(tmp_path):
    cams, images, masks, models, _ = _tiny(tmp_path)
    params = json.loads((tmp_path / "cam_params.json").read_text())
    assert params["all_cam_names"] == ["1", "2", "3"] and np.asarray(params["1"]["T"]).shape == (3, 1)
    assert (tmp_path / "2" / "000001.jpg").is_file() and (tmp_path / "2" / "000001.png").is_file()
    ds = read_dataset(tmp_path, n_bones=5)
    assert ds.images.shape == (3, 2, 16, 16, 3) and ds.masks.shape == (3, 2, 16, 16)
    assert np.array_equal(ds.masks[1, 0] > 0.5, masks["2"][0])
    assert np.abs(ds.images[0, 1] - images["1"][1]).max() < 0.03            # JPEG, quality 95, 4:4:4
    assert np.allclose(ds.poses[1], models[1]["poses"]) and np.allclose(ds.Th[1], [0, 0.1, 1])
    assert ds.phenotype == {"age": 0.3} and ds.split == {"train": [0], "test": [1]}
    K, R, T = cams["3"]
    assert np.allclose(ds.K[2], K) and np.allclose(ds.R[2], R) and np.allclose(ds.T[2], T.ravel())
    # the tide cameras project the world origin where K [R | T] does
    cam = ds.cameras([2])
    uvz = cam.project(__import__("torch").zeros(1, 3, dtype=cam.R.dtype))[0, 0].numpy()
    p = K @ T.ravel()
    assert np.allclose(uvz[:2], p[:2] / p[2])
    assert ds.cloth is None                                                 # ZJU-MoCap folders have no cloth masks


def test_cloth_segmentations_all_or_none(tmp_path):
    segs = _tiny(tmp_path, cloth=True)[4]
    assert (tmp_path / "3" / "000001_cloth.png").is_file()
    ds = read_dataset(tmp_path, n_bones=5)
    assert ds.cloth.shape == (3, 2, 16, 16) and np.array_equal(ds.cloth[2, 1] > 0.5, segs["3"][1])
    (tmp_path / "2" / "000000_cloth.png").unlink()
    with pytest.raises(DatasetError, match="clothing segmentations .* 5 of 6 images") as e:
        read_dataset(tmp_path, n_bones=5)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("breakage, message", [
    ("image", "missing image"), ("mask", "missing mask"), ("camera", "cameras but there are"),
    ("joints", "joints"), ("params", "missing"), ("names", "parameters of"),
])
def test_bad_inputs(tmp_path, breakage, message):
    _tiny(tmp_path)
    if breakage == "image":
        (tmp_path / "2" / "000001.jpg").unlink()
    elif breakage == "mask":
        (tmp_path / "1" / "000000.png").unlink()
    elif breakage == "camera":
        (tmp_path / "4").mkdir()
    elif breakage == "joints":
        np.savez(tmp_path / "models" / "000001.npz", poses=np.zeros((7, 3)))
    elif breakage == "params":
        (tmp_path / "cam_params.json").unlink()
    elif breakage == "names":
        p = json.loads((tmp_path / "cam_params.json").read_text())
        p["all_cam_names"].append("9")
        (tmp_path / "cam_params.json").write_text(json.dumps(p))
    with pytest.raises(DatasetError, match=message) as e:
        read_dataset(tmp_path, n_bones=5)
    assert "\n" not in str(e.value)


def test_ray_cast_sphere_silhouette_and_shading():
    # a unit sphere seen from distance d: its silhouette is a disc of angular radius asin(1/d)
    s = trimesh.creation.icosphere(subdivisions=4)
    size, d = 96, 4.0
    cams = ring_cameras(1, size, radius=d, height=0.0, target_y=0.0, fov_y=40.0)
    K, R, T = cams["1"]
    rgb, mask = ray_cast([np.asarray(s.vertices)], [np.asarray(s.faces)], [np.ones((len(s.vertices), 3))],
                         K, R, T, size)
    r_px = K[0, 0] * math.tan(math.asin(1 / d))
    assert abs(mask.sum() / (math.pi * r_px ** 2) - 1) < 0.03
    assert rgb[~mask].max() == 0 and rgb[mask].min() >= 0.35 - 1e-9 and rgb[mask].max() <= 1
    # which mesh each pixel sees: a small sphere (mesh 1) between the camera and the big one covers its own disc
    eye = -R.T @ T.ravel()
    small = np.asarray(s.vertices) * 0.2 + 0.5 * eye
    _, mask2, hit = ray_cast([np.asarray(s.vertices), small], [np.asarray(s.faces)] * 2,
                             [np.ones((len(s.vertices), 3))] * 2, K, R, T, size, which=True)
    r_small = K[0, 0] * math.tan(math.asin(0.2 / (0.5 * d)))
    assert np.array_equal(hit >= 0, mask2) and np.array_equal(mask2, mask)
    assert abs((hit == 1).sum() / (math.pi * r_small ** 2) - 1) < 0.06 and (hit == 0).sum() > 0
