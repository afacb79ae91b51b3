"""scripts/codesign_table.py's table and bar chart from sweep rows (no simulation): columns, scores, markdown, PNG."""
import importlib.util
import os
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
    spec = importlib.util.spec_from_file_location("codesign_table", os.path.join(ROOT, "scripts", "codesign_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows():
    rows = []
    for env, base in (("ground", 0.1), ("desert", 0.0)):
        for col, (opt, which, gain) in {"diffsim": ("diffsim", "both", 3), "diffsim_control": ("diffsim", "control", 2),
                                        "cmaes": ("cmaes", "both", 1), "random": ("random", "both", 0)}.items():
            for seed in range(3):
                d = base + 0.01 * gain + 0.001 * seed
                rows.append({"status": "ok", "env": env, "optimiser": opt, "optimise": which, "seed": seed,
                             "distance": d, "initial_distance": base, "final_loss": -d, "initial_loss": -base})
    rows.append({"status": "failed", "env": "ground", "optimiser": "random", "optimise": "both", "seed": 9})
    return SimpleNamespace(table=rows)


@pytest.mark.parametrize("task", ["locomotion", "turning"])
def test_table_and_chart(tmp_path, task):
    mod = _script()
    opts = list(mod.COLUMNS)
    args = SimpleNamespace(task=task, dim=3, res=24, steps=20, substeps=5, budget=24, seeds="0,1,2")
    lines = mod.table_lines(_rows(), ["ground", "desert"], opts, args)
    assert lines[2] == "| environment | initial | diffsim | diffsim_control | cmaes | random |"
    ground = next(line for line in lines if line.startswith("| ground"))
    # mean over seeds 0.1 + 0.03 + {0, 0.001, 0.002}; std of {0, 0.001, 0.002}; the failed run is left out
    assert ground.split(" | ")[2] == f"0.131 ± {np.std([0, 0.001, 0.002]):.3f}"
    assert ground.split(" | ")[1] == "0.100"
    png = tmp_path / "t.png"
    mod.bar_chart(png, _rows(), ["ground", "desert"], opts, args)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # iterations on one budget: diffsim budget/3 Adam steps, search budget/popsize generations
    b = SimpleNamespace(budget=24, popsize=6)
    assert mod.iterations("diffsim_control", b) == 8 and mod.iterations("cmaes", b) == 4
