"""`tide view RUN_DIR` replays a finished run: `tide run` records each video frame's geometry (geometry.npz), the
viewer plays it back; a run without it is shown from its exports. `--frames` means the same in every scene, and
`tide view` without a display is one line, exit 2."""
import dataclasses
import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from engine.cli import _load_config, main
from engine.scene import load_scene
from engine.viewer.replay import GeometryRecorder, flatten, load_run, read_sequence, unflatten

ROOT = Path(__file__).resolve().parents[2]
SCENES = sorted(p for p in (ROOT / "scenes").glob("*.py") if not p.stem.startswith("_"))
FLAGS = ["--arch", "cpu", "--precision", "f64", "--no-progress"]


def _geo(t):
    x = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]) + t
    return {"particles": {"x": x, "color": np.array([[1, 0, 0], [0, 1, 0]]), "radius": 0.01},
            "meshes": [{"vertices": np.eye(3), "faces": np.array([[0, 1, 2]]), "color": (0.5, 0.5, 0.5)}],
            "heightfield": (np.linspace(0, 1, 4), np.full(4, 0.1)), "walls": [((0, 0, 0), (0.1, 1, 1))],
            "ground": 0.1, "bounds": ((0, 0, 0), (1, 1, 1))}


def test_recorder_stores_what_changes_and_reads_back_every_frame(tmp_path):
    rec = GeometryRecorder()
    for t in range(4):
        assert rec.append(_geo(0.1 * t))
    path = rec.save(tmp_path / "geometry.npz")
    with np.load(path) as z:
        assert int(z["frames"]) == 4
        assert [k for k in z.files if k.endswith("meshes.0.vertices")] == ["f0.meshes.0.vertices"]  # static: once
        assert sum(k.endswith("particles.x") for k in z.files) == 4  # moving: every frame
    frames = read_sequence(path)
    for t, geo in enumerate(frames):
        want = flatten(_geo(0.1 * t))
        got = flatten(geo)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    assert unflatten(flatten(_geo(0)))["walls"][0][1].tolist() == pytest.approx([0.1, 1, 1])


def test_recorder_stops_at_its_size_limit():
    rec = GeometryRecorder(limit_bytes=400)  # the first frame stores ~230 bytes, then 24 per frame
    assert rec.append(_geo(0.0))  # under the limit
    results = [rec.append(_geo(0.1 * t)) for t in range(1, 20)]
    assert not all(results) and rec.full and not rec.append(_geo(5.0))


def test_run_writes_geometry_and_view_replays_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "jelly_drop", "--set", "res=16", "--frames", "8", "--out", str(out), *FLAGS]) == 0
    frames = read_sequence(out / "geometry.npz")
    assert len(frames) == 8
    # the last recorded frame is the state the run exported (particles.ply, written independently)
    ply = trimesh.load(out / "particles.ply")
    np.testing.assert_allclose(frames[-1]["particles"]["x"], np.asarray(ply.vertices)[:, :2], atol=1e-5)
    assert not np.allclose(frames[0]["particles"]["x"], frames[-1]["particles"]["x"])  # it falls
    view = tmp_path / "view"
    assert main(["view", str(out), "--offscreen", "--res", "160x120", "--out", str(view), "--arch", "cpu",
                 "--precision", "f64"]) == 0
    imgs = [iio.imread(view / "frames" / f"frame_{i:05d}.png").astype(int) for i in range(8)]
    red = [((im[..., 0] - im[..., 1]) > 80) for im in imgs]  # the jelly's colour
    assert all(r.mean() > 0.005 for r in red)
    rows = [np.nonzero(r.any(1))[0].max() for r in red]
    assert rows[-1] > rows[0] + 3  # the replayed jelly falls down the picture (8.7 cm in 8 frames)
    # the replay is the run's own frames, not a new simulation: --set is refused for a run folder
    assert main(["view", str(out), "--set", "res=32", "--offscreen", "--out", str(tmp_path / "x")]) == 2
    # without geometry.npz, the exports are shown (one still frame: the exported particles and surface)
    (out / "geometry.npz").unlink()
    still = load_run(out)
    assert still.source == "exports" and len(still.frames) == 1
    assert len(still.frames[0]["particles"]["x"]) == len(ply.vertices) and still.frames[0]["meshes"]
    # a folder that is not a run is one line, exit 2, nothing written
    assert main(["view", str(tmp_path), "--offscreen", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists()
    assert "not a tide run folder" in capsys.readouterr().err


@pytest.mark.parametrize("path", SCENES, ids=[p.stem for p in SCENES])
def test_frames_sets_the_scene_s_own_frames_option(path):
    module = load_scene(path)
    names = {f.name for f in dataclasses.fields(module.Config)}
    cfg = _load_config(module, [], None, False, 7)
    if "frames" in names:
        assert cfg.frames == 7


def test_frames_given_twice_is_refused(tmp_path, capsys):
    assert main(["run", "jelly_drop", "--frames", "2", "--set", "frames=3", "--out", str(tmp_path / "o")]) == 2
    assert main(["run", "mesh_turntable", "--frames", "0", "--out", str(tmp_path / "o")]) == 2  # frames >= 1
    assert not (tmp_path / "o").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("tide: error:") for e in err)


@pytest.mark.slow
def test_codesign_video_parts_follow_frames(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["run", "codesign", "--set", "res=16", "--set", "iterations=0", "--set", "steps=2", "--set",
                 "substeps=2", "--set", "width=64", "--set", "height=32", "--frames", "4", "--out", str(out),
                 *FLAGS]) == 0
    video = iio.imread(out / "video.mp4")
    assert len(video) == 8  # the initial robot for 4 frames, then the optimised one for 4
    assert json.loads((out / "config.json").read_text())["scene"]["frames"] == 4


def test_view_without_a_display_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["view", "jelly_drop"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no display" in err[0] and "--offscreen" in err[0]
    assert os.environ.get("DISPLAY") is None
