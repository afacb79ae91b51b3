"""Guards: dt checked against the elastic wave speed at setup; blow-ups raise SimulationError naming the substep
and the likely cause."""
import warnings

import pytest

from engine.errors import ConfigError, SimulationError
from engine.physics import ModelBuilder, Solver, guards


def _jelly(velocity=None):
    b = ModelBuilder(res=(64, 64), dx=1 / 64, ppc=2)
    b.add_box((0.35, 0.2), (0.65, 0.4), material="elastic", E=2e4, nu=0.3, velocity=velocity)
    return b.finalize()


def test_wave_speed_is_the_p_wave_speed():
    # c = sqrt((λ + 2μ)/ρ) = sqrt(E(1−ν)/((1+ν)(1−2ν)ρ)); water uses its bulk modulus
    c = guards.wave_speed([2e4], [0.3], [1e3], [0])[0]
    assert c == pytest.approx((2e4 * 0.7 / (1.3 * 0.4 * 1e3)) ** 0.5)
    assert guards.wave_speed([2e5], [0.0], [1e3], [6])[0] == pytest.approx((2e5 / 1e3) ** 0.5)


def test_dt_far_above_cfl_is_refused():
    m = _jelly()
    lim, E, c = guards.dt_limit(m)
    with pytest.raises(ConfigError, match=r"CFL limit for E=20000 Pa.*try dt ≤"):
        Solver(m).advance(m.state(), 5, 2.5 * m.dx / c)


def test_dt_above_cfl_warns_then_blows_up_naming_the_substep():
    """1.5·dx/c passes setup with a warning, and the run blows up; the error names the substep and the cure."""
    m = _jelly()
    _, _, c = guards.dt_limit(m)
    s = Solver(m)
    with pytest.warns(guards.StabilityWarning):
        with pytest.raises(SimulationError, match=r"blew up at substep \d+ .*CFL limit for E=20000 Pa.*try dt ≤"):
            s.advance(m.state(), 400, 1.5 * m.dx / c)


def test_stable_dt_runs_without_warning():
    m = _jelly()
    lim, _, _ = guards.dt_limit(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st = Solver(m).advance(m.state(), 100, lim)
    assert float(st.x[:, 1].min()) > 0


def test_particles_leaving_the_domain_are_reported():
    """A body thrown at 300 m/s crosses several cells per substep: the error says so and suggests a dt."""
    m = _jelly(velocity=(300.0, 0.0))
    with pytest.raises(SimulationError, match=r"substep \d+.*(left the domain|NaN).*more than half a cell"):
        Solver(m).advance(m.state(), 50, 1e-4)
