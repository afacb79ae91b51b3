"""Volume renderer: analytic reference, FD gradients, hybrid mesh mode, and fitting a grid to multi-view images."""

import pytest
import torch
import trimesh

from engine.render import Camera, orbit_cameras, render_mesh
from engine.render.volume import render_volume

from .helpers import fd_check, save_png


def _cam(w=10, h=8):
    return Camera.from_look_at([0.3, 0.4, 3.0], fov_y=40, width=w, height=h)


def _grid_grad(grid, n_samples=10, depth=True, **kw):
    """d(sum rgb + sum alpha [+ sum depth]) / d grid for one render of ``grid``."""
    g = grid.clone().requires_grad_()
    r = render_volume(_cam(), grid=g, n_samples=n_samples, **kw)
    (r.rgb.sum() + r.alpha.sum() + (r.depth.sum() if depth else 0)).backward()
    return g.grad


def test_uniform_box_matches_beer_lambert():
    # constant density s inside the box: alpha = 1 - exp(-s * L), L the chord length of the ray in the box
    s, col = 1.3, torch.tensor([0.2, 0.7, 0.4], dtype=torch.float64)
    grid = torch.cat([torch.full((4, 4, 4, 1), s, dtype=torch.float64), col.expand(4, 4, 4, 3)], -1)
    cam = orbit_cameras(2, radius=3.0, elevation=30, width=24, height=24, fov_y=50)
    out = render_volume(cam, grid=grid, n_samples=32, stratified=False, background=1.0)
    o, d = cam.rays()
    from engine.render.volume import ray_box
    n, f = ray_box(o, d, ((-1, -1, -1), (1, 1, 1)))
    L = ((f - n).clamp_min(0) * d.norm(dim=-1))
    ref = 1 - torch.exp(-s * L)
    assert (ref > 0.5).any()
    assert torch.allclose(out.alpha, ref, atol=1e-9)
    assert torch.allclose(out.rgb, ref[..., None] * col + (1 - ref[..., None]), atol=1e-9)


def test_grad_grid_density_and_colour():
    gen = torch.Generator().manual_seed(0)
    grid = torch.rand(4, 5, 3, 4, generator=gen, dtype=torch.float64) * 2

    def fn(g):
        r = render_volume(_cam(), grid=g, n_samples=6, stratified=False, background=torch.tensor([0.1, 0.2, 0.3]))
        return r.rgb, r.alpha, r.depth
    err, gmax = fd_check(fn, [grid], 0, n_probe=16)
    print(f"grid FD err {err:.2e} max|g| {gmax:.2e}")
    assert gmax > 1e-3 and err < 1e-7 * max(1, gmax)


@pytest.mark.parametrize("C", [1, 5])
def test_grad_grid_feature_widths(C):
    # the fused kernels are compiled per colour width C: check a narrow and a wide feature grid
    gen = torch.Generator().manual_seed(2)
    grid = torch.rand(3, 4, 5, 1 + C, generator=gen, dtype=torch.float64) * 2

    def fn(g):
        r = render_volume(_cam(), grid=g, n_samples=7, stratified=False, background=0.3)
        return r.rgb, r.alpha, r.depth
    err, gmax = fd_check(fn, [grid], 0, n_probe=16)
    assert gmax > 1e-3 and err < 1e-7 * max(1, gmax)


def test_grad_callable_field_outputs():
    # field outputs come from parameters through torch; the Taichi compositing must pass gradients back
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)

    def field(x, w):
        h = x @ w
        return torch.nn.functional.softplus(h[..., 0] * 2), torch.sigmoid(h[..., 1:])

    def fn(w):
        r = render_volume(_cam(), field=lambda x: field(x, w), n_samples=8, stratified=False)
        return r.rgb, r.alpha, r.depth
    err, gmax = fd_check(fn, [w], 0)
    print(f"field FD err {err:.2e} max|g| {gmax:.2e}")
    assert gmax > 1e-3 and err < 1e-7 * max(1, gmax)


def test_hybrid_mesh_sets_far_bound_and_takes_leftover_transmittance():
    mesh = trimesh.creation.box((0.8, 0.8, 0.8))
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cam = _cam(16, 12)
    gen = torch.Generator().manual_seed(2)
    vcol = torch.rand(V.shape[0], 3, generator=gen, dtype=torch.float64)
    grid = torch.rand(4, 4, 4, 4, generator=gen, dtype=torch.float64) * 0.8

    def fn(vc, g):
        m = render_mesh(V, F, cam, colors=vc, mode="hard", background=0.5)
        return render_volume(cam, grid=g, n_samples=8, stratified=False, mesh=m)
    out = fn(vcol, grid)
    m = render_mesh(V, F, cam, colors=vcol, mode="hard", background=0.5)
    cov = m.alpha > 0.5
    assert cov.any() and (~cov).any()
    # where the mesh covers, the expected depth never passes the mesh and rgb mixes the volume with the mesh
    T = 1 - out.alpha
    assert (out.depth[cov] <= m.depth[cov] + 1e-9).all()
    no_vol = render_volume(cam, grid=grid * torch.tensor([0, 1, 1, 1.0], dtype=torch.float64), n_samples=8,
                           stratified=False, mesh=m)
    assert torch.allclose(no_vol.rgb, m.rgb) and torch.allclose(no_vol.depth, m.depth)
    assert (T[cov] < 1).all()
    for which in (0, 1):
        err, gmax = fd_check(lambda vc, g: (fn(vc, g).rgb, fn(vc, g).depth), [vcol, grid], which)
        print(f"hybrid FD input {which}: err {err:.2e} max|g| {gmax:.2e}")
        assert gmax > 1e-3 and err < 1e-7 * max(1, gmax)


@pytest.mark.slow
def test_fit_density_grid_to_multiview_images():
    # target: hard renders of a coloured sphere from 6 views; fit a 12^3 density+colour grid from scratch
    mesh = trimesh.creation.icosphere(2, radius=0.6)
    V, F = torch.tensor(mesh.vertices), torch.tensor(mesh.faces)
    cams = orbit_cameras(6, radius=3.0, elevation=20, width=32, height=32, fov_y=40)
    target = render_mesh(V, F, cams, colors=V * 0.6 + 0.5, mode="hard")
    grid = torch.zeros(12, 12, 12, 4, dtype=torch.float64)
    grid[..., 0] = 0.5
    grid[..., 1:] = 0.5
    grid.requires_grad_(True)
    opt = torch.optim.Adam([grid], lr=0.15)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for it in range(60):
        r = render_volume(cams, grid=grid, n_samples=24, generator=gen)
        loss = ((r.rgb - target.rgb) ** 2).mean() + ((r.alpha - target.alpha) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    r = render_volume(cams, grid=grid.detach(), n_samples=24, stratified=False)
    final = (((r.rgb - target.rgb) ** 2).mean() + ((r.alpha - target.alpha) ** 2).mean()).item()
    print(f"grid fit: loss {losses[0]:.4f} -> {final:.4f}")
    save_png("/tmp/tide_render_volume_fit.png", torch.cat([torch.cat(list(r.rgb), 1), torch.cat(list(target.rgb), 1)], 0))
    assert final < 0.15 * losses[0]


def test_grad_grid_stratified_and_early_termination():
    # dense enough that most rays stop early (T < 1e-4): forward and backward must stop at the same sample
    gen = torch.Generator().manual_seed(3)
    grid = torch.rand(5, 4, 6, 3, generator=gen, dtype=torch.float64) * 8

    def fn(g):
        r = render_volume(_cam(), grid=g, n_samples=12, generator=torch.Generator().manual_seed(4), background=0.5)
        return r.rgb, r.alpha, r.depth
    assert (fn(grid)[1] > 1 - 1e-4).any()
    err, gmax = fd_check(fn, [grid], 0, n_probe=16)
    print(f"stratified grid FD err {err:.2e} max|g| {gmax:.2e}")
    assert gmax > 1e-3 and err < 1e-7 * max(1, gmax)


@pytest.mark.parametrize("stratified", [False, True])
def test_grid_backward_replay_matches_cached_transmittance(monkeypatch, stratified):
    # beyond _CACHE_MAX samples the backward recomputes what the forward cached: same gradients, with early
    # termination (dense grid) and densities <= 0 (skipped samples) in the mix
    from engine.render import volume
    gen = torch.Generator().manual_seed(8)
    grid = (torch.rand(5, 4, 6, 4, generator=gen, dtype=torch.float64) - 0.2) * 8

    def grad():
        return _grid_grad(grid, 12, stratified=stratified, generator=torch.Generator().manual_seed(4), background=0.5)
    ref = grad()
    assert ref.abs().max() > 1e-3
    monkeypatch.setattr(volume, "_CACHE_MAX", 0)
    assert torch.allclose(grad(), ref, atol=1e-12)


def test_grid_backward_atomic_path_matches_private_copies(monkeypatch):
    # the GPU scatter (one gradient copy, atomic adds) must equal the CPU one (per-chunk copies, plain adds)
    from engine.render import volume
    gen = torch.Generator().manual_seed(5)
    grid = torch.rand(6, 5, 4, 4, generator=gen, dtype=torch.float64) * 2

    def grad():
        return _grid_grad(grid, depth=False, stratified=False)
    ref = grad()
    monkeypatch.setattr(volume, "_scatter_copies", lambda n: (max(n, 1), False))
    assert torch.allclose(grad(), ref, atol=1e-12)


def _trilinear_field(grid, bbox=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))):
    # the same grid as a torch field: the reference path (torch rays, ray_box, composite_rays)
    from engine.render.volume import trilinear

    def field(x):
        v = trilinear(grid, x, bbox)
        return v[..., 0], v[..., 1:]
    return field


def _cams():
    # two cameras with different intrinsics (off-centre principal point, non-square pixels); some rays miss the box
    cam = orbit_cameras(2, radius=2.6, elevation=25, width=13, height=9, fov_y=70, start=10.0)
    cam.cx = torch.tensor([6.5, 4.0], dtype=torch.float64)
    cam.fy = cam.fy * torch.tensor([1.0, 1.3], dtype=torch.float64)
    return cam


@pytest.mark.parametrize("case", ["box", "scalar_near_far", "pixel_near_far", "background_image", "stratified",
                                  "mesh"])
def test_grid_path_matches_field_path(case):
    # the fused grid kernel sets up rays, clips them to the box and samples in grid units: it must agree with the
    # torch path (Camera.rays, ray_box, trilinear, composite_rays) in values and gradients
    cam = _cams()
    B, H, W = 2, cam.height, cam.width
    gen = torch.Generator().manual_seed(11)
    grid = torch.rand(5, 6, 4, 4, generator=gen, dtype=torch.float64) * 1.5 - 0.2
    bbox = ((-0.9, -0.7, -1.1), (0.8, 1.0, 0.9))
    kw = dict(n_samples=9, bbox=bbox, stratified=False, background=torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))
    if case == "scalar_near_far":
        kw.update(near=1.2, far=3.9)
    elif case == "pixel_near_far":
        kw.update(near=1.0 + torch.rand(B, H, W, generator=gen, dtype=torch.float64),
                  far=2.5 + torch.rand(B, H, W, generator=gen, dtype=torch.float64))
    elif case == "background_image":
        kw.update(background=torch.rand(B, H, W, 3, generator=gen, dtype=torch.float64))
    elif case == "stratified":
        kw.update(stratified=True)
    elif case == "mesh":
        box = trimesh.creation.box((0.9, 0.7, 0.8))
        kw.update(mesh=render_mesh(torch.tensor(box.vertices), torch.tensor(box.faces), cam, mode="hard",
                                   colors=torch.rand(len(box.vertices), 3, generator=gen, dtype=torch.float64),
                                   background=0.4))
        assert (kw["mesh"].alpha > 0.5).any() and (kw["mesh"].alpha < 0.5).any()
    o, d = cam.rays()
    from engine.render.volume import ray_box
    n, f = ray_box(o, d, bbox)
    assert (f <= n).any() and (f > n).any()                      # both missing and hitting rays
    wts = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((B, H, W, 3), (B, H, W), (B, H, W))]
    outs, grads = [], []
    for source in ("grid", "field"):
        g = grid.clone().requires_grad_()
        bg = kw["background"].clone().requires_grad_()
        src = dict(grid=g) if source == "grid" else dict(field=_trilinear_field(g, bbox))
        r = render_volume(cam, **src, **{**kw, "background": bg}, generator=torch.Generator().manual_seed(3))
        sum((x * w).sum() for x, w in zip((r.rgb, r.alpha, r.depth), wts)).backward()
        outs.append((r.rgb.detach(), r.alpha.detach(), r.depth.detach()))
        grads.append((g.grad, bg.grad))
    for a, b in zip(outs[0], outs[1]):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    for a, b in zip(grads[0], grads[1]):
        if a is None:                                            # the background, hidden by the mesh's colours
            assert case == "mesh" and b is None
            continue
        assert a.abs().max() > 1e-3 and torch.allclose(a, b, atol=1e-9, rtol=0)


def test_rays_missing_the_box_show_the_background_and_pass_no_gradient():
    cam = _cams()
    gen = torch.Generator().manual_seed(12)
    grid = (torch.rand(4, 4, 4, 4, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    o, d = cam.rays()
    from engine.render.volume import ray_box
    n, f = ray_box(o, d, ((-1, -1, -1), (1, 1, 1)))
    miss = f <= n
    assert miss.any() and (~miss).any()
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    r = render_volume(cam, grid=grid, n_samples=8, stratified=False, background=bg)
    assert (r.alpha[miss] == 0).all() and (r.depth[miss] == 0).all()
    assert torch.equal(r.rgb[miss], bg.expand(int(miss.sum()), 3))
    assert (r.alpha[~miss] > 0).all()
    (r.rgb[miss].sum() + r.alpha[miss].sum() + r.depth[miss].sum()).backward()
    assert (grid.grad == 0).all()


def test_grad_grid_background_tensor():
    # a learnable background reaches the terminal colour of every ray through the broadcast the kernel indexes
    gen = torch.Generator().manual_seed(13)
    grid = torch.rand(4, 5, 3, 4, generator=gen, dtype=torch.float64)
    bg = torch.rand(3, generator=gen, dtype=torch.float64)

    def fn(g, b):
        r = render_volume(_cams(), grid=g, n_samples=6, stratified=False, background=b)
        return r.rgb, r.alpha
    for which in (0, 1):
        err, gmax = fd_check(fn, [grid, bg], which, n_probe=6)
        assert gmax > 1e-3 and err < 1e-7 * max(1, gmax)


def test_grid_backward_with_fewer_gradient_copies_than_threads(monkeypatch):
    # a grid too large for one gradient copy per thread is scattered by fewer threads: same gradients
    from engine.render import volume
    gen = torch.Generator().manual_seed(14)
    grid = torch.rand(6, 5, 4, 4, generator=gen, dtype=torch.float64) * 2

    def grad():
        return _grid_grad(grid, stratified=False)
    ref = grad()
    monkeypatch.setattr(volume, "_COPIES_MAX", grid.numel() * grid.element_size())
    assert torch.allclose(grad(), ref, atol=1e-12)


def test_grid_backward_reuses_zeroed_gradient_copies():
    # the per-thread gradient copies are kept between backward passes and zeroed by the reduction: repeated
    # backward passes (and one with a fresh buffer) give identical gradients
    from engine.render import volume
    gen = torch.Generator().manual_seed(15)
    grid = torch.rand(5, 6, 4, 4, generator=gen, dtype=torch.float64) * 2

    def grad():
        return _grid_grad(grid, stratified=False)
    first, second = grad(), grad()
    volume._scratch.clear()
    third = grad()
    assert first.abs().max() > 1e-3
    assert torch.allclose(first, second, atol=1e-13)             # threads may take the rays in another order
    assert torch.allclose(first, third, atol=1e-13)


def test_grid_renders_alive_together_keep_their_own_work_buffers():
    # work buffers go back to a pool only when their op is collected: a render whose backward is still pending
    # must not share them with later renders (with or without grad)
    gen = torch.Generator().manual_seed(16)
    grids = [torch.rand(5, 4, 6, 4, generator=gen, dtype=torch.float64) * 2 for _ in range(2)]

    def render(g):
        return render_volume(_cam(), grid=g, n_samples=9, stratified=False)

    def loss(r):
        return r.rgb.sum() + r.alpha.sum() + r.depth.sum()
    ref = []
    for g in grids:
        g = g.clone().requires_grad_()
        loss(render(g)).backward()
        ref.append(g.grad)
    gs = [g.clone().requires_grad_() for g in grids]
    r0, r1 = render(gs[0]), render(gs[1])
    with torch.no_grad():
        render(grids[1] * 3)
    loss(r1).backward()
    render(grids[0] * 0.5)
    loss(r0).backward()
    for g, want in zip(gs, ref):
        assert torch.allclose(g.grad, want, atol=1e-13)


def test_work_buffer_pool_stays_under_its_cap(monkeypatch):
    from engine.render import volume
    monkeypatch.setattr(volume, "_pool", type(volume._pool)())
    monkeypatch.setattr(volume, "_POOL_MAX", 1000)
    a, b, c = torch.empty(100), torch.empty(50), torch.empty(120)         # f32: 400, 200, 480 bytes
    volume._pool_give(a, b)
    assert volume._pool_take((100,), torch.float32, a.device) is a
    assert volume._pool_take((100,), torch.float32, a.device) is not a     # none left: a fresh tensor
    volume._pool_give(a)
    volume._pool_give(c)                                                   # 1080 bytes: the oldest shape goes
    assert sum(t.numel() * 4 for free in volume._pool.values() for t in free) <= 1000
    assert volume._pool_take((120,), torch.float32, a.device) is c
    assert volume._pool_take((50,), torch.float32, a.device) is not b      # evicted: a fresh tensor
