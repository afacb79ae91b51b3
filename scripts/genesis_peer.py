"""Genesis (``genesis-world``) side of ``bench_mpm.py --genesis``: the shared 3D MPM scene, and a small server that
runs it in Genesis when this file is started under an interpreter that has Genesis (its own venv: Genesis brings its
Taichi fork, ``quadrants``, and pins of its own).

``SCENE`` and ``blocks()`` are imported by ``bench_mpm.py`` (numpy only), so both engines start from the same
particles. Run as ``python genesis_peer.py``, this reads one JSON command per line on stdin and answers each with one
line ``@@ {json}`` on stdout (Genesis' own log lines pass through; the parent skips them):

    {"cmd": "forward", "substeps": k}             run k substeps of the forward-only scene, answer {"seconds"}
    {"cmd": "rollout", "substeps": k, "out": p}   reset, run k substeps, save (N, 3) positions (tide's axes) to p
    {"cmd": "grad", "substeps": T, "out": p}      reset the differentiable scene, set v0 (tracked), run T substeps,
                                                  L = Σ w·x_T, backward; answer {"forward", "backward", "loss"} and
                                                  save dL/dv0 (tide's axes) to p
    {"cmd": "quit"}

Axes: Genesis is z-up, tide y-up, so Genesis' (x, y, z) is tide's (x, z, y); everything crossing the pipe is in
tide's axes.
"""
import json
import os
import sys
import time

import numpy as np

SCENE = dict(
    grid=64,            # nodes per axis; dx = 1/grid [m]
    ppc=2,              # particles per cell per axis (particle spacing dx/2, volume (dx/2)^3)
    bound=4,            # wall node layers per side: Genesis' CubeBoundary stops 4 (3·dx padding, inclusive)
    dt=2e-4,            # substep [s]
    gravity=9.8,        # [m/s^2], along -y in tide (-z in Genesis)
    rho=1000.0,         # [kg/m^3]
    E=1e5, nu=0.2,      # jelly: neo-Hookean (Genesis Elastic(model="neohooken"), tide "elastic")
    lam=1e5,            # water: τ = λ·J(J−1)·I, F reset to J^(1/3)·I (Genesis non-viscous Liquid, tide "water" E=λ)
    side=32,            # particles per block edge: 32^3 = 32,768 per block, 65,536 in all
    jelly_lo=(0.125, 0.25, 0.375),   # lower corners [m], tide axes (y up)
    water_lo=(0.55, 0.0625, 0.375),
    steps_per_call=10,  # Genesis substeps per scene.step() on the forward-only scene
)

PERM = [0, 2, 1]  # tide (x, y, z) <-> Genesis (x, z, y); its own inverse


def blocks(scene=SCENE):
    """(jelly, water) particle positions, each (side^3, 3) float64 in tide's axes: cell-centred lattices of spacing
    dx/ppc from each lower corner, the points (and the order) of Genesis' ``regular`` sampler in the same boxes."""
    h = 1.0 / scene["grid"] / scene["ppc"]
    k = (np.arange(scene["side"]) + 0.5) * h
    lattice = np.stack(np.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3)[:, PERM]  # Genesis' loop order
    return tuple(lattice + np.asarray(scene[name], dtype=np.float64) for name in ("jelly_lo", "water_lo"))


def loss_weights(n, seed=0):
    """(n, 3) fixed weights w of the benchmark loss L = Σ w·x_T (tide's axes)."""
    return np.random.default_rng(seed).standard_normal((n, 3))


def initial_velocity(n, seed=1):
    """(n, 3) small initial velocities [m/s] (tide's axes): the gradient is taken with respect to these."""
    return 0.1 * np.random.default_rng(seed).standard_normal((n, 3))


class GenesisScene:
    """``SCENE`` built in Genesis on the CPU in f32: forward-only and, when asked, a differentiable twin."""

    def __init__(self, grad_substeps: int = 0, grad_window: int = 20):
        import genesis as gs
        import torch

        self.gs, self.torch = gs, torch
        gs.init(backend=gs.cpu, precision="32", logging_level="warning")
        s = SCENE
        self.points = blocks()
        self.n = sum(len(p) for p in self.points)
        self.fwd, self.fwd_ents = self._build(s["steps_per_call"], grad=False)
        self.window = grad_window
        self.grad_scene = None
        if grad_substeps:
            self.grad_scene, self.grad_ents = self._build(grad_window, grad=True)

    def _build(self, substeps, grad):
        gs, s = self.gs, SCENE
        dx = 1.0 / s["grid"]
        h = dx / s["ppc"]
        scene = gs.Scene(
            sim_options=gs.options.SimOptions(dt=s["dt"] * substeps, substeps=substeps, requires_grad=grad,
                                              gravity=(0.0, 0.0, -s["gravity"])),
            # upper bound (grid-1)·dx: nodes 0..grid-1, the same 64^3 grid as tide's
            mpm_options=gs.options.MPMOptions(lower_bound=(0.0, 0.0, 0.0), upper_bound=((s["grid"] - 1) * dx,) * 3,
                                              grid_density=s["grid"], particle_size=h),
            show_viewer=False)
        side = s["side"] * h
        ents = []
        for (name, mat), pts in zip((("jelly_lo", gs.materials.MPM.Elastic(E=s["E"], nu=s["nu"], rho=s["rho"],
                                                                            model="neohooken", sampler="regular")),
                                     ("water_lo", gs.materials.MPM.Liquid(E=s["E"], nu=s["nu"], lam=s["lam"],
                                                                          rho=s["rho"], sampler="regular"))),
                                    self.points):
            lo = np.asarray(s[name])[PERM]
            ents.append(scene.add_entity(material=mat, morph=gs.morphs.Box(lower=tuple(lo), upper=tuple(lo + side))))
        scene.build()
        for e, pts in zip(ents, self.points):  # Genesis sampled the same lattice (order may differ: compare sorted)
            got = e.get_particles_pos().cpu().numpy()[:, PERM]
            if got.shape != pts.shape or np.abs(np.sort(got, 0) - np.sort(pts, 0)).max() > 1e-6:
                raise RuntimeError("Genesis' regular sampler placed different particles than blocks()")
            if np.abs(got - pts).max() > 1e-6:
                raise RuntimeError("Genesis' particle order differs from blocks(): results would not line up")
        return scene, ents

    def forward(self, substeps):
        k = SCENE["steps_per_call"]
        t = time.perf_counter()
        for _ in range(max(1, substeps // k)):
            self.fwd.step()
        return time.perf_counter() - t

    def rollout(self, substeps):
        self.fwd.reset()
        self.forward(substeps)
        return np.concatenate([e.get_particles_pos().cpu().numpy() for e in self.fwd_ents])[:, PERM]

    def grad(self, substeps):
        torch = self.torch
        scene, ents = self.grad_scene, self.grad_ents
        scene.reset()
        v0 = torch.tensor(initial_velocity(self.n)[:, PERM], dtype=torch.float32, requires_grad=True)
        w = torch.tensor(loss_weights(self.n)[:, PERM], dtype=torch.float32)
        t = time.perf_counter()
        n0 = len(self.points[0])
        ents[0].set_velocity(v0[:n0])
        ents[1].set_velocity(v0[n0:])
        for _ in range(substeps // self.window):
            scene.step()
        x = torch.cat([e.get_state().pos.reshape(-1, 3) for e in ents])
        loss = (w * x).sum()
        t_fwd = time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter() - t
        return t_fwd, t_bwd, float(loss), v0.grad.numpy()[:, PERM]


def serve():
    peer = None
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        if peer is None:
            peer = GenesisScene(grad_substeps=msg.get("grad_substeps", 0), grad_window=msg.get("grad_window", 20))
        if cmd == "init":
            import genesis
            import quadrants
            out = {"n": peer.n, "genesis": genesis.__version__, "quadrants": quadrants.__version__,
                   "threads": os.environ.get("QD_NUM_THREADS", "default (1)")}
        elif cmd == "forward":
            out = {"seconds": peer.forward(int(msg["substeps"]))}
        elif cmd == "rollout":
            np.save(msg["out"], peer.rollout(int(msg["substeps"])))
            out = {}
        elif cmd == "grad":
            t_fwd, t_bwd, loss, g = peer.grad(int(msg["substeps"]))
            np.save(msg["out"], g)
            out = {"forward": t_fwd, "backward": t_bwd, "loss": loss}
        else:
            raise ValueError(f"unknown command {cmd!r}")
        print("@@ " + json.dumps(out), flush=True)


if __name__ == "__main__":
    serve()
