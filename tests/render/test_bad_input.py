"""Malformed renderer inputs give one-line ValueErrors that name the argument (nothing is read out of bounds)."""
import pytest
import torch

from engine.render import Camera, render_gaussians, render_mesh, render_volume

V = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0], [0.4, 0.4, 0.1]], dtype=torch.float64)
F = torch.tensor([[0, 1, 2], [1, 3, 2]])


def _cam():
    return Camera.from_look_at([0.0, 0.0, 3.0], fov_y=40, width=12, height=10)


@pytest.mark.parametrize("kw, words", [
    (dict(faces=torch.tensor([[0, 1, 7]])), "face indices"),
    (dict(faces=torch.tensor([[0, -1, 2]])), "face indices"),
    (dict(faces=torch.tensor([[0, 1]])), "faces must be (F, 3)"),
    (dict(faces=F.double()), "integer"),
    (dict(verts=V[:, :2]), "verts must be"),
    (dict(verts=V * float("nan")), "verts contains NaN"),
    (dict(colors=torch.rand(3, 3, dtype=torch.float64)), "colors must have 4 entries"),
    (dict(face_colors=torch.rand(3, 3, dtype=torch.float64)), "face_colors must have 2 entries"),
    (dict(opacity=torch.ones(5, dtype=torch.float64)), "opacity must have 2 entries"),
    (dict(uvs=torch.rand(3, 2, dtype=torch.float64), texture=torch.rand(4, 4, 3, dtype=torch.float64)), "uvs must be"),
    (dict(colors=torch.rand(3, 4, 3, dtype=torch.float64)), "batch of 3"),
])
def test_render_mesh_rejects_malformed_input(kw, words):
    args = dict(verts=V, faces=F)
    args.update(kw)
    for mode in ("hard", "soft"):
        with pytest.raises(ValueError, match="render_mesh") as e:
            render_mesh(camera=_cam(), mode=mode, **args)
        msg = str(e.value)
        assert words in msg and "\n" not in msg, msg


def test_render_volume_and_gaussians_reject_malformed_input():
    with pytest.raises(ValueError, match="grid must be"):
        render_volume(_cam(), grid=torch.rand(4, 4, 4, dtype=torch.float64))
    g = torch.rand(4, 4, 4, 2, dtype=torch.float64)
    g[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="grid contains NaN"):
        render_volume(_cam(), grid=g)
    n = 5
    good = dict(means=torch.rand(n, 3), scales=torch.rand(n, 3), quats=torch.rand(n, 4), opacities=torch.rand(n),
                colors=torch.rand(n, 3))
    for key, bad, words in (("scales", torch.rand(4, 3), "scales must be"), ("quats", torch.rand(n, 3), "quats"),
                            ("opacities", torch.rand(n, 1), "opacities"), ("colors", torch.rand(4, 3), "colors"),
                            ("means", torch.rand(n, 3) * float("nan"), "means contains NaN")):
        args = dict(good, **{key: bad})
        with pytest.raises(ValueError, match="render_gaussians") as e:
            render_gaussians(_cam(), **args)
        assert words in str(e.value), str(e.value)


def test_check_finite_sum_fast_path_is_exact():
    """The finite-sum shortcut never hides a bad value (opposite infinities sum to NaN) and never rejects finite
    values whose sum overflows."""
    from engine.render.checks import check_finite

    big = torch.full((8,), 3e38, dtype=torch.float32)               # finite, but the f32 sum is inf
    assert not torch.isfinite(big.sum())
    check_finite("x", big, "f")
    for bad in (torch.tensor([1.0, float("inf"), -float("inf")]), torch.tensor([float("nan"), 1.0]),
                torch.tensor([3e38, 3e38, float("inf")], dtype=torch.float32)):
        with pytest.raises(ValueError, match="f: x contains NaN"):
            check_finite("x", bad, "f")
    check_finite("x", torch.zeros(0), "f")
    check_finite("x", torch.tensor([1, 2]), "f")                    # integer tensors are not checked


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("n_verts", [0, 3])
def test_render_mesh_of_no_faces_is_the_background_with_zero_gradients(mode, n_verts):
    # an empty mesh (nothing left after a filter, say) renders the background, and its backward returns zero
    # gradients of the right shape (the soft backward had divided by V = 0 in a kernel: a crash, not an error)
    from engine.render import DirectionalLights
    verts = torch.rand(n_verts, 3, dtype=torch.float64, requires_grad=True)
    lights = DirectionalLights(torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64),
                               torch.ones(1, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    r = render_mesh(verts, torch.zeros(0, 3, dtype=torch.int32), _cam(), colors=torch.full((n_verts, 3), 0.5,
                    dtype=torch.float64), lights=lights, mode=mode, background=bg)
    assert torch.equal(r.rgb, bg.expand_as(r.rgb)) and not r.alpha.any()
    r.rgb.sum().backward()
    assert verts.grad is not None and verts.grad.shape == (n_verts, 3) and not verts.grad.any()
