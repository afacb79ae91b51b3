"""Benchmark fields: marching cubes (tide vs scikit-image vs PyMCubes on the same grids) and hash-grid throughput
(tide's Taichi kernels vs a plain-torch implementation of the same encoding).

    python scripts/bench_fields.py [--sizes 64 128 256] [--fields sphere csg gyroid noise] [--dtypes float32 float64]
                                   [--repeats 7] [--arch cpu] [--points 262144] [--plot]

Every figure is the median of ``--repeats`` runs after two warm-ups (so Taichi compilation is excluded), and the
contenders are interleaved run by run, so that load from other processes hits them alike: compare the ratios.
Marching cubes runs on four kinds of surface, from friendly to worst case: a wavy sphere (few active cells), a CSG
of several primitives (sharp creases), a dense gyroid (four periods per axis: the surface crosses most cells, and
passes exactly through grid samples, which exercises vertex merging) and band-limited noise (many small
components and ambiguous cells). tide and skimage run their default method (Lewiner), tide's Lorensen is listed
too, PyMCubes has only the classic table (and takes float64).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import growth  # noqa: E402


def median_ms(fns, repeats, warmup=2):
    """Interleaved timing: ``{name: median ms}`` for ``{name: fn}``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def volume(n, kind="sphere"):
    """(n, n, n) float64 samples of one of the benchmark fields."""
    if kind == "noise":  # Gaussian-filtered white noise, correlation length ~n/16 cells
        rng = np.random.default_rng(0)
        k2 = (np.fft.fftfreq(n)[:, None, None] ** 2 + np.fft.fftfreq(n)[None, :, None] ** 2
              + np.fft.rfftfreq(n)[None, None, :] ** 2)
        spec = np.fft.rfftn(rng.standard_normal((n, n, n))) * np.exp(-k2 * (n / 8) ** 2)
        return np.fft.irfftn(spec, s=(n, n, n))
    x = np.linspace(-1, 1, n)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    if kind == "sphere":
        return np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - 0.6 + 0.1 * np.sin(8 * X) * np.sin(8 * Y) * np.sin(8 * Z)
    if kind == "gyroid":
        a = 4 * np.pi * (X + 1)
        b, c = 4 * np.pi * (Y + 1), 4 * np.pi * (Z + 1)
        return np.sin(a) * np.cos(b) + np.sin(b) * np.cos(c) + np.sin(c) * np.cos(a)
    if kind == "csg":  # (box minus sphere) plus three bars, as plain distance min/max
        box = np.maximum(np.maximum(np.abs(X), np.abs(Y)), np.abs(Z)) - 0.7
        ball = np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - 0.85
        bars = np.minimum(np.minimum(np.hypot(X, Y), np.hypot(Y, Z)), np.hypot(X, Z)) - 0.2
        return np.minimum(np.maximum(box, -ball), bars)
    raise ValueError(f"unknown field {kind!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--fields", nargs="+", default=["sphere", "csg", "gyroid", "noise"],
                    choices=["sphere", "csg", "gyroid", "noise"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs of each contender first (compilation)")
    ap.add_argument("--arch", default="cpu")
    ap.add_argument("--points", type=int, default=1 << 18, help="points per hash-grid batch")
    ap.add_argument("--skip-mc", action="store_true")
    ap.add_argument("--skip-hash", action="store_true")
    ap.add_argument("--plot", action="store_true", help="write docs/bench_fields_mc.png (time against grid size)")
    args = ap.parse_args()

    from engine import backend

    backend.init(arch=args.arch, precision="f32")
    import torch
    from skimage.measure import marching_cubes as sk_mc

    from engine.fields import HashGrid, marching_cubes
    from engine.fields.hashgrid import hash_encode_torch

    try:
        import mcubes
    except ImportError:
        mcubes = None
    s = backend.settings()
    print(f"arch={s.resolved_arch}, fast_compile={s.fast_compile}, {os.cpu_count()} cpus, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    if not args.skip_mc:
        print("marching cubes, ms (ratios > 1: tide is faster)")
        print(f"{'field':>7} {'dtype':>8} {'size':>6} {'tide':>8} {'tide-lor':>9} {'skimage':>8} {'pymcubes':>9} "
              f"{'sk/tide':>8} {'pymc/tide':>10} {'faces':>9}")
        rows = []
        for n in args.sizes:                                # every field at a size before the next size
            for kind in args.fields:
                base = volume(n, kind)
                for dtype in args.dtypes:
                    v = base.astype(dtype)
                    v64 = base
                    fns = {"tide": lambda: marching_cubes(v, 0.0),
                           "lor": lambda: marching_cubes(v, 0.0, method="lorensen"), "sk": lambda: sk_mc(v, 0.0)}
                    if mcubes:
                        fns["mc"] = lambda: mcubes.marching_cubes(v64, 0.0)
                    t = median_ms(fns, args.repeats, warmup=args.warmup)
                    t_mc = t.get("mc", float("nan"))
                    nf = len(marching_cubes(v, 0.0).faces)
                    print(f"{kind:>7} {dtype:>8} {n:>5}^3 {t['tide']:8.1f} {t['lor']:9.1f} {t['sk']:8.1f} "
                          f"{t_mc:9.1f} {t['sk'] / t['tide']:8.2f} {t_mc / t['tide']:10.2f} {nf:>9}", flush=True)
                    rows.append((kind, dtype, n, t, nf))
        # how the cost grows: per doubling of the grid side (x8 cells) and of the cell count
        panels = {}
        for kind in args.fields:
            for dtype in args.dtypes:
                sel = [(n, t) for k, d, n, t, _ in rows if k == kind and d == dtype]
                if len(sel) < 2:
                    continue
                cells = [(n - 1) ** 3 for n, _ in sel]
                series = {"tide": [t["tide"] for _, t in sel], "skimage": [t["sk"] for _, t in sel]}
                if mcubes:
                    series["PyMCubes"] = [t["mc"] for _, t in sel]
                growth.table(f"{kind} {dtype}: time against cells (growth per doubling of the cell count; a "
                             "doubling of the grid side is three of them)", "cells", cells, series)
                panels[f"{kind} {dtype}"] = (cells, series)
        if args.plot and panels:
            growth.plot("bench_fields_mc", "marching cubes: ms against cells (one run; compare within a panel)",
                        "cells", panels)

    if not args.skip_hash:
        enc = HashGrid(n_levels=16, features=2, log2_size=19, base_resolution=16, max_resolution=2048)
        dev = backend.torch_device()
        enc = enc.to(dev)
        pts = torch.rand(args.points, 3, device=dev, dtype=backend.torch_dtype())
        table = enc.table

        def run(encode, backward):
            def fn():
                if backward:
                    table.grad = None
                    encode(pts, table, enc.resolutions).sum().backward()
                else:
                    with torch.no_grad():
                        encode(pts, table, enc.resolutions)
            return fn

        from engine.fields import hash_encode

        t = median_ms({"tide_f": run(hash_encode, False), "torch_f": run(hash_encode_torch, False),
                       "tide_b": run(hash_encode, True), "torch_b": run(hash_encode_torch, True)},
                      args.repeats, warmup=1)
        mps = {k: args.points / (v / 1e3) / 1e6 for k, v in t.items()}
        print(f"hash grid (16 levels x 2 features, T=2^19, {args.points} points, table grad only), M points/s")
        print(f"{'':>18} {'tide':>8} {'torch':>8} {'tide/torch':>11}")
        for k, name in (("f", "encode"), ("b", "encode+backward")):
            print(f"{name:>18} {mps['tide_' + k]:8.2f} {mps['torch_' + k]:8.2f} "
                  f"{mps['tide_' + k] / mps['torch_' + k]:11.2f}")


if __name__ == "__main__":
    main()
