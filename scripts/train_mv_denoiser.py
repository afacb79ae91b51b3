"""Train tide's multi-view denoiser on renders of the procedural shape classes (training split only).

    python scripts/train_mv_denoiser.py --objects 24 --sets 2 --minutes 20      # render (cached), then train
    python scripts/train_mv_denoiser.py --sample                                 # sample grids from the weights

Renders are cached in ``--cache`` (uint8, (N, V, 6, S, S)); the weights and the training log go to ``--out``
(a torch file with ``config``, ``state`` (float16), ``loss`` history, ``train_seconds``). Sampling uses diffusers'
DDIM scheduler with classifier-free guidance and writes one PNG per class (rows: samples; columns: 4 RGB views
then 4 normal views) next to the weights.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def render_cache(path: Path, objects: int, sets: int, size: int) -> dict:
    from engine import backend
    from tasks.refine import shapes, views

    if path.is_file():
        return torch.load(path)
    backend.init(arch="cpu")
    imgs, cams, labels = [], [], []
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for ci, cls in enumerate(shapes.CLASSES):
        for seed in range(objects):
            a = shapes.shape(cls, seed).mesh(48)
            p = views.view_params(sets, g)
            with torch.no_grad():
                im = views.render_asset(a.verts, a.faces, a.colors, p, size)
            imgs.append((im.clamp(0, 1) * 255).round().to(torch.uint8))
            cams.append(p.float())
            labels += [ci] * sets
        print(f"rendered {cls}: {time.time() - t0:.0f} s", flush=True)
    blob = {"images": torch.cat(imgs), "cams": torch.cat(cams), "labels": torch.tensor(labels), "size": size}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return blob


def train(args) -> None:
    from diffusers import DDPMScheduler

    from tasks.refine.denoiser import MVDenoiser

    data = render_cache(Path(args.cache), args.objects, args.sets, args.size)
    x0_all = data["images"].float() / 127.5 - 1
    n = len(x0_all)
    model = MVDenoiser(size=args.size, width=args.width)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    ac = sched.alphas_cumprod
    hist, t0, step = [], time.time(), 0
    g = torch.Generator().manual_seed(1)
    while time.time() - t0 < args.minutes * 60:
        idx = torch.randint(n, (args.batch,), generator=g)
        x0, cams, lab = x0_all[idx], data["cams"][idx], data["labels"][idx].clone()
        # random horizontal flips would break the canonical front: augment only by dropping the label (CFG)
        lab[torch.rand(args.batch, generator=g) < 0.15] = model.n_classes
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = (model(xt, t, cams, lab) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step} {time.time() - t0:.0f} s loss(50) {np.mean(hist[-50:]):.4f}", flush=True)
            save(args.out, model, hist, time.time() - t0, step)
    save(args.out, model, hist, time.time() - t0, step)
    print(f"done: {step} steps in {time.time() - t0:.0f} s, final loss(100) {np.mean(hist[-100:]):.4f}")


def save(path, model, hist, secs, steps) -> None:
    from engine.io import atomic_path

    state = {k: v.half() for k, v in model.state_dict().items()}
    blob = {"config": model.config, "state": state, "loss": hist, "train_seconds": secs, "steps": steps}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp:
        torch.save(blob, tmp)


def sample(args) -> None:
    from engine.io import save_png
    from tasks.refine import shapes, views
    from tasks.refine.guidance import load_tide_denoiser, sample_views

    model = load_tide_denoiser(args.out)
    g = torch.Generator().manual_seed(0)
    for ci, cls in enumerate(shapes.CLASSES):
        cams = views.view_params(args.n_samples, g, azimuth0=30.0, elevation=(15, 15), distance=(2.6, 2.6))
        x = sample_views(model, cams.float(), torch.full((args.n_samples,), ci), steps=args.steps,
                         cfg=args.cfg, generator=g)                                    # (N, V, 6, S, S) in [0, 1]
        rows = [torch.cat([torch.cat(list(s[:, :3]), 2), torch.cat(list(s[:, 3:]), 2)], 2) for s in x]
        grid = torch.cat(rows, 1).permute(1, 2, 0).numpy()
        out = Path(args.out).with_name(f"samples_{cls}.png")
        save_png(out, np.kron(grid, np.ones((2, 2, 1))))
        print("wrote", out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=24, help="training shapes per class")
    p.add_argument("--sets", type=int, default=3, help="random view sets rendered per shape")
    p.add_argument("--size", type=int, default=32, help="view size in pixels")
    p.add_argument("--width", type=int, default=24, help="UNet base width")
    p.add_argument("--batch", type=int, default=8, help="view sets per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    p.add_argument("--cache", default=str(ROOT / "runs" / "mv_cache.pt"))
    p.add_argument("--out", default=str(ROOT / "assets" / "mv_denoiser.pt"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample", action="store_true", help="write sample grids instead of training")
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=30, help="DDIM steps when sampling")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale when sampling")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sample(args) if args.sample else train(args)


if __name__ == "__main__":
    main()
