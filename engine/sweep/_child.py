"""Entry point of one sweep run's subprocess: ``python -m engine.sweep._child PARENT_PID run ARGS...``.

It asks Linux to SIGKILL it when the Ray worker that launched it dies (so a sweep killed with ``kill -9`` leaves no
orphan runs behind), then runs ``engine.cli.main(["run", ...])`` in this process: the ordinary ``tide run``.
"""
import os
import signal
import sys


def _die_with(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(137)


if __name__ == "__main__":
    _die_with(int(sys.argv[1]))
    from engine.cli import main

    sys.exit(main(sys.argv[2:]))
