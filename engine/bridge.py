"""The one torch <-> Taichi autograd bridge.

Every differentiable op in tide (physics rollouts, rasterizers, fields) reaches torch through ``apply`` so that a
fix here fixes them all.

Why staging matters (taichi#8101): when a torch tensor that requires grad is handed straight to ``kernel.grad``,
Taichi accumulates into that tensor's ``.grad`` in place; returning that tensor from ``backward`` makes torch add
it a second time, doubling the gradient. The bridge therefore never lets Taichi see a user tensor: inputs and
outputs are detached copies, their gradient buffers are freshly allocated here, and what ``backward`` returns is a
tensor no one else holds.

Two ways to define an op:

* ``KernelOp(kernel, outputs=...)`` for a Taichi kernel whose arguments are ``ti.types.ndarray`` (inputs first,
  then outputs, then optional static scalars). Its gradient is ``kernel.grad`` with the same arguments.
* Subclass ``Op`` and implement ``forward`` / ``backward`` yourself (for field-based solvers that drive their own
  tape, e.g. the segmented-checkpoint MPM rollout).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import backend

__all__ = ["Op", "KernelOp", "apply"]


class Op:
    """A differentiable operation: torch tensors in, torch tensors out.

    Subclasses implement:

    * ``forward(*inputs) -> (outputs: tuple[Tensor, ...], saved: object)``
    * ``backward(saved, grad_outputs: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]`` one entry per input.

    Inputs reach ``forward`` already detached, contiguous and on the backend's device. ``grad_outputs`` are
    contiguous tensors (zeros where torch passed None). Returned gradients are copied by the bridge, so an op may
    return its own buffers, unless the op sets ``fresh_grads``.
    """

    name = "op"
    fresh_grads = False
    """Set True if ``backward`` allocates new gradient tensors on every call and keeps no reference to them;
    the bridge then hands them to torch without a defensive copy (large tables: a full copy per backward)."""

    none_grads = False
    """Set True if ``backward`` accepts None for the gradient of an output the loss does not use (the bridge then
    skips zero-filling it: an image-sized fill per unused output)."""

    def forward(self, *inputs: torch.Tensor):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, saved, grad_outputs):  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, *inputs: torch.Tensor):
        return apply(self, *inputs)


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: Op, *inputs):
        device = backend.torch_device()
        staged = tuple(_stage(x, device) for x in inputs)
        # torch otherwise hands backward zero tensors for unused outputs (an image-sized fill each)
        ctx.set_materialize_grads(not op.none_grads)
        outputs, saved = op.forward(*staged)
        outputs = tuple(outputs)
        ctx.op, ctx.saved, ctx.n_in = op, saved, len(inputs)
        ctx.in_devices = tuple(x.device if isinstance(x, torch.Tensor) else None for x in inputs)
        ctx.out_meta = tuple((o.shape, o.dtype, o.device) for o in outputs)
        out_device = next((d for d in ctx.in_devices if d is not None), device)
        # detach: torch attaches grad_fn to the returned tensor objects; an op that also keeps its outputs in
        # ``saved`` must still hold plain leaf tensors when backward runs
        outputs = tuple(o.detach().to(out_device) for o in outputs)
        nondiff = [o for o in outputs if not o.is_floating_point()]
        if nondiff:
            ctx.mark_non_differentiable(*nondiff)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        none_ok = ctx.op.none_grads
        grads_out = tuple(
            ((None if none_ok else torch.zeros(shape, dtype=dtype, device=dev)) if g is None
             else g.detach().to(dev, dtype).contiguous())
            if dtype.is_floating_point else None
            for g, (shape, dtype, dev) in zip(grad_outputs, ctx.out_meta))
        grads_in = tuple(ctx.op.backward(ctx.saved, grads_out))
        if len(grads_in) != ctx.n_in:
            raise RuntimeError(f"{ctx.op.name}.backward returned {len(grads_in)} gradients for {ctx.n_in} inputs")
        result = [None]
        for g, dev, need in zip(grads_in, ctx.in_devices, ctx.needs_input_grad[1:]):
            if g is None or not need:
                result.append(None)
            else:
                g = g.detach()
                result.append((g if ctx.op.fresh_grads else g.clone()).to(dev))
        return tuple(result)


def apply(op: Op, *inputs):
    """Run ``op`` on torch tensors with autograd. Returns a tensor if the op has one output, else a tuple."""
    out = _Function.apply(op, *inputs)
    return out[0] if len(out) == 1 else out


def _stage(x, device):
    if isinstance(x, torch.Tensor):
        return x.detach().to(device).contiguous()
    return x


class KernelOp(Op):
    """Wrap a Taichi kernel ``kernel(*inputs, *outputs, *statics)`` whose array arguments are ndarrays.

    Args:
        kernel: a ``@ti.kernel`` taking torch tensors as ``ti.types.ndarray`` (inputs, then outputs).
        outputs: ``outputs(*inputs) -> list[(shape, dtype)]`` giving each output's shape and torch dtype.
        statics: extra non-tensor arguments appended to every launch (ints, floats).
        zero_outputs: fill outputs with zeros before the launch (kernels that accumulate with ``+=``).
        name: used in error messages.

    Float inputs get gradients; integer inputs (indices) are passed through and get ``None``.
    """

    fresh_grads = True  # backward stages new copies (and new .grad buffers) on every call

    def __init__(self, kernel, outputs: Callable[..., Sequence], statics: Sequence = (), name: str | None = None):
        self.kernel = kernel
        self.outputs = outputs
        self.statics = tuple(statics)
        self.name = name or getattr(kernel, "__name__", "kernel_op")

    def forward(self, *inputs):
        outs = tuple(torch.zeros(tuple(shape), dtype=dtype, device=backend.torch_device())
                     for shape, dtype in self.outputs(*inputs))
        self.kernel(*inputs, *outs, *self.statics)
        return outs, (inputs, outs)

    def backward(self, saved, grad_outputs):
        inputs, outs = saved
        ins = []
        for x in inputs:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                x = x.clone().requires_grad_(True)
                x.grad = torch.zeros_like(x)
            ins.append(x)
        staged_outs = []
        for o, g in zip(outs, grad_outputs):
            o = o.clone()
            if o.is_floating_point():
                o.requires_grad_(True)
                o.grad = g.clone()
            staged_outs.append(o)
        self.kernel.grad(*ins, *staged_outs, *self.statics)
        return tuple(x.grad if isinstance(x, torch.Tensor) and x.is_floating_point() else None for x in ins)
