"""A co-design problem: world + design representation + controller + task, behind one picklable spec.

``ProblemSpec`` is plain data, so a Ray worker can rebuild the same problem in its own process (with its own
Taichi). ``Problem`` owns the torch modules and offers the two views optimisers need:

* differentiable: ``rollout()`` / ``loss()`` with gradients to ``trainable()`` parameters;
* gradient-free: ``vector()`` / ``evaluate(vector)`` over the same parameters flattened into a numpy vector.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from engine import backend
from engine.errors import ConfigError

from .controllers import CONTROLLERS, make_controller
from .designs import REPRESENTATIONS, make_design
from .objectives import TASKS, cost_of_transport, make_objective
from .rollout import Segment, simulate
from .world import World, WorldSpec

__all__ = ["ProblemSpec", "Problem", "OPTIMISE"]

OPTIMISE = ("both", "control", "design")


@dataclass
class ProblemSpec:
    """Everything that defines a co-design problem (no tensors: it travels to Ray workers)."""

    world: WorldSpec = field(default_factory=WorldSpec)
    """Environment and robot box."""
    representation: str = "sdf_basis"
    """Design space: particle | voxel | implicit | sdf_basis."""
    design_kwargs: dict = field(default_factory=dict)
    """Extra arguments of the design representation (e.g. voxels=4)."""
    controller: str = "sine"
    """Controller: sine | pure_sine | mlp."""
    controller_kwargs: dict = field(default_factory=dict)
    """Extra arguments of the controller (e.g. omega=20.0, strength=0.3)."""
    task: str = "locomotion"
    """Task: locomotion | turning | waypoints | velocity."""
    n_groups: int = 4
    """Muscle groups G."""
    steps: int = 40
    """Control steps per episode."""
    substeps: int = 10
    """MPM substeps per control step (activations are held over a control step)."""
    dt: float = 1e-3
    """Substep [s]."""
    optimise: str = "both"
    """Which parameters are trained: both | control | design."""
    seed: int = 0
    """Seed of the initial parameters."""

    def validate(self) -> None:
        self.world.validate()
        checks = [(self.representation, REPRESENTATIONS, "design representation"),
                  (self.controller, CONTROLLERS, "controller"), (self.task, TASKS, "task"),
                  (self.optimise, OPTIMISE, "optimise")]
        for val, choices, what in checks:
            if val not in choices:
                raise ConfigError(f"unknown {what} {val!r}; choose one of {', '.join(choices)}")
        if self.n_groups < 1 or self.steps < 1 or self.substeps < 1:
            raise ConfigError("n_groups, steps and substeps must be >= 1")
        if self.dt <= 0:
            raise ConfigError(f"dt must be > 0, got {self.dt}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ProblemSpec:
        d = dict(d)
        w = d.pop("world", {})
        return cls(world=w if isinstance(w, WorldSpec) else WorldSpec(**{**w, "robot_size": tuple(w["robot_size"])}),
                   **d)


class Problem:
    """Builds the world and modules of a ``ProblemSpec`` in this process.

    Attributes: world (World), design (Design), controller (Controller), objective (Objective).
    """

    def __init__(self, spec: ProblemSpec):
        spec.validate()
        backend.ensure()
        self.spec = spec
        dtype = backend.torch_dtype()
        self.world = World(spec.world, spec.n_groups)
        torch.manual_seed(spec.seed)
        self.design = make_design(spec.representation, self.world.u0, spec.n_groups, seed=spec.seed,
                                  **spec.design_kwargs).to(dtype)
        self.controller = make_controller(spec.controller, spec.n_groups, spec.world.dim, seed=spec.seed,
                                          **spec.controller_kwargs).to(dtype)
        self.objective = make_objective(spec.task, spec.world.dim)
        self.segment = Segment(self.world, spec.substeps, spec.dt)

    # ------------------------------------------------------------------------------------------ parameters
    def trainable(self, which: str | None = None) -> list[torch.nn.Parameter]:
        """Parameters trained under ``which`` (default the spec's ``optimise``)."""
        which = which or self.spec.optimise
        if which not in OPTIMISE:
            raise ConfigError(f"unknown optimise {which!r}; choose one of {', '.join(OPTIMISE)}")
        ps = []
        if which in ("both", "design"):
            ps += list(self.design.parameters())
        if which in ("both", "control"):
            ps += list(self.controller.parameters())
        return ps

    def vector(self) -> np.ndarray:
        """The trainable parameters as one float64 vector."""
        return parameters_to_vector(self.trainable()).detach().cpu().double().numpy()

    def set_vector(self, vec) -> None:
        with torch.no_grad():
            ps = self.trainable()
            vector_to_parameters(torch.as_tensor(np.asarray(vec), dtype=ps[0].dtype), ps)

    def state_dict(self) -> dict:
        return {"design": self.design.state_dict(), "controller": self.controller.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.design.load_state_dict(sd["design"])
        self.controller.load_state_dict(sd["controller"])

    # ------------------------------------------------------------------------------------------ evaluation
    def fields(self):
        return self.design(self.world.u0)

    def rollout(self, record_all: bool = False):
        """Differentiable rollout of the current parameters; returns the ``Trajectory``."""
        s = self.spec
        return simulate(self.world, self.fields(), self.controller, s.steps, s.substeps, s.dt, self.segment,
                        record_all=record_all)

    def loss(self):
        """(loss tensor, trajectory)."""
        traj = self.rollout()
        return self.objective.loss(traj), traj

    def evaluate(self, vec=None) -> float:
        """Reward (−loss) of ``vec`` (default the current parameters), without gradients. A blow-up scores −inf
        so search moves away from it instead of crashing."""
        from engine.errors import SimulationError

        if vec is not None:
            self.set_vector(vec)
        with torch.no_grad():
            try:
                return self.objective.reward(self.rollout())
            except SimulationError:
                return float("-inf")

    def summary(self, traj) -> dict:
        """Metrics of a trajectory: distance travelled along +x [m], loss, cost of transport, mass [kg]."""
        disp = traj.displacement().detach()
        return {"distance": float(disp[0]), "loss": float(self.objective.loss(traj).detach()),
                "cost_of_transport": cost_of_transport(traj, heading=(1.0,) + (0.0,) * (traj.dim - 2)),
                "mass": float(traj.mass.detach().sum())}


