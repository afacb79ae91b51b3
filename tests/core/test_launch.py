"""Lean kernel launches (``engine.launch``) give what Taichi's own launch path gives."""
import pytest
import taichi as ti
import torch

from engine import backend
from engine.launch import Lean, lean


@ti.kernel
def _axpy(x: ti.types.ndarray(), y: ti.types.ndarray(), out: ti.types.ndarray(), a: float, n: int,
          power: ti.template()):
    for i in range(n):
        out[i] = a * x[i] ** power + y[i]


@ti.kernel
def _rowsum(m: ti.types.ndarray(dtype=ti.types.vector(3, ti.f64), ndim=1), out: ti.types.ndarray()):
    for i in range(m.shape[0]):
        out[i] = m[i][0] + m[i][1] + m[i][2]


def _ref(x, y, a, n, p):
    out = torch.zeros_like(x)
    out[:n] = a * x[:n] ** p + y[:n]
    return out


def test_lean_matches_taichi_and_follows_scalars_templates_and_new_tensors():
    backend.ensure()
    fn = lean(_axpy)
    gen = torch.Generator().manual_seed(0)
    for step, (a, n, p) in enumerate([(2.0, 5, 1), (-0.5, 3, 1), (3.0, 5, 2), (1.5, 4, 1)]):
        x = torch.rand(5, dtype=torch.float64, generator=gen)           # fresh tensors: new pointers each call
        y = torch.rand(5, dtype=torch.float64, generator=gen)
        out = torch.zeros(5, dtype=torch.float64)
        fn(x, y, out, a, n, p)
        assert torch.allclose(out, _ref(x, y, a, n, p), atol=1e-14), step
    # one plan per template value, the scalar values are not part of the signature
    assert len(fn._plans) == 2


def test_lean_falls_back_for_tensors_it_does_not_launch():
    backend.ensure()
    fn = lean(_axpy)
    x = torch.rand(5, dtype=torch.float64)
    y = torch.rand(10, dtype=torch.float64)[::2]                        # not contiguous: Taichi's path raises
    out = torch.zeros(5, dtype=torch.float64)
    fn(x, x, out, 1.0, 5, 1)
    try:
        fn(x, y, out, 1.0, 5, 1)
    except ValueError as e:
        assert "contiguous" in str(e).lower()
    else:
        raise AssertionError("a non-contiguous tensor must not be launched")


def test_lean_strips_vector_element_dims():
    backend.ensure()
    fn = lean(_rowsum)
    m = torch.rand(7, 3, dtype=torch.float64)
    for _ in range(2):
        out = torch.zeros(7, dtype=torch.float64)
        fn(m, out)
        assert torch.allclose(out, m.sum(1))
    assert isinstance(fn, Lean) and len(fn._plans) == 1


def test_lean_refuses_a_func():
    # a @ti.func under @lean ran inlined, with Taichi warning on every compile of its callers
    @ti.func
    def f(x):
        return x + 1

    with pytest.raises(TypeError, match="wraps a @ti.kernel"):
        lean(f)
