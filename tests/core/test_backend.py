import subprocess
import sys

import pytest

from engine import backend


def test_init_is_idempotent_and_refuses_other_settings(taichi_backend):
    assert backend.init(arch=taichi_backend.arch, precision="f64") is taichi_backend
    assert backend.init(arch="auto", precision="f64") is taichi_backend
    with pytest.raises(backend.BackendError, match="already initialised"):
        backend.init(arch="cpu", precision="f32")


def test_bad_settings_are_named():
    with pytest.raises(backend.BackendError, match="unknown arch 'tpu'"):
        backend.init(arch="tpu")
    with pytest.raises(backend.BackendError, match="unknown precision"):
        backend.init(precision="f16")


def test_import_does_not_initialise_taichi():
    code = ("import engine, engine.backend, engine.bridge, engine.io, engine.scene, engine.cli\n"
            "import taichi as ti\n"
            "from engine import backend\n"
            "assert backend.settings() is None\n"
            "assert not ti.lang.impl.get_runtime().prog, 'taichi was initialised at import'\n"
            "s = backend.ensure(); assert s.resolved_arch == 'x64', s\n"
            "import torch; assert backend.torch_dtype() is torch.float32\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "TIDE_ARCH": "cpu"})
    assert res.returncode == 0, res.stderr


def test_dtype_follows_precision():
    import torch

    assert backend.torch_dtype() is torch.float64
    assert backend.torch_device().type == "cpu"
