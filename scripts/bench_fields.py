"""Benchmark fields: marching cubes (tide vs scikit-image vs PyMCubes on the same grids) and hash-grid throughput.

    python scripts/bench_fields.py [--sizes 64 128 256] [--repeats 5] [--arch cpu]

Times are the best of ``--repeats`` runs after one warm-up (so Taichi compilation is excluded); the field is a
wavy sphere sampled in float32, the dtype skimage computes in.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def volume(n):
    x = np.linspace(-1, 1, n, dtype=np.float32)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    return np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - 0.6 + 0.1 * np.sin(8 * X) * np.sin(8 * Y) * np.sin(8 * Z)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--arch", default="cpu")
    ap.add_argument("--points", type=int, default=1 << 18, help="points per hash-grid batch")
    args = ap.parse_args()

    from engine import backend

    backend.init(arch=args.arch, precision="f32")
    import torch
    from skimage.measure import marching_cubes as sk_mc

    from engine.fields import HashGrid, marching_cubes

    try:
        import mcubes
    except ImportError:
        mcubes = None
    print(f"marching cubes (best of {args.repeats}, ms; arch={backend.settings().resolved_arch}, "
          f"{os.cpu_count()} cpus)")
    print(f"{'size':>6} {'tide':>9} {'skimage':>9} {'pymcubes':>9} {'skimage/tide':>13} {'verts':>9}")
    for n in args.sizes:
        v = volume(n).astype(np.float32)
        t_tide = best_ms(lambda: marching_cubes(v, 0.0), args.repeats)
        t_sk = best_ms(lambda: sk_mc(v, 0.0), args.repeats)
        t_mc = best_ms(lambda: mcubes.marching_cubes(v, 0.0), args.repeats) if mcubes else float("nan")
        nv = len(marching_cubes(v, 0.0).verts)
        print(f"{n:>5}^3 {t_tide:9.1f} {t_sk:9.1f} {t_mc:9.1f} {t_sk / t_tide:13.2f} {nv:>9}")

    enc = HashGrid(n_levels=16, features=2, log2_size=19, base_resolution=16, max_resolution=2048)
    dev = backend.torch_device()
    enc = enc.to(dev)
    pts = torch.rand(args.points, 3, device=dev, dtype=backend.torch_dtype()) * 2 - 1

    def fwd():
        with torch.no_grad():
            enc(pts)

    def fwd_bwd():
        enc.table.grad = None
        enc(pts).sum().backward()

    t_f = best_ms(fwd, args.repeats) / 1e3
    t_b = best_ms(fwd_bwd, args.repeats) / 1e3
    print(f"hash grid (16 levels x 2 features, T=2^19, {args.points} points): encode {args.points / t_f / 1e6:.2f} "
          f"M points/s, encode+backward {args.points / t_b / 1e6:.2f} M points/s")


if __name__ == "__main__":
    main()
