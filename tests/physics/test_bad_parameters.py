"""Library users get a ValueError naming the parameter, not a crash inside a kernel."""
import pytest

from engine.physics import ModelBuilder
from engine.physics.guards import check_dt


@pytest.mark.parametrize("kw, message", [
    ({"E": -5.0}, "Young's modulus E must be > 0"), ({"E": 0.0}, "Young's modulus"),
    ({"nu": 0.5}, r"Poisson ratio nu must be in \[0, 0.5\)"), ({"nu": -0.1}, "Poisson ratio"),
    ({"rho": 0.0}, "density rho must be > 0"), ({"E": float("nan")}, "Young's modulus"),
])
def test_material_parameters(kw, message):
    b = ModelBuilder(res=(16, 16), dx=1 / 16)
    with pytest.raises(ValueError, match=message):
        b.add_box((0.3, 0.3), (0.6, 0.6), material="elastic", **kw)
    assert not b.bodies


@pytest.mark.parametrize("kw, message", [
    ({"res": (8, 8, 8, 8), "dx": 0.1}, "2 or 3 entries"), ({"res": (16,), "dx": 0.1}, "2 or 3 entries"),
    ({"res": (16, 16), "dx": 0.0}, "dx must be a positive"), ({"res": (16, 16), "dx": 0.1, "ppc": 0}, "ppc"),
    ({"res": (5, 16), "dx": 0.1}, "no room inside"),
])
def test_builder_shape(kw, message):
    with pytest.raises(ValueError, match=message):
        ModelBuilder(**kw)


@pytest.mark.parametrize("dt", [0.0, -1e-4, float("nan"), float("inf")])
def test_dt_must_be_positive(dt):
    with pytest.raises(ValueError, match="dt must be a positive time step"):
        check_dt(None, dt)
