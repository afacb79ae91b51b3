"""A tiny learning scene for sweep tests: Adam pulls a 2D point, started at a seed-dependent place, to a target."""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import ConfigError, SimulationError

SHAPES = {"square": (0.7, 0.3), "circle": (0.2, 0.8)}


@dataclass
class Config:
    shape: str = "square"
    """Target preset: square (0.7, 0.3) or circle (0.2, 0.8)."""
    scale: float = 1.0
    """Multiplies the target; in (0, 2]."""
    iterations: int = 20
    """Adam iterations."""
    lr: float = 0.05
    """Adam learning rate."""
    mode: str = "ok"
    """ok, or a failure to test: raise (an exception), blowup (a SimulationError) or hang (sleeps for an hour)."""
    sleep_s: float = 0.0
    """Sleep per iteration (tests kill a sweep mid-way)."""
    data: str = ""
    """A dataset folder holding target.txt ("x y"), which replaces the preset target."""
    frames: int = 2
    """Rollout frames."""

    def validate(self):
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; choose one of {', '.join(SHAPES)}")
        if not 0.0 < self.scale <= 2.0:
            raise ConfigError(f"scale must be in (0, 2], got {self.scale}")
        if self.mode not in ("ok", "raise", "blowup", "hang"):
            raise ConfigError(f"unknown mode {self.mode!r}")
        if self.data and not (Path(self.data) / "target.txt").is_file():
            raise ConfigError(f"dataset {self.data} has no target.txt")


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    def build(self):
        c = self.cfg
        if c.data:
            self.target = torch.tensor([float(v) for v in (Path(c.data) / "target.txt").read_text().split()],
                                       dtype=torch.float64)
        else:
            self.target = torch.tensor(SHAPES[c.shape], dtype=torch.float64) * c.scale
        self.start = torch.randn(2, dtype=torch.float64) * 0.5  # seeded by `tide run --seed`
        self.p = self.start.clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.p], lr=c.lr)

    def optimize(self, run):
        def state():
            return {"p": self.p.detach().clone(), "opt": self.opt.state_dict()}

        def load(s):
            with torch.no_grad():
                self.p.copy_(s["p"])
            self.opt.load_state_dict(s["opt"])

        for it in run.loop(self.cfg.iterations, state=state, load=load):
            if self.cfg.mode == "raise" and it == 3:
                raise RuntimeError("deliberate failure at iteration 3")
            if self.cfg.mode == "blowup" and it == 3:
                raise SimulationError("NaN in particle velocities at substep 31: dt above the CFL limit")
            if self.cfg.mode == "hang":
                time.sleep(3600)
            time.sleep(self.cfg.sleep_s)
            loss = ((self.p - self.target) ** 2).sum()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            run.log(loss=loss.item())

    def step(self, frame):
        pass

    def render(self):
        img = np.full((16, 16, 3), 255, np.uint8)
        x, y = (np.clip(self.p.detach().numpy(), 0, 1) * 15).astype(int)
        img[15 - y, x] = (255, 0, 0)
        return img

    def metrics(self):
        p = self.p.detach()
        return {"final_loss": float(((p - self.target) ** 2).sum()), "distance": float((p - self.target).norm()),
                "start_x": float(self.start[0])}
