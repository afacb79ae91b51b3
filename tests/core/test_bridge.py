"""The torch<->Taichi bridge: gradcheck on three kernel shapes, agreement with ti.ad.Tape, and no doubling
(taichi#8101)."""
import taichi as ti
import torch

from engine import bridge


@ti.kernel
def _elementwise(x: ti.types.ndarray(), w: ti.types.ndarray(), y: ti.types.ndarray()):
    for i in x:
        y[i] = ti.sin(x[i]) * w[i] + x[i] * x[i] * w[i]


@ti.kernel
def _reduce(x: ti.types.ndarray(), y: ti.types.ndarray()):
    for i in x:
        y[0] += ti.exp(0.3 * x[i]) * x[i]


@ti.kernel
def _scatter(src: ti.types.ndarray(), index: ti.types.ndarray(), out: ti.types.ndarray()):
    # out has 4 bins; each source value is added to its bin (atomic add) with a nonlinearity
    for i in src:
        ti.atomic_add(out[index[i]], src[i] * src[i] + 0.5 * src[i])


ELEMENTWISE = bridge.KernelOp(_elementwise, lambda x, w: [(x.shape, x.dtype)])
REDUCE = bridge.KernelOp(_reduce, lambda x: [((1,), x.dtype)])
SCATTER = bridge.KernelOp(_scatter, lambda s, i: [((4,), s.dtype)])


def _leaf(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def test_gradcheck_elementwise():
    assert torch.autograd.gradcheck(ELEMENTWISE, (_leaf(7), _leaf(7, seed=1)), eps=1e-6, atol=1e-7)


def test_gradcheck_reduction():
    assert torch.autograd.gradcheck(REDUCE, (_leaf(9),), eps=1e-6, atol=1e-7)


def test_gradcheck_scatter_atomic_add():
    index = torch.tensor([0, 3, 3, 1, 0, 2, 3, 1], dtype=torch.int32)
    assert torch.autograd.gradcheck(lambda s: SCATTER(s, index), (_leaf(8),), eps=1e-6, atol=1e-7)


def test_forward_values_match_torch():
    x, w = _leaf(5), _leaf(5, seed=3)
    torch.testing.assert_close(ELEMENTWISE(x, w), torch.sin(x) * w + x * x * w)
    torch.testing.assert_close(REDUCE(x), (torch.exp(0.3 * x) * x).sum().reshape(1))


def test_gradient_not_doubled_on_leaf_and_repeated_backward():
    # taichi#8101: handing a leaf that requires grad straight to kernel.grad, then returning its .grad, gives 2x
    x = _leaf(6)
    REDUCE(x).sum().backward()
    expected = torch.exp(0.3 * x.detach()) * (1 + 0.3 * x.detach())
    torch.testing.assert_close(x.grad, expected)
    REDUCE(x).sum().backward()  # a second backward accumulates exactly once more
    torch.testing.assert_close(x.grad, 2 * expected)


def test_agrees_with_ti_ad_tape():
    n = 6
    xf = ti.field(ti.f64, shape=n, needs_grad=True)
    yf = ti.field(ti.f64, shape=(), needs_grad=True)

    @ti.kernel
    def reduce_field():
        for i in xf:
            yf[None] += ti.exp(0.3 * xf[i]) * xf[i]

    x = _leaf(n, seed=5)
    xf.from_torch(x.detach())
    with ti.ad.Tape(loss=yf):
        reduce_field()
    REDUCE(x).sum().backward()
    torch.testing.assert_close(x.grad, xf.grad.to_torch().to(torch.float64))


def test_bridge_matches_finite_differences_in_a_torch_graph():
    # the op composed with torch ops on both sides: central differences of the whole graph (f64)
    x = _leaf(5, seed=7)

    def f(x):
        return (ELEMENTWISE(x * 2.0, torch.cos(x)) ** 2).sum()

    f(x).backward()
    eps = 1e-6
    fd = torch.stack([(f(x.detach() + eps * e) - f(x.detach() - eps * e)) / (2 * eps)
                      for e in torch.eye(5, dtype=torch.float64)])
    torch.testing.assert_close(x.grad, fd, rtol=1e-6, atol=1e-8)
