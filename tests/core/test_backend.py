import os
import subprocess
import sys

import pytest

from engine import backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
                         env={**os.environ, "TIDE_ARCH": "cpu"})
    assert res.returncode == 0, res.stderr


def test_dtype_follows_precision():
    import torch

    assert backend.torch_dtype() is torch.float64
    assert backend.torch_device().type == "cpu"


_GRAD_PROBE = """
import sys, torch
from engine import backend
backend.init(arch="cpu", precision=sys.argv[1])
from engine.physics import ModelBuilder, Solver
from engine.physics.checkpoint import rollout
dt = backend.torch_dtype()
b = ModelBuilder(res=(32, 32), dx=1 / 32, ppc=2)
b.add_box((0.3, 0.1), (0.6, 0.3), material="muscle", E=5e3, nu=0.3, rho=1e3, group=0, fibre=(1.0, 0.0))
m = b.finalize()
T = 300
acts = (0.3 * torch.sin(torch.arange(T, dtype=dt)[:, None] * 0.05)).requires_grad_(True)
x, v, _ = rollout(Solver(m), T, 2e-4, actions=acts)
(x[:, 0].mean() + 1e-3 * (v ** 2).sum()).backward()
print(backend.settings().fast_compile, float(acts.grad.norm()))
"""


@pytest.mark.slow
def test_default_f32_gradients_agree_with_f64():
    # guards the fast_compile default: with Taichi's advanced_optimization off this f32 adjoint came out 4x too big
    out = {}
    for prec in ("f64", "f32"):
        res = subprocess.run([sys.executable, "-c", _GRAD_PROBE, prec], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-2000:]
        fast, norm = res.stdout.split()[-2:]
        out[prec] = (fast, float(norm))
    assert out["f64"][0] == "True" and out["f32"][0] == "False"
    assert abs(out["f32"][1] - out["f64"][1]) <= 1e-3 * out["f64"][1]


_HEAP_PROBE = """
import resource, sys, torch
from engine import backend
backend.init(arch="cpu")
faults = []
for _ in range(8):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(10 << 20)       # 40 MB: above glibc's largest adaptive mmap threshold (32 MiB)
    a.fill_(1.0)
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sum(faults[3:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator thresholds")
def test_cpu_backend_keeps_freed_pages_for_the_next_call():
    # a 40 MB work buffer allocated and freed once per call: with glibc's defaults every call maps fresh pages
    # (~10k minor faults of 4 KiB), with backend._keep_heap the later calls reuse the heap's pages. The opt-out
    # run shows that the probe sees the difference.
    def faults(keep):
        res = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "TIDE_KEEP_HEAP": keep, "PYTHONPATH": ROOT})
        assert res.returncode == 0, res.stderr
        return int(res.stdout.split()[-1])
    kept, default = faults("1"), faults("0")
    assert kept < 0.1 * 5 * 10240, (kept, default)
    assert default > 0.8 * 5 * 10240, (kept, default)
