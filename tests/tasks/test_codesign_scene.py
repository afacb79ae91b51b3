"""The codesign scene end to end with tiny settings: outputs, metrics, exports, bad input and --resume."""
import json
import os

import pytest

from engine.cli import main

SCENE = os.path.join(os.path.dirname(__file__), "..", "..", "scenes", "codesign.py")
TINY = ["--set", "res=32", "--set", "steps=10", "--set", "substeps=5", "--set", "frames=3", "--set", "width=160",
        "--set", "height=80", "--set", "n_groups=2"]


def _run(out, *extra):
    return main(["run", SCENE, "--out", str(out), "--precision", "f64", "--no-progress", *TINY, *extra])


@pytest.mark.slow
def test_scene_outputs_and_resume(tmp_path):
    full = tmp_path / "full"
    assert _run(full, "--set", "iterations=3") == 0
    for name in ("video.mp4", "loss.png", "metrics.json", "config.json", "design.ply", "design_mesh.obj"):
        assert (full / name).is_file(), name
    m = json.loads((full / "metrics.json").read_text())
    for key in ("distance", "initial_distance", "final_loss", "iterations", "wall_time_s", "cost_of_transport"):
        assert key in m, key
    assert m["iterations"] == 3 and m["final_loss"] == pytest.approx(-m["distance"])
    # the surface mesh wraps the exported design: closed, and its box matches the point cloud's within a cell
    import numpy as np
    import trimesh

    mesh = trimesh.load(full / "design_mesh.obj")
    pts = trimesh.load(full / "design.ply").vertices
    assert mesh.is_watertight
    np.testing.assert_allclose(mesh.bounds, [pts.min(0), pts.max(0)], atol=1.0 / 32)
    # interrupted after 2 of 3 iterations, then resumed: same result as the uninterrupted run
    part = tmp_path / "part"
    assert _run(part, "--set", "iterations=2") == 0
    assert _run(part, "--resume", "--set", "iterations=3") == 0
    r = json.loads((part / "metrics.json").read_text())
    assert r["resumed_from_iteration"] == 2
    assert r["distance"] == pytest.approx(m["distance"], rel=1e-9)


@pytest.mark.parametrize("bad", ["env=moon", "representation=octree", "iterations=-1", "optimiser=sgd"])
def test_scene_bad_config_exits_2(tmp_path, bad, capsys):
    assert _run(tmp_path / "bad", "--set", bad) == 2
    assert not (tmp_path / "bad").exists()
    err = capsys.readouterr().err
    assert bad.split("=")[0] in err or bad.split("=")[1] in err


@pytest.mark.slow
@pytest.mark.parametrize("optimiser", ["cmaes", "random"])
def test_scene_gradient_free_in_process_and_resume(tmp_path, optimiser):
    """Gradient-free optimisers through the scene (in-process population), interrupted and resumed."""
    opts = ["--set", f"optimiser={optimiser}", "--set", "workers=0", "--set", "popsize=3", "--set", "optimise=control"]
    full = tmp_path / "full"
    assert _run(full, *opts, "--set", "iterations=2") == 0
    m = json.loads((full / "metrics.json").read_text())
    # search never ends worse than where it started (both score the start and keep the best)
    assert m["final_loss"] <= m["initial_loss"] + 1e-9
    part = tmp_path / "part"
    assert _run(part, *opts, "--set", "iterations=1") == 0
    assert _run(part, "--resume", *opts, "--set", "iterations=2") == 0
    r = json.loads((part / "metrics.json").read_text())
    assert r["distance"] == pytest.approx(m["distance"], rel=1e-9)
