"""Shared test helpers: central finite differences and a trimesh ray-casting reference."""
import numpy as np
import torch


def fd_check(fn, inputs, which, n_probe=12, eps=1e-6, seed=0):
    """Compare autograd and central finite differences of ``fn(*inputs)`` for ``inputs[which]``.

    ``fn`` returns a tensor or tuple of tensors; the scalar probed is sum_i <out_i, w_i> with fixed random w_i.
    Returns (max abs error, max abs gradient) over ``n_probe`` random entries of the input.
    """
    gen = torch.Generator().manual_seed(seed)
    inputs = [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]

    def scalar(*xs):
        o = fn(*xs)
        o = o if isinstance(o, (tuple, list)) else (o,)
        return sum((a * w).sum() for a, w in zip(o, weights))

    x = inputs[which].clone().requires_grad_(True)
    args = list(inputs)
    args[which] = x
    scalar(*args).backward()
    grad = x.grad.detach().reshape(-1)
    flat = inputs[which].reshape(-1)
    # probe the largest-gradient entries too, so the check cannot pass on all-zero gradients
    probe = torch.randperm(flat.numel(), generator=gen)[:n_probe // 2]
    probe = torch.cat([probe, grad.abs().argsort(descending=True)[:n_probe - probe.numel()]])
    err = 0.0
    for i in probe.tolist():
        plus, minus = flat.clone(), flat.clone()
        plus[i] += eps
        minus[i] -= eps
        a = list(inputs); a[which] = plus.reshape(inputs[which].shape)
        b = list(inputs); b[which] = minus.reshape(inputs[which].shape)
        with torch.no_grad():
            fd = (scalar(*a) - scalar(*b)).item() / (2 * eps)
        err = max(err, abs(fd - grad[i].item()))
    return err, grad.abs().max().item()


def raycast(mesh, camera):
    """Reference silhouettes and depths by trimesh (Embree) ray casting through pixel centres.

    Returns mask (B, H, W) bool and depth (B, H, W) camera z (0 where the ray misses).
    """
    origins, dirs = camera.rays()
    B, H, W, _ = dirs.shape
    masks, depths = [], []
    for b in range(B):
        o = origins[b].reshape(-1, 3).numpy()
        d = dirs[b].reshape(-1, 3).numpy()
        loc, ray, _tri = mesh.ray.intersects_location(o, d / np.linalg.norm(d, axis=1, keepdims=True),
                                                      multiple_hits=False)
        z = (loc @ camera.R[b].numpy().T + camera.t[b].numpy())[:, 2]
        depth = np.zeros(H * W)
        depth[ray] = z
        mask = np.zeros(H * W, bool)
        mask[ray] = True
        masks.append(mask.reshape(H, W))
        depths.append(depth.reshape(H, W))
    return np.stack(masks), np.stack(depths)


def save_png(path, img):
    """Save a float image in [0, 1] (H, W, C) or (H, W) for eyeballing."""
    import imageio

    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    imageio.imwrite(path, (np.clip(a, 0, 1) * 255).astype(np.uint8))



def fit_sphere_translation(loss, true, eyes, lr, steps=60, **render_kw):
    """Recover a translation ``true`` (3,) of an icosphere (radius 0.6) seen hard-rasterized from cameras at
    ``eyes`` (32x32, looking at the origin) by Adam on ``loss(render, target)`` (two ``MeshRender``s; ``render_kw``
    goes to ``render_mesh``). Returns (initial error, final error) of the translation."""
    import trimesh

    from engine.render import Camera, render_mesh

    m = trimesh.creation.icosphere(2, radius=0.6)
    V0 = torch.tensor(m.vertices, dtype=torch.float64)
    faces = torch.tensor(m.faces)
    cams = Camera.from_look_at(torch.tensor(eyes, dtype=torch.float64), fov_y=40, width=32, height=32)
    true = torch.as_tensor(true, dtype=torch.float64)
    with torch.no_grad():
        target = render_mesh(V0 + true, faces, cams, mode="hard", **render_kw)
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    err0 = float((x.detach() - true).norm())
    for _ in range(steps):
        value = loss(render_mesh(V0 + x, faces, cams, mode="hard", **render_kw), target)
        opt.zero_grad()
        value.backward()
        opt.step()
    return err0, float((x.detach() - true).norm())
