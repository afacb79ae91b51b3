"""Differentiable MLS-MPM: materials, colliders and terrain, robots, long-horizon gradients.

Public surface (everything else is internal):

* ``ModelBuilder`` → ``Model`` (static scene), ``State``, ``Control``, ``Boundary``;
* ``Solver`` (``step(state_in, state_out, control, dt)``, ``backward``);
* ``Rollout`` / ``rollout`` (segmented-checkpoint gradients, torch through ``engine.bridge``);
* ``materials`` (ids and ``MaterialTable``).
"""
from . import materials
from .model import Boundary, Control, Model, ModelBuilder, State
from .mpm import Scratch, Solver

__all__ = ["materials", "Boundary", "Control", "Model", "ModelBuilder", "State", "Solver", "Scratch"]
