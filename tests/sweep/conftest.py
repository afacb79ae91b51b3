import pytest

from .helpers import GRID, sweep


@pytest.fixture(scope="session")
def grid_sweep(tmp_path_factory):
    """The reference sweep: a 2 x 2 grid x 2 seeds of the toy sweep scene on 2 workers."""
    out = tmp_path_factory.mktemp("sweep") / "grid"
    res = sweep(*GRID, "--out", str(out), "--workers", "2", "--plot", "--metric", "distance", "--metric",
                "final_loss")
    return out, res
