"""A toy learning scene for runner tests: fit a 2D point to a target with Adam, then let it orbit."""
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Config:
    iterations: int = 30
    """Adam iterations."""
    lr: float = 0.1
    """Adam learning rate."""
    target: tuple[float, float] = (0.7, 0.3)
    """Point to fit, in [0, 1]²."""
    frames: int = 4
    """Rollout frames after the optimisation."""
    fail_at: int = -1
    """Raise KeyboardInterrupt at this iteration (tests interrupt and resume)."""
    sleep_s: float = 0.0
    """Sleep per iteration (tests kill a run mid-way)."""


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    def build(self):
        self.p = torch.zeros(2, requires_grad=True)
        self.opt = torch.optim.Adam([self.p], lr=self.cfg.lr)
        self.angle = 0.0

    def optimize(self, run):
        target = torch.tensor(self.cfg.target)

        def state():
            return {"p": self.p.detach().clone(), "opt": self.opt.state_dict()}

        def load(s):
            with torch.no_grad():
                self.p.copy_(s["p"])
            self.opt.load_state_dict(s["opt"])

        for it in run.loop(self.cfg.iterations, state=state, load=load):
            if it == self.cfg.fail_at:
                raise KeyboardInterrupt
            time.sleep(self.cfg.sleep_s)
            loss = ((self.p - target) ** 2).sum()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            run.log(loss=loss.item())
            if it % 10 == 0:
                run.frame(self.render())

    def step(self, frame):
        self.angle += 0.3

    def render(self):
        img = np.full((32, 32, 3), 255, np.uint8)
        x, y = (np.clip(self.p.detach().numpy(), 0, 1) * 31).astype(int)
        img[31 - y, x] = (255, 0, 0)
        return img

    def metrics(self):
        return {"final_loss": float(((self.p.detach() - torch.tensor(self.cfg.target)) ** 2).sum())}

    def exports(self):
        return {"point.json": {"p": self.p.detach().tolist()}}
