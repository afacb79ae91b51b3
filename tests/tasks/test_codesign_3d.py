"""3D co-design: gradients through the 3D MPM rollout against central finite differences (f64) for every design
space, controller and task; determinism; every bed environment's passive drop; a body voxelised from a mesh.

Small cases (a 24-cell grid, 250 candidate particles, 10 control steps of 5 substeps) that share one set of 3D
kernels: compiled cold in about 40 s on the loaded 2-core box (f64), seconds from Taichi's offline cache."""
import numpy as np
import pytest
import torch

from engine.physics import environments
from tasks.codesign import ENVIRONMENTS, Problem, ProblemSpec, WorldSpec

from .test_codesign_grad import _fd_check


def _tiny3d(**kw):
    world = kw.pop("world", None) or WorldSpec(dim=3, res=24, robot_size=(0.2, 0.1, 0.1))
    base = dict(world=world, n_groups=2, steps=10, substeps=5, dt=2e-3)
    return Problem(ProblemSpec(**{**base, **kw}))


# every design space, controller and task appears at least once
CASES = [("particle", "mlp", "locomotion"), ("voxel", "pure_sine", "turning"), ("implicit", "sine", "waypoints"),
         ("sdf_basis", "sine", "velocity"), ("sdf_basis", "sine", "locomotion")]


@pytest.mark.slow
@pytest.mark.parametrize("representation,controller,task", CASES)
def test_3d_gradient_matches_finite_differences(representation, controller, task):
    p = _tiny3d(representation=representation, controller=controller, task=task)
    assert 200 <= p.world.n_robot <= 600
    if representation == "particle":  # off the symmetric start so every per-particle field matters
        with torch.no_grad():
            p.design.raw.add_(0.3 * torch.randn(p.design.raw.shape, generator=torch.Generator().manual_seed(1),
                                                dtype=p.design.raw.dtype))
    # eps 1e-6: at 1e-4 the central difference's truncation error alone is 2e-4 (particle/mlp) and 1e-2
    # (implicit/waypoints) of the derivative here; at 1e-6 every case agrees to ~1e-7
    err = _fd_check(p, n_dirs=1, eps=1e-6)
    print(f"3D {representation}/{controller}/{task}: relative error {err:.2e}")
    assert err < 1e-5


@pytest.mark.slow
def test_3d_same_seed_same_metrics():
    """Two problems built from one spec give the same loss, distance and gradient to 1e-9."""
    out = []
    for _ in range(2):
        p = _tiny3d(seed=3)
        loss, traj = p.loss()
        loss.backward()
        g = torch.cat([q.grad.flatten() for q in p.trainable()])
        out.append((loss.item(), p.summary(traj)["distance"], g))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-9, abs=1e-12)
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-9, abs=1e-12)
    assert torch.allclose(out[0][2], out[1][2], rtol=1e-9, atol=1e-15)


# SoftZoo's bed materials: sand, snow, clay, mud and water (shallow and deep). Ice's 3 cm slab is thinner than
# one particle layer on this small grid; its floor is the tested part (2D: test_codesign_envs.py)
BEDS = ["desert", "snow", "clay", "wetland", "shallow_water", "ocean"]


@pytest.mark.slow
@pytest.mark.parametrize("env", BEDS)
def test_3d_passive_drop_on_bed_settles(env):
    """The robot (muscles off) drops onto each bed in 3D for 0.5 s: everything stays finite and inside the domain
    (the solver's guard raises otherwise), the body ends lower than it started but above the floor, and the motion
    dies down. Measured: final mean robot speed 0.02-0.05 m/s on the granular and plastic beds, 0.14-0.15 on water
    (sloshing), from a peak of 0.8-1.1 m/s at impact."""
    p = _tiny3d(world=WorldSpec(env=env, dim=3, res=24, robot_size=(0.25, 0.12, 0.12)), steps=50, substeps=5)
    with torch.no_grad():
        for q in p.controller.parameters():
            q.zero_()  # sine controller: tanh(0) = 0, no activation
        traj = p.rollout(record_all=True)
    w = p.world
    assert w.model.n > w.n_robot  # the bed is there
    x_end = torch.as_tensor(traj.all_x[-1])
    assert torch.isfinite(x_end).all()
    assert float(x_end[:, 1].min()) > (3.0 - 1.0) / 24  # nothing below the floor collider band
    y0, y1 = float(traj.com(0)[1]), float(traj.com(len(traj.xs) - 1)[1])
    assert y1 < y0  # it fell onto / into the bed
    speed = [float(v.norm(dim=1).mean()) for v in traj.vs]
    print(f"3D drop on {env}: robot CoM y {y0:.3f} -> {y1:.3f} m, mean speed peak {max(speed):.2f}, "
          f"final {speed[-1]:.3f} m/s")
    assert speed[-1] < 0.25 and speed[-1] < 0.5 * max(speed)


def test_mesh_body_is_voxelised_inside_the_mesh(tmp_path):
    """--set body=PATH: a closed mesh becomes the robot's candidate particles, all inside the mesh, filling it."""
    import trimesh

    path = tmp_path / "capsule.obj"
    trimesh.creation.capsule(height=0.6, radius=0.25).apply_transform(
        trimesh.transformations.rotation_matrix(np.pi / 2, (0, 1, 0))).export(path)
    w = _tiny3d(world=WorldSpec(dim=3, res=24, ppc=2, robot_size=(0.2, 0.1, 0.1), body=str(path))).world
    pts = w.x0_robot.numpy()
    ext = pts.max(0) - pts.min(0)
    assert ext.max() == pytest.approx(0.2, abs=2.0 / 48)  # scaled to the robot box's length
    # every particle lies inside the scaled, placed capsule (axis along x through the particles' centre, which the
    # lattice leaves within half a spacing of the capsule's)
    c = (pts.max(0) + pts.min(0)) / 2
    r = np.linalg.norm((pts - c)[:, 1:], axis=1)
    ax = np.clip(np.abs(pts[:, 0] - c[0]) - 0.3 * 0.2 / 1.1, 0, None)
    assert (np.hypot(ax, r) <= 0.25 * 0.2 / 1.1 + 0.75 / 48).all()
    # the particles fill the scaled capsule: count against its volume / particle volume
    scale = 0.2 / 1.1
    vol = (np.pi * 0.25**2 * 0.6 + 4 / 3 * np.pi * 0.25**3) * scale**3
    assert len(pts) == pytest.approx(vol / (1 / 48) ** 3, rel=0.25)


@pytest.mark.slow
def test_3d_scene_outputs_and_resume(tmp_path):
    """`tide run codesign --set dim=3` end to end on a tiny case: every output, a watertight design mesh around the
    exported particles, 3D video frames, and --resume equal to the uninterrupted run."""
    import json

    import trimesh

    from .test_codesign_scene import SCENE
    from engine.cli import main

    tiny = ["--set", "dim=3", "--set", "res=16", "--set", "ppc=2", "--set", "steps=4", "--set", "frames=2",
            "--set", "width=96", "--set", "height=48", "--set", "n_groups=2", "--no-progress"]
    full = tmp_path / "full"
    assert main(["run", SCENE, "--out", str(full), *tiny, "--set", "iterations=2"]) == 0
    for name in ("video.mp4", "loss.png", "metrics.json", "config.json", "design.ply", "design_mesh.obj"):
        assert (full / name).is_file(), name
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["backend"]["precision"] == "f64"  # the 3D default (scenes/codesign.py: default_precision)
    m = json.loads((full / "metrics.json").read_text())
    mesh = trimesh.load(full / "design_mesh.obj")
    pts = trimesh.load(full / "design.ply").vertices
    assert mesh.is_watertight and pts.shape[1] == 3 and np.ptp(pts[:, 2]) > 0.05  # a 3D body, not a slab
    np.testing.assert_allclose(mesh.bounds, [pts.min(0), pts.max(0)], atol=1.0 / 16)
    part = tmp_path / "part"
    assert main(["run", SCENE, "--out", str(part), *tiny, "--set", "iterations=1"]) == 0
    assert main(["run", SCENE, "--out", str(part), *tiny, "--set", "iterations=2", "--resume"]) == 0
    r = json.loads((part / "metrics.json").read_text())
    assert r["resumed_from_iteration"] == 1
    assert r["distance"] == pytest.approx(m["distance"], rel=1e-9, abs=1e-12)
