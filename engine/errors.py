"""Errors that tide reports to users as one line (the CLI turns them into exit status 2, no traceback)."""

__all__ = ["TideError", "ConfigError", "SceneError", "OutputError", "MeshError", "SimulationError"]


class TideError(Exception):
    """Base class: a problem with the user's input, reported as one line."""


class ConfigError(TideError, ValueError):
    """An unknown option or a value of the wrong type."""


class SceneError(TideError):
    """A scene script that is missing, unparsable or does not follow the scene contract."""


class OutputError(TideError):
    """An output folder that exists (without --overwrite/--resume) or cannot be written."""


class MeshError(TideError, ValueError):
    """A mesh that is empty, missing, malformed or not a mesh."""


class SimulationError(TideError, RuntimeError):
    """A simulation that blew up (NaN/Inf, particles leaving the domain); the message names the substep."""
