"""The jelly drop against symmetry and free fall.

Mirror symmetry: a body symmetric about a lattice plane of the grid, dropped on a flat floor, must not move
sideways. The grid nodes sit at i·dx, so x = 0.5 m = (res/2)·dx is a node plane (even res) or a cell-centre plane
(odd res); the floor is the same everywhere and the jelly never reaches the side walls. Mirroring x → 1 − x (and
z → 1 − z in 3D) then maps the discrete system (P2G, grid update, sticky floor, G2P) onto itself, so in exact
arithmetic the horizontal centre of mass stays at 0.5 m and the horizontal momentum at 0; in f64 only rounding
(~1e-16 relative per operation) can break the symmetry."""
import numpy as np
import pytest

from .helpers import run_scene

ROUNDING = 1e-9  # [m]: 1e-7 of a particle spacing, orders above f64 rounding, far below any physical drift


@pytest.mark.parametrize("dim", [2, 3])
def test_symmetric_jelly_drop_stays_centred(dim):
    scene = run_scene("jelly_drop", frames=0, dim=dim, res=16, drop_height=0.2)
    m, st = scene.model, scene.state
    horizontal = [0] if dim == 2 else [0, 2]
    x0 = m.x0.numpy()
    # the box [0.35, 0.65) is 9.6 particle spacings wide: the lattice must be centred in it, not flush with 0.35
    assert np.abs(x0[:, horizontal].mean(0) - 0.5).max() < 1e-12, x0[:, horizontal].mean(0)
    assert np.allclose(np.sort(x0[:, 0]), np.sort(1.0 - x0[:, 0]), atol=1e-12)  # mirror image of itself
    drift, p_h, vy = 0.0, 0.0, []
    lowest = float(x0[:, 1].min())
    for f in range(30):  # 0.5 s: the fall (0.2 m, ~0.2 s), the impact on the sticky floor and the rebound
        scene.step(f)
        x, v = st.x.numpy(), st.v.numpy()
        drift = max(drift, float(np.abs(x[:, horizontal].mean(0) - 0.5).max()))
        p_h = max(p_h, float(np.abs(v[:, horizontal].mean(0)).max()))
        vy.append(float(v[:, 1].mean()))
        lowest = min(lowest, float(x[:, 1].min()))
    floor = m.bound * m.dx
    assert lowest < floor + 2 * m.dx and min(vy) < -1.0 and max(vy[vy.index(min(vy)):]) > 0.1, (lowest, vy)
    assert drift < ROUNDING, drift
    assert p_h < ROUNDING, p_h


@pytest.mark.parametrize("dim", [2, 3])
def test_low_res_jelly_falls_freely_near_the_ceiling(dim):
    """At res 16 the block's top starts 1.5 cells below the ceiling's wall band, inside its particles' stencil. The
    ceiling must only push: before contact the centre of mass follows ½·g·t² (symplectic Euler adds ½·g·dt·t,
    < 0.1 mm here). A slip ceiling, which removes the normal velocity both ways, held it: 2.6 cm instead of 8.7."""
    scene = run_scene("jelly_drop", frames=0, dim=dim, res=16)
    y0 = float(scene.state.x[:, 1].mean())
    for f in range(8):
        scene.step(f)
    t = scene.time
    fell = y0 - float(scene.state.x[:, 1].mean())
    assert abs(fell - 0.5 * 9.81 * t * t) < 0.5 * 9.81 * scene.substep_dt * t + 1e-4, (fell, 0.5 * 9.81 * t * t)
