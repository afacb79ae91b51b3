"""Every environment preset builds, simulates and gives finite, non-zero co-design gradients; 3D runs forward."""
import pytest
import torch

from engine.physics import environments
from tasks.codesign import ENVIRONMENTS, Problem, ProblemSpec, WorldSpec


@pytest.mark.slow
@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_environment_rollout_and_gradient(env):
    p = Problem(ProblemSpec(world=WorldSpec(env=env, res=32), n_groups=2, steps=10, substeps=10))
    layered = environments.get(env).bed is not None
    assert (p.world.model.n > p.world.n_robot) == layered  # terrain particles exactly where a layer is declared
    loss, traj = p.loss()
    loss.backward()
    grads = [q.grad for q in p.trainable() if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the robot rests on the terrain: it sinks at most one cell into the floor collider band (grid-node
    # colliders stop particles within a cell) and does not fly up
    y = traj.xs[-1][:, 1].detach()
    assert float(y.min()) > (3.0 - 1.0) / 32
    assert float(y.max()) < float(traj.xs[0][:, 1].max()) + 0.02


@pytest.mark.slow
def test_3d_rollout_runs():
    p = Problem(ProblemSpec(world=WorldSpec(dim=3, res=24, robot_size=(0.2, 0.1, 0.1)), n_groups=2, steps=3,
                            substeps=5))
    with torch.no_grad():
        traj = p.rollout()
    assert traj.xs[-1].shape == (p.world.n_robot, 3)
    assert torch.isfinite(traj.xs[-1]).all()
    # no floor contact yet: internal muscle forces cannot move the centre of mass sideways (momentum conservation)
    assert abs(float(traj.displacement()[0])) < 1e-12
