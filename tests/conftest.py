"""Test session setup: one Taichi init per process, on the CPU in f64 so gradients can be checked by finite
differences. Tests that need other settings run a subprocess."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session", autouse=True)
def taichi_backend():
    from engine import backend

    return backend.init(arch=os.environ.get("TIDE_TEST_ARCH", "cpu"), precision="f64")
