"""tide: a Taichi-based differentiable simulation and graphics engine.

Importing ``engine`` never initialises Taichi; ``engine.backend.init`` (or the first op that needs it) does.
"""
from .errors import ConfigError, MeshError, OutputError, SceneError, SimulationError, TideError

__all__ = ["TideError", "ConfigError", "SceneError", "OutputError", "MeshError", "SimulationError"]
__version__ = "0.1.0"
