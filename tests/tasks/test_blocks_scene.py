"""Blocks world end to end: a short fit on a tiny Embree-rendered scene lowers the Chamfer distance; `tide run
blocks_world` writes its outputs; bad data exits 2 with nothing written."""
import json

import numpy as np
import pytest
import torch

from engine import cli
from tasks.blocks import estimate_frame, load_gt_points, load_views
from tasks.blocks.fit import FitSettings, Fitter, block_points, chamfer_l1
from tasks.blocks.model import BlocksModel, sweep_ground
from tasks.blocks.synthetic import write_scene


def test_short_fit_lowers_chamfer(tmp_path):
    torch.set_num_threads(1)
    write_scene(tmp_path, seed=7, views=12, size=48, n_blocks=2)
    v = load_views(tmp_path)
    gt = load_gt_points(tmp_path)
    fr = estimate_frame(v.cameras)
    cams = fr.cameras_to_norm(v.cameras)
    h, tex, _ = sweep_ground(v.images, cams, np.linspace(-1.0, 0.2, 25), 2.0, 64)
    assert abs(h - (-0.25 / fr.radius)) < 0.06                          # the ground is at z = 0 in the world
    m = BlocksModel(4, level=1, tex_size=8, ground=h, ground_tex=tex, generator=torch.Generator().manual_seed(0),
                    colour=v.images.reshape(-1, 3).mean(0))
    f = Fitter(m, v.images, cams, FitSettings(iterations=150, batch=3, w_parsimony=0.0))
    start = chamfer_l1(block_points(m, m.alive, fr, n=4000), gt)
    for it in range(150):
        f.step(it)
    end = chamfer_l1(block_points(m, m.alive, fr, n=4000), gt)
    assert end < 0.6 * start, (start, end)


def _run(args):
    return cli.main(["run", "blocks_world", "--no-progress", "--arch", "cpu", "--precision", "f64", *args])


def test_cli_outputs_and_resume(tmp_path):
    out = tmp_path / "out"
    tiny = ["--set", "iterations=4", "--set", "resolution=24", "--set", "synthetic_views=4", "--set", "frames=2",
            "--set", "max_blocks=3", "--set", "mesh_level=1"]
    assert _run([*tiny, "--out", str(out)]) == 0
    for name in ("blocks.json", "blocks.glb", "video.mp4", "metrics.json", "loss.png", "config.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"blocks", "psnr", "chamfer_l1"} <= set(metrics)
    doc = json.loads((out / "blocks.json").read_text())
    assert len(doc["blocks"]) == metrics["blocks"] and np.allclose(doc["ground"]["normal"], [0, 0, 1], atol=1e-6)
    assert _run([*tiny[:1], "iterations=6", *tiny[2:], "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_from_iteration"] == 4


@pytest.mark.parametrize("data", ["missing", "empty"])
def test_cli_bad_data_exits_2_and_writes_nothing(tmp_path, data, capsys):
    folder = tmp_path / "d"
    if data == "empty":
        folder.mkdir()
    out = tmp_path / "out"
    assert _run(["--set", f"data={folder}", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("tide: error:") and "\n" not in err
