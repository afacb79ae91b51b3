"""Terrain (Perlin heightfields as grid colliders, beds), the eight environment presets, robots, and scenes."""
import numpy as np
import pytest
import trimesh

from engine.physics import Boundary, ModelBuilder, Solver, environments, materials, terrain
from engine.physics.robot import add_mesh, add_voxels, add_walker

from .helpers import run_scene


def test_perlin_is_deterministic_bounded_and_rough():
    x = np.linspace(0, 1, 400)
    a, b = terrain.perlin(x, seed=3), terrain.perlin(x, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, terrain.perlin(x, seed=4))
    assert np.abs(a).max() < 1.5 and a.std() > 0.05
    pts = np.random.default_rng(0).random((500, 2))
    assert terrain.perlin(pts).std() > 0.05


def test_heightfield_normals_are_perpendicular_to_the_surface():
    res, dx = (64, 64, 64), 1 / 64
    h, n = terrain.heightfield(res, dx, base=0.2, amplitude=0.05)
    assert h.shape == (64, 64) and n.shape == (64, 64, 3)
    assert np.allclose(np.linalg.norm(n, axis=-1), 1)
    hx, hz = np.gradient(h, dx)
    assert np.allclose(n[..., 0] + hx * n[..., 1], 0) and np.allclose(n[..., 2] + hz * n[..., 1], 0)
    h2, _ = terrain.heightfield((64, 64), dx, base=0.0, array=[0.1, 0.3])  # from an array, floored at the walls
    assert h2[0] == pytest.approx(0.1) and h2[-1] == pytest.approx(0.3) and h2.min() >= 3 * dx


@pytest.mark.parametrize("mu,slides", [(0.2, True), (1.0, False)])
def test_block_on_a_slope_obeys_coulomb_friction(mu, slides):
    """A stiff block on a 30° heightfield slope (tan 30° = 0.58) slides when μ < tan θ and sticks when μ > tan θ."""
    res, dx = (64, 64), 1 / 64
    slope = np.tan(np.radians(30))
    x = np.arange(64) * dx
    h = 0.1 + slope * (1.0 - x) * 0.6
    n = np.stack([np.full(64, slope * 0.6), np.ones(64)], 1)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    b = ModelBuilder(res=res, dx=dx, ppc=2)
    # a block resting on the slope: lattice points within 0.08 m above the surface, 0.45 < x < 0.6
    pts = b.lattice((0.45, 0.05), (0.6, 0.6))
    hp = np.interp(pts[:, 0], x, h)
    b.add_points(pts[(pts[:, 1] > hp + dx) & (pts[:, 1] < hp + dx + 0.08)], material="elastic", E=1e5)
    m = b.finalize(boundary=Boundary(floor="separate", floor_friction=mu), heights=h, normals=n)
    st = m.state()
    Solver(m).advance(st, 1500, 2e-4)
    moved = float(st.x[:, 0].mean() - m.x0[:, 0].mean())
    # frictionless-ish sliding for 0.3 s: ½·g(sin θ − μ cos θ)·t² ≈ 0.14 m along the slope at μ = 0.2
    assert (moved > 0.05) if slides else (abs(moved) < 0.01), moved


@pytest.mark.parametrize("name", list(environments.PRESETS))
def test_environment_presets_build_and_run(name):
    scene = run_scene("terrain", frames=1, env=name, res=48, dt=2e-4)
    m = scene.metrics()
    assert np.isfinite(list(m.values())).all()
    assert m["robot_com_y"] > 0.1  # resting on or in the bed, not through the terrain


def test_robot_builders():
    b = ModelBuilder(res=(32, 32), dx=1 / 32, ppc=2)
    occ = np.zeros((4, 3), bool)
    occ[:, 0] = occ[1:3, 1:] = True
    groups = np.where(occ, -1, -1)
    groups[:, 0] = 0
    ids = add_voxels(b, occ, (0.3, 0.3), 1 / 32, groups=groups, fibres={0: (0.0, 1.0)})
    assert len(ids) == 2 and sum(len(b.bodies[i].points) for i in ids) == occ.sum() * 4
    add_walker(b, (0.3, 0.5), length=0.2, height=0.1)
    m = b.finalize()
    assert m.n_groups == 4
    b3 = ModelBuilder(res=(32, 32, 32), dx=1 / 32, ppc=2)
    add_mesh(b3, trimesh.creation.icosphere(subdivisions=2), (0.3, 0.3, 0.3), size=0.2)
    pts = b3.bodies[0].points
    c = pts.mean(0)
    # voxelisation keeps every voxel the surface touches: particles lie within one voxel diagonal of the sphere
    assert np.linalg.norm(pts - c, axis=1).max() < 0.1 + np.sqrt(3) / 32 and len(pts) > 0.5 * (4 / 3 * np.pi * 0.1 ** 3) / (1 / 64) ** 3


@pytest.mark.slow
def test_dam_break_front_is_slower_than_ritter():
    """The surge front is slower than Ritter's ideal 2·√(g·h0) (friction-free, shallow) but of its order."""
    m = run_scene("dam_break", frames=14, res=64, dt=2e-4).metrics()
    assert 0.35 < m["speed_over_ritter"] < 1.0, m


def test_jelly_drop_scene_contract():
    scene = run_scene("jelly_drop", frames=2, res=32, image_width=64, image_height=48)
    img = scene.render()
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 0
    assert scene.metrics()["com_height"] > 0
    ex = scene.exports()
    assert "particles.ply" in ex
    # the 2D jelly's surface, extruded into a slab: a closed mesh around the particles' xy extent
    mesh = ex["surface.obj"]
    x = scene.state.x.detach().cpu().numpy()
    assert mesh.is_watertight and ex["surface.glb"] is mesh
    assert np.all(mesh.bounds[0, :2] < x.min(0)) and np.all(mesh.bounds[1, :2] > x.max(0))
    assert np.all(mesh.bounds[1, :2] - mesh.bounds[0, :2] < x.max(0) - x.min(0) + 4 / 64)


def test_mixed_bed_on_perlin_terrain_runs_stably():
    """Desert with a water pool in a basin, on rough Perlin terrain (`--set env=desert pool=water roughness=…`):
    it builds both beds, runs 0.1 s without a blow-up, the water stays in its basin and the robot on top."""
    scene = run_scene("terrain", frames=6, env="desert", pool="water", roughness=0.05, res=48, dt=2e-4,
                      pool_x="0.55,0.9")
    mat = scene.model.material.cpu().numpy()
    water = mat == materials.WATER
    assert water.sum() > 100 and (mat == materials.SAND).sum() > 100
    h = scene.model.heights.cpu().numpy()
    assert np.ptp(h[3:-3]) > 0.05  # bumps plus the basin
    x = scene.state.x.detach().cpu().numpy()
    assert np.isfinite(x).all()
    assert 0.5 < x[water, 0].min() and x[water, 0].max() < 0.95
    m = scene.metrics()
    assert m["robot_min_y"] > float(h.max()) - 0.05
    ex = scene.exports()
    assert len(ex["robot.glb"].faces) > 0 and len(ex["surface.obj"].faces) > 0
