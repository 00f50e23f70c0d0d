"""The eager route of the ops: outside tracing, a call runs the op's implementation directly
(the torch.library dispatcher costs ~12 us per call) and validates each argument signature once.

The dispatcher route is kept wherever the dispatcher does work: under torch.compile (tracing), a
torch function mode (``with torch.device(...)``), a dispatch mode (FakeTensorMode, make_fx's proxy
mode), functorch transforms (vmap, grad), the profiler (so traces keep the op's name), for tensor
subclasses, and when autograd would record the call (grad enabled and an input that requires grad:
the custom op raises on backward, as it should).

A signature holds all that validation reads: each tensor's shape, strides, dtype and device, and
each other argument's type and value (None, bool, int, torch.dtype, flat lists/tuples of ints).
A call with any other argument type validates through the dispatcher route. What validation does
not see is checked by the implementation on every call, in either route: start-address alignment
and the values of index tensors.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_SCALARS = (type(None), bool, int, torch.dtype)  # hashable, compared by type and value
_SEQUENCES = (list, tuple)
_INTS = {int}
_MAX_SIGNATURES = 1024  # per op; the set starts over when full (shapes that change every call)
_is_compiling = torch.compiler.is_compiling
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch = torch._C._are_functorch_transforms_active
_profiling = torch._C._autograd._profiler_enabled
_grad_enabled = torch.is_grad_enabled

enabled = True  # False: every call takes the dispatcher route (bench/host_overhead.py compares both)


def signature(args: tuple) -> tuple | None:
    """The validation key of an eager call, or None when the call takes the dispatcher route."""
    if not enabled or _is_compiling() or _function_mode() or _dispatch_modes() or _functorch() or _profiling():
        return None
    grad = _grad_enabled()
    key = []
    for value in args:
        cls = type(value)
        if cls in _PLAIN_TENSORS:
            if grad and value.requires_grad:
                return None
            key += (value.shape, value.stride(), value.dtype, value.device)
        elif cls in _SCALARS:
            key += (cls, value)
        elif cls in _SEQUENCES and set(map(type, value)) <= _INTS:
            key += (cls, tuple(value))
        else:
            return None
    return tuple(key)


class EagerOp:
    """An op's two routes over the same arguments: `check(*args)` validates what the signature
    holds; `impl(*args)` is the implementation, called directly in eager mode; `dispatch(*args)`
    calls it through torch.library (the route torch.compile traces)."""

    def __init__(self, check: Callable, impl: Callable, dispatch: Callable):
        self.check, self.impl, self.dispatch = check, impl, dispatch
        self._passed: set[tuple] = set()

    def __call__(self, *args):
        key = signature(args)
        if key is None:
            self.check(*args)
            return self.dispatch(*args)
        if key not in self._passed:
            self.check(*args)
            if len(self._passed) >= _MAX_SIGNATURES:
                self._passed.clear()
            self._passed.add(key)
        return self.impl(*args)
