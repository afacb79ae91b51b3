"""Blocks world speed: optimisation iterations per second (forward + backward + Adam, 10 blocks, batch 4) at 96x96
and at DBW's 300x400, and the CPU time DBW's 25k-iteration schedule would take at that rate.

The peer, DBW on PyTorch3D's CUDA rasterizer, cannot run here (CUDA only); its figure is the paper's: about 4 h on
one GPU for 25k iterations at 300x400, batch 4 (../shared/references/graphics.md), printed beside the ratio.

    python scripts/bench_blocks.py [--iterations 20] [--threads 1]
"""
import argparse
import time

import numpy as np
import torch


def bench(width, height, iterations, batch=4, blocks=10):
    from engine.render import Camera
    from tasks.blocks.fit import FitSettings, Fitter
    from tasks.blocks.model import BlocksModel
    from tasks.blocks.synthetic import ring_cameras
    from tasks.blocks.data import GL_TO_CV

    c2w, fov = ring_cameras(8)
    w2c = np.linalg.inv(c2w @ GL_TO_CV)
    fx = 0.5 * width / np.tan(fov / 2)
    cams = Camera.from_Rt(torch.as_tensor(w2c[:, :3, :3]), torch.as_tensor(w2c[:, :3, 3]), width=width,
                          height=height, fx=fx)
    images = torch.rand(8, height, width, 3)
    m = BlocksModel(blocks, ground=-0.3, generator=torch.Generator().manual_seed(0))
    f = Fitter(m, images, cams, FitSettings(iterations=10 ** 6, batch=batch))
    f.step(0)                                                   # compile / warm up
    t = time.perf_counter()
    for it in range(1, iterations + 1):
        f.step(it)
    return iterations / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the scene's default is 1)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import os
    import platform

    import taichi as ti

    from engine import backend

    backend.init(arch="auto")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__} ({a.threads} threads), "
          f"taichi {'.'.join(map(str, ti.__version__))}; {a.iterations} timed iterations after one warm-up")
    for w, h in ((96, 96), (400, 300)):
        ips = bench(w, h, a.iterations)
        hours = 25000 / ips / 3600
        print(f"{w}x{h}, batch 4, 10 blocks (level-2 meshes, 32² textures): {ips:.2f} it/s; DBW's 25k iterations "
              f"would take {hours:.2f} h" + (f" (DBW on one GPU, paper: ~4 h; ratio {hours / 4:.1f}x)"
                                             if w == 400 else ""))
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
