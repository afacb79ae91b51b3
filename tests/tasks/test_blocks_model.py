"""Blocks world model: f64 central finite differences of the new torch ops (environment ray cast, superquadric
mapping, overlap penalty), the superquadric convention of the exports, and the 6D rotation."""
import math

import numpy as np
import torch

from engine.render import Camera
from tasks.blocks.export import blocks_obj, world_blocks
from tasks.blocks.frame import SceneFrame, rotation_to_y
from tasks.blocks.model import (BlocksModel, inside_outside, matrix_to_rot6d, render_environment, rot6d_to_matrix,
                                superquadric_points)


def _fd(f, x, h=1e-6):
    g = torch.zeros_like(x)
    flat = x.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        fp = f().item()
        flat[i] = old - h
        fm = f().item()
        flat[i] = old
        g.view(-1)[i] = (fp - fm) / (2 * h)
    return g


def _cams():
    eye = torch.tensor([[2.0, 1.2, 1.0], [-1.5, 0.9, 2.0]], dtype=torch.float64)
    return Camera.from_look_at(eye, (0.0, 0.0, 0.0), fov_y=50.0, width=10, height=8)


def test_environment_gradients_match_central_differences():
    cams = _cams()
    torch.manual_seed(0)
    ground = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    tex = torch.rand(6, 6, 3, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 8, 10, 3, dtype=torch.float64)

    def loss():
        return (render_environment(cams, ground, tex, bg, 1.0) * w).sum()

    loss().backward()
    with torch.no_grad():
        for p in (ground, tex, bg):
            assert torch.allclose(p.grad, _fd(loss, p), rtol=1e-5, atol=1e-7)
    assert ground.grad.abs() > 1e-3            # the texture lookup moves with the height


def test_superquadric_points_on_surface_and_gradients():
    torch.manual_seed(1)
    dirs = torch.nn.functional.normalize(torch.randn(40, 3, dtype=torch.float64), dim=1)
    eps = torch.tensor([[0.3, 0.8], [1.4, 1.1]], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.4, 0.25]], dtype=torch.float64, requires_grad=True)
    p = superquadric_points(dirs, eps, scale)
    F = inside_outside(p, eps[:, None], scale[:, None])
    assert torch.allclose(F, torch.ones_like(F), atol=1e-9)       # Barr's F = 1 on the surface
    w = torch.randn_like(p)

    def loss():
        return (superquadric_points(dirs, eps, scale) * w).sum()

    loss().backward()
    with torch.no_grad():
        for x in (eps, scale):
            assert torch.allclose(x.grad, _fd(loss, x), rtol=1e-5, atol=1e-7)


def test_overlap_penalty_gradients_and_value():
    torch.set_default_dtype(torch.float64)
    try:
        m = BlocksModel(2, level=1, tex_size=4, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            m.trans.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0]]))
            m.alpha_logit.fill_(6.0)
        # two nearly coincident opaque blocks overlap; far apart they do not
        gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731 - the same samples for every evaluation
        assert m.overlap(300, generator=gen()) > 0.005
        m.trans.grad = None
        loss = lambda: m.overlap(50, tau=0.05, generator=gen())  # noqa: E731
        loss().backward()
        with torch.no_grad():
            for p in (m.trans, m.log_scale):
                assert torch.allclose(p.grad, _fd(loss, p), rtol=1e-4, atol=1e-7)
        with torch.no_grad():
            m.trans[1, 0] = 1.5
        assert m.overlap(300, generator=gen()) == 0
    finally:
        torch.set_default_dtype(torch.float32)


def test_overlap_stays_finite_for_far_boxy_blocks():
    """Boxy blocks (eps ~ 0.1) far from each other: F ~ |x/s|^(2/e) overflows f32, and the overlap penalty's
    gradient became NaN (seen in a default run); its log-space F matches log F where F is finite and keeps the
    gradient finite where it is not."""
    from tasks.blocks.model import log_inside_outside

    p = torch.tensor([[0.3, -0.2, 0.1], [0.02, 0.01, 0.03]], dtype=torch.float64)
    e = torch.tensor([[0.4, 1.3], [1.0, 0.2]], dtype=torch.float64)
    s = torch.tensor([[0.2, 0.3, 0.1], [0.1, 0.1, 0.2]], dtype=torch.float64)
    assert torch.allclose(log_inside_outside(p, e, s), torch.log(inside_outside(p, e, s)), rtol=1e-12)
    m = BlocksModel(2, level=1, tex_size=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.trans.copy_(torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]))
        m.log_scale.fill_(-10.0)                                          # half extents ~ s_min = 0.02
        m.shape.fill_(-6.0)                                               # eps ~ 0.10
        m.alpha_logit.fill_(6.0)
    m.overlap(200, generator=torch.Generator().manual_seed(0)).backward()
    assert all(torch.isfinite(q.grad).all() for q in (m.trans, m.log_scale, m.shape, m.rot6d))


def test_rot6d_round_trip():
    torch.manual_seed(2)
    R = rot6d_to_matrix(torch.randn(5, 6, dtype=torch.float64))
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(R), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(rot6d_to_matrix(matrix_to_rot6d(R)), R, atol=1e-12)


def test_exported_obj_satisfies_blocks_inside_outside():
    """blocks.obj vertices, in the world frame, lie on the surface F = 1 of the blocks.json superquadric (scale,
    e, R, t) under a non-trivial scene frame (tilted up axis, offset centre, radius 2.5)."""
    m = BlocksModel(3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        m.shape.copy_(torch.tensor([[-2.0, -2.0], [0.0, 1.5], [1.0, 0.0]]))
        m.rot6d.add_(torch.randn(3, 6, generator=torch.Generator().manual_seed(5)) * 0.5)
    up = np.array([0.2, 0.1, 1.0])
    frame = SceneFrame(rotation_to_y(up), np.array([1.0, -2.0, 0.5]), 2.5, up / np.linalg.norm(up))
    keep = torch.tensor([True, False, True])
    blocks = world_blocks(m, keep, frame)
    assert [b["index"] for b in blocks] == [0, 2]
    mesh = blocks_obj(blocks, level=2)
    V = np.asarray(mesh.vertices)
    per = len(V) // 2
    for k, b in enumerate(blocks):
        R, t = np.asarray(b["R"]), np.asarray(b["t"])
        assert abs(np.linalg.det(R) - 1) < 1e-6              # float32 parameters
        loc = (V[k * per:(k + 1) * per] - t) @ np.linalg.inv(R).T      # world -> block frame
        F = inside_outside(torch.as_tensor(loc), torch.tensor(b["e"]), torch.tensor(b["scale"]))
        assert torch.allclose(F, torch.ones_like(F), atol=1e-6)
    # and the world blocks are the normalised ones carried through the similarity
    c = frame.to_norm(np.asarray(blocks[0]["t"])[None])[0]
    assert np.allclose(c, m.trans[0].detach().double().numpy(), atol=1e-6)
    assert np.allclose(blocks[0]["scale"], m.scale()[0].detach().double().numpy() * 2.5, atol=1e-6)
    assert math.isclose(blocks[1]["opacity"], 0.5, abs_tol=1e-6)


def test_simulation_bodies_fill_the_blocks():
    """--set simulate=true: each kept block becomes one MPM body whose particles fill its superquadric (a near-box
    block gets about volume / (dx/2)^3 particles, all above the floor)."""
    from tasks.blocks.simulate import blocks_to_model

    frame = SceneFrame(np.eye(3), np.zeros(3), 1.0, np.array([0.0, 1.0, 0.0]))
    box = {"scale": [0.2, 0.15, 0.1], "e": [0.1, 0.1], "R": np.eye(3).tolist(), "t": [0.0, 0.0, 0.0]}
    model = blocks_to_model([box], frame, ground=-0.2, res=32)
    x = model.state().x.detach().cpu().numpy()
    k, dx = 0.35, 1 / 32
    expect = np.prod(2 * k * np.array(box["scale"])) / (dx / 2) ** 3
    assert 0.8 * expect < len(x) < 1.1 * expect
    assert x[:, 1].min() > 3 * dx and np.allclose(x[:, [0, 2]].mean(0), 0.5, atol=0.01)


def test_simulation_floor_matches_projection():
    """The simulation video's floor: points of the floor square projected by the particle renderer's camera land on
    pixels of their checker tile's colour; the sky above the horizon is the background."""
    from engine.render.points import _project
    from tasks.blocks.simulate import floor_image

    cam = {"eye": (0.5, 0.7, 2.6), "target": (0.5, 0.25, 0.5), "fov": 40.0}
    img = floor_image(cam, 120, 100, floor=0.1, lo=0.1, hi=0.9, tile=0.1)
    rng = np.random.default_rng(0)
    # tile centres (x, z) = (k + 0.5) * tile, away from tile edges so the pixel's ray stays in the tile
    k = rng.integers(1, 9, (30, 2))
    pts = np.stack([(k[:, 0] + 0.5) * 0.1, np.full(30, 0.1), (k[:, 1] + 0.5) * 0.1], 1)
    px = _project(pts, 120, 100, cam)[0]
    for (x, y), (i, j) in zip(px, k):
        expect = (200, 196, 188) if (i + j) % 2 else (168, 163, 155)
        assert tuple(img[int(y), int(x)]) == expect
    assert (img[0] == 255).all()                                        # the top row looks above the floor


def test_respawn_finds_a_missed_block(tmp_path):
    """A model whose blocks were all deleted respawns one where the images are not explained: at the one block of
    an Embree-rendered scene (the truth from the synthetic scene, not from tide's renderer)."""
    import json

    from tasks.blocks import estimate_frame, load_views
    from tasks.blocks.fit import FitSettings, Fitter
    from tasks.blocks.model import sweep_ground
    from tasks.blocks.synthetic import write_scene

    write_scene(tmp_path, seed=3, views=8, size=40, n_blocks=1)
    v = load_views(tmp_path)
    fr = estimate_frame(v.cameras)
    cams = fr.cameras_to_norm(v.cameras)
    h, tex, _ = sweep_ground(v.images, cams, np.linspace(-1.0, 0.2, 25), 2.0, 64)
    m = BlocksModel(3, level=1, tex_size=4, ground=h, ground_tex=tex, generator=torch.Generator().manual_seed(0))
    m.alive[:] = False
    f = Fitter(m, v.images, cams, FitSettings(iterations=10))
    placed = f.respawn()
    truth = json.loads((tmp_path / "gt_blocks.json").read_text())["blocks"][0]
    c = fr.to_norm(np.asarray(truth["t"])[None])[0]
    assert len(placed) >= 1 and m.alive.sum() == len(placed)
    first = np.asarray(placed[0][0])
    assert np.linalg.norm(first[[0, 2]] - c[[0, 2]]) < 0.15, (first, c)     # over the block, near its centre
    assert np.linalg.norm(m.trans[m.alive][0].detach().numpy() - first) < 1e-6
