"""Lean launches of Taichi kernels that take torch tensors.

Taichi's ``Kernel.__call__`` spends ~13 µs of Python per tensor argument on every call (template look-up, type,
contiguity and device checks, shape stripping), ~150 µs for a kernel with eight tensors. A renderer's forward and
backward launch ~10 such kernels whose work on a small image is a few milliseconds, so that overhead is 10-20 % of
the call. ``lean(kernel)`` keeps what Taichi derives from the argument *types* (the compiled kernel and where each
argument goes) and sets only the per-call values (pointers, shapes, scalars) on a fresh launch context.

Only on CPU backends. The first call with a new signature, and any call it does not cover (a tensor that is not a
contiguous CPU tensor without gradient buffers, an argument kind it does not know), goes through Taichi's ordinary
path, which compiles and checks. It relies on Taichi 1.7's launch-context API (``make_launch_context``,
``compile_kernel``, ``launch_kernel``); where that is missing every call takes the ordinary path.
``engine.physics.kernels`` builds its cached launch contexts from the same ``plan``.
"""
import taichi as ti
from taichi.lang import impl
from taichi.lang.matrix import MatrixType
from taichi.types import primitive_types

try:
    from torch import Tensor as _Tensor
except ImportError:  # pragma: no cover - torch is a dependency of the bridge
    _Tensor = ()

__all__ = ["lean", "Lean", "plan", "NDARRAY", "FLOAT", "INT", "VECTOR"]

NDARRAY, FLOAT, INT, VECTOR = 0, 1, 2, 3
"""Argument kinds in a ``plan``: a tensor, a real scalar, an integer scalar, a real vector of fixed length."""


def plan(kern, args):
    """Compile (or look up) ``kern`` for ``args`` and say where each runtime argument goes.

    Args:
        kern: the ``Kernel`` object behind ``@ti.kernel`` (its ``_primal``).
        args: one call's arguments.
    Returns:
        ``(t_kernel, compiled, slots)``: Taichi's kernel for this signature, its compiled data, and one
        ``(i, kind, slot, n)`` per runtime argument: position in ``args``, kind, launch-context index (template
        arguments take none) and the element dimensions to strip (tensors) or the vector length.
    Raises:
        TypeError: for an argument kind this module does not set.
    """
    tk = kern.compiled_kernels[kern.ensure_compiled(*args)]
    slots = []
    slot = 0
    for i, (a, arg) in enumerate(zip(args, kern.arguments)):
        anno = arg.annotation
        if isinstance(anno, ti.template):
            continue                                   # compile-time: part of the signature, not of the context
        if isinstance(anno, ti.types.ndarray):
            el = 0 if anno.dtype is None or id(anno.dtype) in primitive_types.type_ids else anno.dtype.ndim
            slots.append((i, NDARRAY, slot, el))
        elif id(anno) in primitive_types.real_type_ids:
            slots.append((i, FLOAT, slot, 1))
        elif id(anno) in primitive_types.integer_type_ids:
            slots.append((i, INT, slot, 1))
        elif isinstance(anno, MatrixType) and anno.ndim == 1 and id(anno.dtype) in primitive_types.real_type_ids:
            slots.append((i, VECTOR, slot, anno.n))
        else:
            raise TypeError(f"unsupported argument kind {anno} of kernel {kern.func.__name__}")
        slot += 1
    prog = impl.get_runtime().prog
    return tk, prog.compile_kernel(prog.config(), prog.get_device_caps(), tk), slots


def set_args(ctx, slots, args, tensors: bool = True):
    """Write ``args`` into launch context ``ctx`` following ``slots`` (tensors too unless ``tensors`` is False)."""
    for i, kind, slot, n in slots:
        v = args[i]
        if kind == NDARRAY:
            if tensors:
                shape = tuple(v.shape[:v.dim() - n])
                g = v.grad
                ctx.set_arg_external_array_with_shape((slot,), v.data_ptr(), v.element_size() * v.nelement(), shape,
                                                      g.data_ptr() if g is not None else 0)
        elif kind == FLOAT:
            ctx.set_arg_float((slot,), float(v))
        elif kind == INT:
            ctx.set_arg_int((slot,), int(v))
        else:
            for j in range(n):
                ctx.set_struct_arg_float((slot, j), float(v[j]))


class Lean:
    """``kernel(*args)`` with Taichi's per-call Python argument handling replaced by a cached plan (see the
    module docstring). Behaves like the kernel: same arguments, returns None."""

    def __init__(self, kernel):
        self.kernel = kernel
        self._kern = getattr(kernel, "_primal", kernel)
        self._plans = {}
        self.__name__ = getattr(kernel, "__name__", "kernel")
        self.__doc__ = getattr(kernel, "__doc__", None)
        self._ok = hasattr(self._kern, "compiled_kernels")
        self._arch_checked = False
        # positions of template (compile-time) arguments: their values are part of the signature
        self._tmpl = tuple(isinstance(arg.annotation, ti.template) for arg in getattr(self._kern, "arguments", ()))

    def _key(self, args):
        # what Taichi's compiled-kernel look-up depends on: each tensor's dtype and rank, each template value;
        # None (ordinary path) for anything this module does not launch itself
        if len(args) != len(self._tmpl):
            return None
        key = []
        for a, tmpl in zip(args, self._tmpl):
            if isinstance(a, _Tensor):
                if not a.is_cpu or a.requires_grad or a.grad is not None or not a.is_contiguous():
                    return None
                key.append((a.dtype, a.dim()))
            elif isinstance(a, (bool, int, float)):
                key.append((type(a), a) if tmpl else type(a))
            else:
                return None
        return tuple(key)

    def __call__(self, *args):
        if not self._arch_checked:
            # CPU backends only: on a GPU the ordinary path stays (untested there, and its staging rules apply)
            from . import backend
            self._ok = self._ok and backend.ensure().resolved_arch in ("x64", "arm64")
            self._arch_checked = True
        key = self._key(args) if self._ok else None
        hit = self._plans.get(key) if key is not None else None
        if hit is None:
            self.kernel(*args)                          # Taichi's path: compiles on first use and checks arguments
            if key is not None:
                try:
                    self._plans[key] = plan(self._kern, args)
                except (TypeError, AttributeError, KeyError):
                    self._ok = False
            return None
        tk, compiled, slots = hit
        ctx = tk.make_launch_context()
        set_args(ctx, slots, args)
        impl.get_runtime().prog.launch_kernel(compiled, ctx)
        return None


def lean(kernel) -> Lean:
    """Wrap a ``@ti.kernel`` whose array arguments are torch tensors (``ti.types.ndarray``) for lean launches.

    Raises:
        TypeError: for anything but a kernel (a ``@ti.func`` wrapped by mistake still runs, inlined, but Taichi
            warns on every compile that it calls a non-Taichi function).
    """
    if not hasattr(getattr(kernel, "_primal", None), "compiled_kernels"):
        raise TypeError(f"lean() wraps a @ti.kernel, got {getattr(kernel, '__name__', kernel)!r}")
    return Lean(kernel)
