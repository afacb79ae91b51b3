"""Train tide's multi-view denoiser on renders of the procedural shape classes (training split only).

    python scripts/train_mv_denoiser.py --render-only                  # render the training set once (cached)
    nice -n 5 python scripts/train_mv_denoiser.py --minutes 58         # train (the shipped weights: 58 min)
    python scripts/train_mv_denoiser.py --sample                       # sample grids from the shipped weights
    python scripts/train_mv_denoiser.py --x0-error                     # x0 error on held-out renders at fixed t
    python scripts/train_mv_denoiser.py --diagnose                     # can SDS with these weights help? (text)

The training views are rendered once with tide's rasterizer and cached on disk (``--cache``, default
``~/.cache/tide-refine/``; the file name carries a hash of ``shapes.py`` and ``views.py``, so changing a class
re-renders; the coarse-asset maker is not hashed): uint8, (N, V, 6, S, S). Training reads only the cache: AdamW with a linear warm-up and a cosine decay
over the wall-clock budget, an exponential moving average (EMA) of the weights (the shipped weights are the EMA),
v-prediction on diffusers' DDPM cosine schedule with the plain (uniformly weighted) v-MSE (``--snr-gamma`` > 0:
min-SNR-gamma weighting instead), 4 view sets a step (small steps, many of them: a step costs about 0.15 s on one
core, so a 58 min budget gives about 10^4 steps), the label dropped 15 % of the time (classifier-free guidance).
The weights (float16 EMA), the loss history and the training time go to ``--out``, written atomically.
Sampling uses diffusers' DDIM scheduler (eta 1 by default) with classifier-free guidance and writes one PNG per class (rows: samples;
columns: 4 RGB views then 4 normal views) next to the weights.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "tide-refine"


def cache_path(args) -> Path:
    if args.cache:
        return Path(args.cache)
    h = hashlib.sha1()
    # the classes (shapes.py up to the coarse-asset maker, which the training set does not use) and the cameras
    h.update((ROOT / "tasks" / "refine" / "shapes.py").read_text().split("# ---- coarse assets")[0].encode())
    h.update((ROOT / "tasks" / "refine" / "views.py").read_bytes())
    return CACHE / f"mv_{h.hexdigest()[:10]}_{args.objects}x{args.sets}_{args.size}.pt"


def render_cache(path: Path, objects: int, sets: int, size: int) -> dict:
    from engine import backend
    from engine.io import atomic_path
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
    blob = {"images": torch.cat(imgs), "cams": torch.cat(cams), "labels": torch.tensor(labels), "size": size,
            "render_seconds": time.time() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return blob


def train(args) -> None:
    from diffusers import DDPMScheduler

    from tasks.refine.denoiser import MVDenoiser

    data = render_cache(cache_path(args), args.objects, args.sets, args.size)
    if args.render_only:
        print(f"cache: {len(data['images'])} view sets, rendered in {data.get('render_seconds', 0):.0f} s")
        return
    x0_all = data["images"].float() / 127.5 - 1
    n = len(x0_all)
    torch.manual_seed(args.seed)
    model = MVDenoiser(size=args.size, width=args.width, prediction="v_prediction")
    ema = copy.deepcopy(model).requires_grad_(False)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    ac = sched.alphas_cumprod
    hist, t0, step = [], time.time(), 0
    budget = args.minutes * 60
    g = torch.Generator().manual_seed(args.seed)
    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(n, (args.batch,), generator=g)
        x0, cams, lab = x0_all[idx], data["cams"][idx], data["labels"][idx].clone()
        # random horizontal flips would break the canonical front: augment only by dropping the label (CFG)
        lab[torch.rand(args.batch, generator=g) < 0.15] = model.n_classes
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = model(xt, t, cams, lab)
        per = (out.float() - v).square().mean((1, 2, 3, 4))                             # (B,) v-prediction MSE
        # min-SNR-gamma weighting (Hang et al. 2023) in v form: min(SNR, gamma) / (SNR + 1); 1 when gamma = 0
        snr = ac[t] / (1 - ac[t])
        w = snr.clamp(max=args.snr_gamma) / (snr + 1) if args.snr_gamma > 0 else torch.ones_like(snr)
        loss = (w * per).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        hist.append(per.mean().item())                      # the unweighted v-MSE (comparable across weightings)
        step += 1
        if args.snapshots and step % args.snapshot_every == 0:
            save(Path(args.snapshots) / f"step{step}.pt", ema, hist, time.time() - t0, step, args, half=False)
        if step % 100 == 0:
            print(f"step {step} {time.time() - t0:.0f} s lr {lr:.2e} loss(100) {np.mean(hist[-100:]):.4f}",
                  flush=True)
        if step % 500 == 0:
            save(args.out, ema, hist, time.time() - t0, step, args)
    save(args.out, ema, hist, time.time() - t0, step, args)
    print(f"done: {step} steps in {time.time() - t0:.0f} s, final loss(200) {np.mean(hist[-200:]):.4f}")


def save(path, model, hist, secs, steps, args, half: bool = True) -> None:
    import os

    from engine.io import atomic_path

    state = {k: v.half() if half else v.clone() for k, v in model.state_dict().items()}
    blob = {"config": model.config, "state": state, "loss": [round(x, 5) for x in hist], "train_seconds": secs,
            "steps": steps, "batch": args.batch, "objects": args.objects, "sets": args.sets, "lr": args.lr,
            "snr_gamma": args.snr_gamma, "ema": args.ema,
            "load_average": os.getloadavg()}
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
                         cfg=args.cfg, generator=g, eta=args.eta)                                    # (N, V, 6, S, S) in [0, 1]
        rows = [torch.cat([torch.cat(list(s[:, :3]), 2), torch.cat(list(s[:, 3:]), 2)], 2) for s in x]
        grid = torch.cat(rows, 1).permute(1, 2, 0).numpy()
        out = Path(args.out).with_name(f"samples_{cls}.png")
        save_png(out, np.kron(grid, np.ones((2, 2, 1))))
        print("wrote", out)


def x0_error(args) -> None:
    """How well the weights denoise views they never saw: held-out shapes 20 and 21 of every class, 4 random view
    sets each (the training cameras' distribution), noised to fixed timesteps with fixed noise (2 draws); the
    conditional x0 estimate's mean L1 error per class (images in [-1, 1], clamped). Small t measures detail
    (speckle), large t the global layout that a sample commits to early (fragmented vs coherent objects)."""
    from diffusers import DDPMScheduler

    from engine import backend
    from tasks.refine import shapes, views
    from tasks.refine.guidance import load_tide_denoiser

    backend.init(arch="cpu")
    model = load_tide_denoiser(args.out)
    g = torch.Generator().manual_seed(3)
    xs, cams, labels = [], [], []
    for ci, cls in enumerate(shapes.CLASSES):
        for i in (20, 21):
            a = shapes.held_out_shape(cls, i).mesh(48)
            p = views.view_params(4, g)
            with torch.no_grad():
                xs.append(views.render_asset(a.verts, a.faces, a.colors, p, args.size).float().clamp(0, 1))
            cams.append(p.float())
            labels += [ci] * 4
    x, cams, labels = torch.cat(xs) * 2 - 1, torch.cat(cams), torch.tensor(labels)
    ac = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    g = torch.Generator().manual_seed(11)
    print("t     " + " ".join(f"{c:>8}" for c in shapes.CLASSES) + "      all")
    for tv in (50, 200, 400, 600, 800):
        t = torch.full((len(x),), tv)
        a, err = ac[t].view(-1, 1, 1, 1, 1), 0
        for _ in range(2):
            xt = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=g)
            with torch.no_grad():
                out = model(xt, t, cams, labels)
            x0 = (xt - (1 - a).sqrt() * model.eps_from_output(out, xt, a)) / a.sqrt()
            err = err + (x0.clamp(-1, 1) - x).abs().mean((1, 2, 3, 4)) / 2
        print(f"{tv:<5} " + " ".join(f"{err[labels == ci].mean():8.4f}" for ci in range(len(shapes.CLASSES)))
              + f" {err.mean():8.4f}")


def diagnose(args) -> None:
    """Can SDS with these weights improve a distilled asset? For held-out shapes 10-11 of every class (the scene's
    coarse maker, the mesh representation's SDF-grid initialisation) and 4 random view sets each: noise the
    distilled asset's renders x to timestep t, average the denoiser's x0 estimate over 4 noise draws (the point
    that SDS pulls x towards, in expectation) and print its L1 distance to the ground truth's renders (against
    x's own), and the cosine between (x0 estimate - x) and (ground truth - x): > 0 means SDS steps towards the
    ground truth to first order. Also the speckle of the sample grid's draws (mean |Laplacian| of RGB; the
    training renders' own is printed beside it)."""
    from diffusers import DDPMScheduler

    from engine import backend
    from tasks.refine import distill, shapes, views
    from tasks.refine.guidance import load_tide_denoiser, sample_views

    backend.init(arch="cpu")
    model = load_tide_denoiser(args.out)
    g = torch.Generator().manual_seed(7)
    xs, gts, cams, labels = [], [], [], []
    for ci, cls in enumerate(shapes.CLASSES):
        for i in (10, 11):
            sh = shapes.held_out_shape(cls, i)
            fine, rep = sh.mesh(48), distill.make_representation("mesh", shapes.make_coarse(sh, seed=0), n=48)
            p = views.view_params(4, g)
            with torch.no_grad():
                xs.append(rep.render(p, args.size).float())
                gts.append(views.render_asset(fine.verts, fine.faces, fine.colors, p, args.size).float())
            cams.append(p.float())
            labels += [ci] * 4
    x, gt, cams, labels = torch.cat(xs) * 2 - 1, torch.cat(gts) * 2 - 1, torch.cat(cams), torch.tensor(labels)
    ac = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    null = torch.full_like(labels, model.n_classes)
    print(f"distilled renders vs ground truth: L1 {(x - gt).abs().mean():.4f} (images in [-1, 1])")
    for cfg in (1.0, args.cfg):
        cells = []
        for tv in (20, 50, 100, 200, 350, 500, 700):
            t = torch.full((len(x),), tv)
            a, mean = ac[t].view(-1, 1, 1, 1, 1), 0
            for k in range(4):
                xt = a.sqrt() * x + (1 - a).sqrt() * torch.randn(x.shape, generator=g)
                with torch.no_grad():
                    oc, ou = model(torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([cams, cams]),
                                   torch.cat([labels, null])).chunk(2)
                mean = mean + (a.sqrt() * xt - (1 - a).sqrt() * (ou + cfg * (oc - ou))) / 4   # v -> x0
            cos = torch.nn.functional.cosine_similarity((mean - x).flatten(1), (gt - x).flatten(1), dim=1).mean()
            cells.append(f"t={tv}: L1 {(mean.clamp(-1, 1) - gt).abs().mean():.4f} cos {cos:+.2f}")
        print(f"cfg {cfg:g}: " + " | ".join(cells))

    def speckle(im):                                         # (..., 3, S, S) -> mean |5-point Laplacian|
        return float((4 * im[..., 1:-1, 1:-1] - im[..., :-2, 1:-1] - im[..., 2:, 1:-1] - im[..., 1:-1, :-2]
                      - im[..., 1:-1, 2:]).abs().mean())

    data = render_cache(cache_path(args), args.objects, args.sets, args.size)
    gs = torch.Generator().manual_seed(0)
    c = views.view_params(len(shapes.CLASSES), gs, azimuth0=30.0, elevation=(15, 15), distance=(2.6, 2.6)).float()
    s = sample_views(model, c, torch.arange(len(shapes.CLASSES)), steps=args.steps, cfg=args.cfg, generator=gs,
                     eta=args.eta)
    print(f"speckle: samples {speckle(s[:, :, :3]):.4f} ({args.steps} DDIM steps, eta {args.eta:g}, cfg {args.cfg:g}); "
          f"training renders {speckle(data['images'][::5, :, :3].float() / 255):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=40, help="training shapes per class")
    p.add_argument("--sets", type=int, default=4, help="random view sets rendered per shape")
    p.add_argument("--size", type=int, default=32, help="view size in pixels")
    p.add_argument("--width", type=int, default=16, help="UNet base width")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast for the forward pass (about 25 %% faster on CPUs with avx512_bf16; not used "
                        "for the shipped weights)")
    p.add_argument("--batch", type=int, default=4, help="view sets per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--snr-gamma", type=float, default=0.0,
                   help="min-SNR-gamma loss weighting (0: plain v-prediction MSE, the shipped weights; 5: the "
                        "previous weights)")
    p.add_argument("--snapshots", default="", help="folder for float32 EMA snapshots during training (diagnosis)")
    p.add_argument("--snapshot-every", type=int, default=500)
    p.add_argument("--minutes", type=float, default=58.0, help="wall-clock training budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="", help="render cache file (default: ~/.cache/tide-refine/mv_<hash>_...)")
    p.add_argument("--render-only", action="store_true", help="render the cache and stop")
    p.add_argument("--out", default=str(ROOT / "assets" / "mv_denoiser.pt"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample", action="store_true", help="write sample grids instead of training")
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps when sampling")
    p.add_argument("--cfg", type=float, default=2.0,
                   help="classifier-free guidance scale when sampling (3 breaks the retrained lamps into blobs)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta when sampling (0: deterministic)")
    p.add_argument("--x0-error", action="store_true",
                   help="print the x0 error (L1) at fixed timesteps on renders of held-out shapes 20-21 per class")
    p.add_argument("--diagnose", action="store_true",
                   help="print whether the weights' x0 estimates pull distilled held-out renders towards the ground truth")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.diagnose:
        diagnose(args)
    elif args.x0_error:
        x0_error(args)
    elif args.sample:
        sample(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
