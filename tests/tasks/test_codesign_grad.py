"""Differentiable co-design: gradients through the MPM rollout against central finite differences (f64), and a
short diffsim optimisation that must clearly improve the task."""
import numpy as np
import pytest
import torch

from tasks.codesign import Diffsim, Problem, ProblemSpec, WorldSpec


def _tiny(**kw):
    base = dict(world=WorldSpec(res=32, robot_size=(0.2, 0.1)), n_groups=2, steps=8, substeps=5, dt=1e-3)
    return Problem(ProblemSpec(**{**base, **kw}))


def _fd_check(problem, n_dirs=2, eps=1e-4, seed=0):
    """Compare the autograd directional derivative of the loss along random directions with central differences
    over all trainable parameters; returns the worst relative error."""
    params = problem.trainable()
    loss, _ = problem.loss()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n_dirs):
        dirs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
        with torch.no_grad():
            for p, d in zip(params, dirs):
                p.add_(eps * d)
            lp = float(problem.loss()[0])
            for p, d in zip(params, dirs):
                p.sub_(2 * eps * d)
            lm = float(problem.loss()[0])
            for p, d in zip(params, dirs):
                p.add_(eps * d)
        fd = (lp - lm) / (2 * eps)
        assert abs(fd) > 1e-10, "the loss does not depend on the parameters: the check would be vacuous"
        worst = max(worst, abs(analytic - fd) / abs(fd))
        print(f"directional derivative: autograd {analytic:.10e}  central FD {fd:.10e}")
    return worst


def test_gradient_matches_finite_differences_sdf_sine():
    """Co-design gradient (SDF-basis body + open-loop sine) vs central differences."""
    p = _tiny(representation="sdf_basis", controller="sine")
    assert _fd_check(p) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("task", ["turning", "velocity", "waypoints"])
def test_gradient_of_other_tasks(task):
    """The turning, velocity-tracking and waypoint losses differentiate through the physics as well."""
    p = _tiny(representation="voxel", controller="pure_sine", task=task, steps=10, substeps=10)
    assert _fd_check(p, n_dirs=1) < 1e-4


@pytest.mark.slow
def test_gradient_matches_finite_differences_particle_closed_loop():
    """Per-particle design (occupancy -> mass and stiffness, softness, groups, fibres) with a closed-loop MLP:
    gradients go through the observations too."""
    p = _tiny(representation="particle", controller="mlp", steps=15, substeps=10)
    with torch.no_grad():  # move off the symmetric initialisation so every field matters
        p.design.raw.add_(0.3 * torch.randn(p.design.raw.shape, generator=torch.Generator().manual_seed(1),
                                            dtype=p.design.raw.dtype))
    assert _fd_check(p, n_dirs=1) < 1e-4


def test_short_diffsim_optimisation_improves_locomotion():
    """Five Adam steps on a fixed seed: the robot must travel clearly farther than the initial one."""
    p = _tiny(steps=25, substeps=10, n_groups=3, seed=0)
    with torch.no_grad():
        d0 = p.summary(p.rollout())["distance"]
    opt = Diffsim(p, lr=0.05)
    losses = [opt.step(i).loss for i in range(6)]
    with torch.no_grad():
        d1 = p.summary(p.rollout())["distance"]
    assert np.isfinite(losses).all()
    assert losses[0] == pytest.approx(-d0, rel=1e-6, abs=1e-9)
    # a real margin: at least 2 cm farther (the initial robot moves less than 1 cm)
    assert d1 > d0 + 0.02, (d0, d1, losses)
