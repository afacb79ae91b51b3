"""Benchmark fields: marching cubes (tide vs scikit-image vs PyMCubes on the same grids) and hash-grid throughput
(tide's Taichi kernels vs a plain-torch implementation of the same encoding).

    python scripts/bench_fields.py [--sizes 64 128 256] [--repeats 7] [--arch cpu] [--points 262144]

Every figure is the median of ``--repeats`` runs after two warm-ups (so Taichi compilation is excluded), and the
contenders are interleaved run by run, so that load from other processes hits them alike: compare the ratios.
The marching-cubes field is a wavy sphere sampled in float32 (the dtype skimage computes in); tide and skimage run
their default method (Lewiner), tide's Lorensen is listed too, PyMCubes has only the classic table.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def volume(n):
    x = np.linspace(-1, 1, n, dtype=np.float32)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    return np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - 0.6 + 0.1 * np.sin(8 * X) * np.sin(8 * Y) * np.sin(8 * Z)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--arch", default="cpu")
    ap.add_argument("--points", type=int, default=1 << 18, help="points per hash-grid batch")
    ap.add_argument("--skip-mc", action="store_true")
    ap.add_argument("--skip-hash", action="store_true")
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
        print(f"{'size':>6} {'tide':>8} {'tide-lor':>9} {'skimage':>8} {'pymcubes':>9} {'sk/tide':>8} "
              f"{'pymc/tide':>10} {'verts':>8}")
        for n in args.sizes:
            v = volume(n).astype(np.float32)
            fns = {"tide": lambda: marching_cubes(v, 0.0), "lor": lambda: marching_cubes(v, 0.0, method="lorensen"),
                   "sk": lambda: sk_mc(v, 0.0)}
            if mcubes:
                fns["mc"] = lambda: mcubes.marching_cubes(v, 0.0)
            t = median_ms(fns, args.repeats)
            t_mc = t.get("mc", float("nan"))
            nv = len(marching_cubes(v, 0.0).verts)
            print(f"{n:>5}^3 {t['tide']:8.1f} {t['lor']:9.1f} {t['sk']:8.1f} {t_mc:9.1f} {t['sk'] / t['tide']:8.2f} "
                  f"{t_mc / t['tide']:10.2f} {nv:>8}", flush=True)

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
