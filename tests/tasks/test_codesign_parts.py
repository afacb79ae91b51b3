"""Design spaces, controllers and objectives: valid per-particle fields, analytic checks of the task losses,
and clear errors for bad configurations (no physics here, so these run in a second)."""
import math

import pytest
import torch

from engine.errors import ConfigError
from tasks.codesign import (REPRESENTATIONS, Locomotion, ProblemSpec, Trajectory, Turning, VelocityTracking,
                            Waypoints, WorldSpec, make_controller, make_design, make_objective, observe)
from tasks.codesign.algorithms import CMAES, RandomSearch, check_budget
from tasks.codesign.controllers import observation_size, orientation

DT = torch.float64


def _coords(dim, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, dim, generator=g, dtype=DT) * 2 - 1)


def _check_fields(f, n, G, dim):
    assert f.occupancy.shape == (n,) and f.softness.shape == (n,)
    assert f.muscle.shape == (n, G) and f.fibre.shape == (n, dim)
    assert torch.isfinite(f.occupancy).all() and (f.occupancy > 0).all() and (f.occupancy < 1).all()
    assert (f.softness > 0).all() and (f.softness <= 1).all()
    assert (f.muscle >= 0).all()
    torch.testing.assert_close(f.muscle.sum(1), torch.ones(n, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(f.fibre.norm(dim=1), torch.ones(n, dtype=DT), atol=1e-9, rtol=0)
    E, rho = f.material(1e4, 1e3)
    assert (E > 0).all() and (rho > 0).all()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", REPRESENTATIONS)
def test_design_fields_valid_and_differentiable(name, dim):
    u = _coords(dim)
    design = make_design(name, u, n_groups=3, seed=1).to(DT)
    # perturb every parameter so the check is not only about the initialisation
    with torch.no_grad():
        for p in design.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2), dtype=DT))
    f = design(u)
    _check_fields(f, len(u), 3, dim)
    # mass stays differentiable in every parameter that shapes it (no hard cut-off): a non-zero gradient
    (f.occupancy.sum() + f.muscle[:, 0].sum() + f.fibre[:, 0].sum()).backward()
    grads = [p.grad for p in design.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_sdf_basis_interpolates_base_shapes():
    """With all weight on one base shape, occupancy follows that shape's inside/outside."""
    from tasks.codesign.designs import base_sdf

    u = _coords(2, 500)
    d = make_design("sdf_basis", u, 2).to(DT)
    with torch.no_grad():
        d.alpha.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0]))  # ellipse
    occ = d(u).occupancy
    inside = base_sdf("ellipse", u) < -0.05
    outside = base_sdf("ellipse", u) > 0.05
    assert (occ[inside] > 0.6).all() and (occ[outside] < 0.4).all()


@pytest.mark.parametrize("name", ["sine", "pure_sine", "mlp"])
def test_controllers_bounded(name):
    c = make_controller(name, n_groups=3, dim=2, strength=0.3, seed=0).to(DT)
    x = _coords(2, 50) * 0.1 + 0.5
    w = torch.softmax(torch.randn(50, 3, dtype=DT), 1)
    for t in torch.linspace(0, 1, 7, dtype=DT):
        obs = observe(x, torch.zeros_like(x), x, torch.ones(50, dtype=DT), w, t) if c.closed_loop else None
        a = c(t, obs)
        assert a.shape == (3,) and (a.abs() <= 0.3 + 1e-12).all()


def test_sine_controller_formula():
    c = make_controller("sine", n_groups=2, dim=2, omega=20.0, strength=0.5).to(DT)
    t = torch.tensor(0.37, dtype=DT)
    phases = torch.tensor([2 * math.pi * k / 4 for k in range(4)], dtype=DT)
    expect = 0.5 * torch.tanh(c.W @ torch.sin(20.0 * t + phases) + c.b)
    torch.testing.assert_close(c(t), expect)


def test_observation_layout():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=DT)
    v = torch.tensor([[1.0, 0.0]] * 4, dtype=DT)
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=DT)
    obs = observe(x, v, x, torch.ones(4, dtype=DT), w, 0.0, omega=1.0)
    assert obs.shape == (observation_size(2, 2),)
    torch.testing.assert_close(obs[:2], torch.tensor([1.0, 0.0], dtype=DT))  # CoM velocity
    torch.testing.assert_close(obs[2:4], torch.tensor([1.0, 0.0], dtype=DT))  # unrotated: cos 0, sin 0
    torch.testing.assert_close(obs[4:8], torch.tensor([0.0, -0.5, 0.0, 0.5], dtype=DT))  # group centroids - CoM
    torch.testing.assert_close(obs[8:], torch.tensor([0.0, 1.0], dtype=DT))


def _rigid_traj(shift=(0.0, 0.0), angle=0.0, steps=4, dt=0.1):
    x0 = _coords(2, 30, seed=3) * 0.1 + 0.5
    c = x0.mean(0)
    xs, vs = [], []
    for k in range(steps + 1):
        f = k / steps
        Rk = torch.tensor([[math.cos(f * angle), -math.sin(f * angle)], [math.sin(f * angle), math.cos(f * angle)]],
                          dtype=DT)
        xs.append((x0 - c) @ Rk.T + c + f * torch.tensor(shift, dtype=DT))
        vs.append(torch.tensor(shift, dtype=DT).expand_as(x0) / (steps * dt))
    return Trajectory(xs=xs, vs=vs, mass=torch.ones(30, dtype=DT), x0=x0, dt=dt)


def test_objectives_analytic():
    tr = _rigid_traj(shift=(0.3, 0.0))
    assert Locomotion().loss(tr).item() == pytest.approx(-0.3)
    assert Locomotion(mode="velocity").loss(tr).item() == pytest.approx(-0.3 / 0.4)
    assert Locomotion(heading=(-1.0,)).reward(tr) == pytest.approx(-0.3)
    assert VelocityTracking(target=(0.75,)).loss(tr).item() == pytest.approx(0.0, abs=1e-20)
    assert VelocityTracking(target=(0.25,)).loss(tr).item() == pytest.approx(0.25)
    assert Waypoints([[0.15], [0.3]], times=[0.5, 1.0]).loss(tr).item() == pytest.approx(0.0, abs=1e-20)
    assert Waypoints([[0.25]], times=[1.0]).loss(tr).item() == pytest.approx(0.05**2)
    rot = _rigid_traj(angle=0.4)
    assert Turning().loss(rot).item() == pytest.approx(-0.4)
    assert orientation(rot.xs[-1], rot.x0, rot.mass).item() == pytest.approx(0.4)


def test_bad_configs_raise_config_error():
    u = _coords(2)
    with pytest.raises(ConfigError, match="representation"):
        make_design("octree", u, 2)
    with pytest.raises(ConfigError, match="environment"):
        WorldSpec(env="moon").validate()
    with pytest.raises(ConfigError, match="environment"):
        ProblemSpec(world=WorldSpec(env="lava")).validate()
    with pytest.raises(ConfigError, match="controller"):
        make_controller("pid", 2, 2)
    with pytest.raises(ConfigError, match="task"):
        make_objective("flying")
    with pytest.raises(ConfigError, match="budget"):
        check_budget(-1)
    with pytest.raises(ConfigError, match="population"):
        RandomSearch([0.0], lambda xs: [0.0] * len(xs), popsize=0)
    with pytest.raises(ConfigError, match="sigma0"):
        CMAES([0.0, 0.0], lambda xs: [0.0] * len(xs), sigma0=-1)
    with pytest.raises(ConfigError, match="n_groups"):
        make_design("voxel", u, 0)


def test_cmaes_and_random_search_on_a_quadratic():
    """The optimisers find the optimum of a reward with a known maximiser (independent of the physics)."""
    target = [0.3, -0.2, 0.5]
    reward = lambda xs: [-sum((a - b) ** 2 for a, b in zip(x, target)) for x in xs]  # noqa: E731
    es = CMAES([0.0] * 3, reward, sigma0=0.3, seed=0)
    for i in range(40):
        s = es.step(i)
    assert s.best < 1e-6
    rs = RandomSearch([0.0] * 3, reward, sigma=0.1, popsize=8, seed=0)
    start = sum(t * t for t in target)
    for i in range(30):
        s = rs.step(i)
    assert s.best < 0.2 * start
