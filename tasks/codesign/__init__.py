"""Soft-robot co-design (SoftZoo-style): design spaces, controllers, tasks, optimisers and Ray populations.

    spec = ProblemSpec(world=WorldSpec(env="ground"), representation="sdf_basis", controller="sine")
    problem = Problem(spec)                      # world + design + controller + task
    opt = Diffsim(problem, lr=0.05)              # or CMAES(problem.vector(), Population(spec)), RandomSearch(...)
    for i in range(20): step = opt.step(i)
"""
from .algorithms import ALGORITHMS, CMAES, DIFFSIM_COST, Diffsim, RandomSearch, Step, check_budget
from .controllers import (CONTROLLERS, MLPController, PureSineController, SineController, make_controller,
                          observe)
from .designs import (REPRESENTATIONS, DesignFields, ImplicitDesign, ParticleDesign, SDFBasisDesign, VoxelDesign,
                      make_design)
from .objectives import (TASKS, Locomotion, Trajectory, Turning, VelocityTracking, Waypoints, cost_of_transport,
                         make_objective)
from .population import Population, evaluate_serial
from .problem import OPTIMISE, Problem, ProblemSpec
from .rollout import Segment, simulate
from .world import ENVIRONMENTS, World, WorldSpec

__all__ = ["ALGORITHMS", "CMAES", "DIFFSIM_COST", "Diffsim", "RandomSearch", "Step", "check_budget", "CONTROLLERS",
           "MLPController", "PureSineController", "SineController", "make_controller", "observe", "REPRESENTATIONS",
           "DesignFields", "ImplicitDesign", "ParticleDesign", "SDFBasisDesign", "VoxelDesign", "make_design", "TASKS",
           "Locomotion", "Trajectory", "Turning", "VelocityTracking", "Waypoints", "cost_of_transport",
           "make_objective", "Population", "evaluate_serial", "OPTIMISE", "Problem", "ProblemSpec", "Segment",
           "simulate", "ENVIRONMENTS", "World", "WorldSpec"]
