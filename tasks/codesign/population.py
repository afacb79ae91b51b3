"""Population evaluation for gradient-free optimisers: in-process, or on Ray (embedded local or a cluster).

``Population(spec, workers=2)`` starts ``workers`` Ray actors, each of which rebuilds the ``Problem`` from its
spec once (its own Taichi, kernels from the offline cache) and then scores candidate vectors. Results are returned
in candidate order and each candidate's score depends only on the candidate (the simulation has no randomness), so
a fixed seed gives the same optimisation whatever the worker count. ``workers=0`` evaluates in this process.

Ray: by default an embedded local instance (``ray.init(num_cpus=workers, include_dashboard=False,
log_to_driver=False)``); ``address="ray://host:10001"`` or ``"auto"`` joins an existing cluster instead.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.errors import ConfigError

from .problem import Problem, ProblemSpec

__all__ = ["Population", "evaluate_serial"]

_ROOT = str(Path(__file__).resolve().parents[2])


def evaluate_serial(problem: Problem, vectors) -> list[float]:
    """Rewards of ``vectors`` on ``problem`` in this process (restores the problem's parameters after)."""
    keep = problem.vector()
    try:
        return [problem.evaluate(v) for v in vectors]
    finally:
        problem.set_vector(keep)


class _Evaluator:
    """Ray actor body: owns one Problem built from a spec dict."""

    def __init__(self, spec: dict, precision: str, root: str):
        import sys

        if root not in sys.path:
            sys.path.insert(0, root)
        from engine import backend

        backend.init(arch="cpu", precision=precision)
        self.problem = Problem(ProblemSpec.from_dict(spec))

    def evaluate(self, vector) -> float:
        return self.problem.evaluate(vector)


class Population:
    """Evaluates candidate vectors of a ``ProblemSpec``.

    Args:
        spec: the problem (rebuilt in every worker).
        workers: Ray actors (>= 1), or 0 for in-process evaluation.
        address: None for an embedded local Ray, else a cluster address passed to ``ray.init``.
        precision: float precision of the workers' Taichi (match the driver's for identical results).
        problem: an in-process ``Problem`` to reuse when ``workers == 0``.
    """

    def __init__(self, spec: ProblemSpec, workers: int = 2, address: str | None = None, precision: str = "f64",
                 problem: Problem | None = None):
        if workers < 0:
            raise ConfigError(f"workers must be >= 0, got {workers}")
        self.spec, self.workers, self.address = spec, int(workers), address
        self.problem = problem
        self._actors = []
        self._started_ray = False
        if self.workers == 0:
            if self.problem is None:
                self.problem = Problem(spec)
            return
        import ray

        if not ray.is_initialized():
            env = {"env_vars": {"PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                                "TIDE_FAST_COMPILE": os.environ.get("TIDE_FAST_COMPILE", "1")}}
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            else:
                ray.init(num_cpus=max(self.workers, 1), include_dashboard=False, log_to_driver=False,
                         runtime_env=env, configure_logging=False)
            self._started_ray = True
        actor = ray.remote(num_cpus=1)(_Evaluator)
        self._actors = [actor.remote(spec.as_dict(), precision, _ROOT) for _ in range(self.workers)]

    def __call__(self, vectors) -> list[float]:
        """Rewards of ``vectors`` (a list of (P,) arrays), in the same order."""
        vectors = list(vectors)
        if self.workers == 0:
            return evaluate_serial(self.problem, vectors)
        import ray

        # round-robin by index: which actor scores a candidate does not change its score
        futures = [self._actors[i % len(self._actors)].evaluate.remote(v) for i, v in enumerate(vectors)]
        return [float(r) for r in ray.get(futures)]

    def close(self) -> None:
        """Stop the actors (and the embedded Ray instance this object started)."""
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
