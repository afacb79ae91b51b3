"""File io: round trips through independent readers, atomic publication, and clear errors for bad meshes."""
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from engine import io
from engine.errors import MeshError


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_mesh_round_trip(tmp_path, suffix):
    mesh = trimesh.creation.icosphere(subdivisions=2)
    path = io.save_mesh(tmp_path / f"m{suffix}", mesh)
    back = io.load_mesh(path)
    assert back.faces.shape == mesh.faces.shape
    # compare as sets of vertices: some formats reorder
    d = np.linalg.norm(np.sort(back.vertices, axis=0) - np.sort(mesh.vertices, axis=0), axis=1)
    assert d.max() < 1e-5
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_point_cloud_colours_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pts, cols = rng.random((50, 3)), rng.random((50, 3))
    io.save_points(tmp_path / "p.ply", io.PointCloud(pts, cols))
    back = trimesh.load(tmp_path / "p.ply")  # an independent reader
    np.testing.assert_allclose(back.vertices, pts, atol=1e-6)
    np.testing.assert_allclose(back.colors[:, :3] / 255.0, cols, atol=1 / 255 + 1e-9)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_video_frames_and_size(tmp_path, suffix):
    frames = [np.full((31, 47, 3), 20 * i, np.uint8) for i in range(6)]
    io.save_video(tmp_path / f"v{suffix}", frames, fps=10)
    back = iio.imread(tmp_path / f"v{suffix}")
    assert back.shape[0] == 6
    assert back.shape[1] >= 31 and back.shape[2] >= 47
    assert abs(float(back[5][:31, :47, :3].mean()) - 100) < 4  # the content survives the codec


def test_png_from_float(tmp_path):
    img = np.zeros((8, 9, 3), np.float32)
    img[..., 1] = 1.0
    io.save_png(tmp_path / "a.png", img)
    back = iio.imread(tmp_path / "a.png")
    assert back.shape == (8, 9, 3) and back[..., 1].min() == 255 and back[..., 0].max() == 0


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_never_publishes_a_partial_file(tmp_path):
    target = tmp_path / "big.bin"
    code = ("import sys, time, os\n"
            "from engine.io import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    with open(tmp, 'wb') as fh:\n"
            "        fh.write(b'x' * 1000); fh.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert not target.exists()
    assert [p.name.startswith(".tmp-big-") for p in tmp_path.iterdir()] == [True]


@pytest.mark.parametrize("verts, faces, message", [
    (np.zeros((0, 3)), np.zeros((0, 3), int), "non-empty"),
    (np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]]), np.array([[0, 1, 2]]), "NaN"),
    (np.eye(3), np.array([[0, 1, 3]]), "face indices must lie in [0, 2]"),
])
def test_check_mesh_errors(verts, faces, message):
    with pytest.raises(MeshError, match=message.replace("[", r"\[").replace("]", r"\]")):
        io.check_mesh(verts, faces)


def test_export_dispatch(tmp_path):
    io.save_export(tmp_path / "a.json", {"k": np.float64(1.5)})
    io.save_export(tmp_path / "m.obj", trimesh.creation.box())
    io.save_export(tmp_path / "p.ply", io.PointCloud(np.zeros((3, 3))))
    io.save_export(tmp_path / "i.png", np.zeros((4, 4, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "i.png", "m.obj", "p.ply"]
    with pytest.raises(TypeError, match="don't know how to export"):
        io.save_export(tmp_path / "z.bin", object())
