"""A scene that blows up at a chosen frame, as a simulation with too large a time step would."""
from dataclasses import dataclass

import numpy as np

from engine.errors import SimulationError


@dataclass
class Config:
    fail_frame: int = 2
    """Frame whose step raises SimulationError."""
    frames: int = 5
    """Frames to run."""


class Scene:
    def __init__(self, config: Config):
        self.cfg = config

    def build(self):
        self.t = 0

    def step(self, frame):
        if frame == self.cfg.fail_frame:
            raise SimulationError(f"NaN in particle velocities at substep {frame * 10 + 3}: dt above the CFL limit")
        self.t += 1

    def render(self):
        return np.full((16, 16, 3), 40 * self.t, np.uint8)

    def metrics(self):
        return {"t": self.t}
