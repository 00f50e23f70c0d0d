"""The eager route of the ops: outside tracing, a call skips the torch.library dispatcher (~12 us
per call) and runs a plan made for its argument signature: validation ran once when the plan was
made, and the plan holds what follows from the signature (backend, output shapes and strides,
launcher and its size arguments), so a call only reads addresses, allocates and launches.

The dispatcher route is kept wherever the dispatcher does work: under torch.compile (tracing), a
torch function mode (``with torch.device(...)``), a dispatch mode (FakeTensorMode, make_fx's proxy
mode), functorch transforms (vmap, grad), the profiler (so traces keep the op's name), for tensor
subclasses, and when autograd would record the call (grad enabled and an input that requires grad:
the custom op raises on backward, as it should).

A signature holds all that validation and planning read: each tensor's shape, strides, dtype,
device and requires_grad, each other argument's type and value (None, bool, int, torch.dtype, flat
lists/tuples of ints), the requested backend and the kernel modules in place. A call with any other
argument type validates through the dispatcher route. What a signature does not hold is checked on
every call, in either route: start-address alignment by the plan's run, and the values of index
tensors by the kernels that read them (the grouped GEMMs) or by the host (the reference, unpermute).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from deepseek_ext import _backend

_SCALARS = (type(None), bool, int, torch.dtype)  # hashable, compared by type and value
_INT_ONLY = {int}
_TENSOR, _PARAMETER = torch.Tensor, torch.nn.Parameter
_MAX_SIGNATURES = 1024  # per op; the plans start over when full (shapes that change every call)
_is_compiling = torch.compiler.is_compiling
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch = torch._C._are_functorch_transforms_active
_profiling = torch._C._autograd._profiler_enabled
_grad_enabled = torch.is_grad_enabled

enabled = True  # False: every call takes the dispatcher route (bench/host_overhead.py compares both)


class Unkeyable(Exception):
    """An argument a signature cannot hold: the call validates through the dispatcher route."""


def tensor_key(t) -> tuple:
    """A plain tensor's part of a signature."""
    cls = type(t)
    if cls is not _TENSOR and cls is not _PARAMETER:
        raise Unkeyable
    return t.shape, t.stride(), t.dtype, t.device, t.requires_grad


def contiguous_tensor_key(t) -> tuple:
    """tensor_key of a tensor the op requires contiguous (validation rejects any other, but an empty
    one, which is never read): its shape stands for its strides, as contiguous strides differ only
    where a dim is 1, which no address depends on."""
    cls = type(t)
    if cls is not _TENSOR and cls is not _PARAMETER:
        raise Unkeyable
    return t.shape, t.is_contiguous(), t.dtype, t.device, t.requires_grad


def value_key(value) -> tuple:
    """Another argument's part of a signature: its type and value (so True and 1 differ)."""
    cls = type(value)
    if cls in _SCALARS:
        return cls, value
    if (cls is list or cls is tuple) and set(map(type, value)) <= _INT_ONLY:
        return cls, tuple(value)
    raise Unkeyable


class EagerOp:
    """An op's two routes over the same arguments. `check(*args)` validates what a signature holds.
    `signature(*args)` is the op's part of the plan key: tensor_key (contiguous_tensor_key; None for
    an optional tensor left out) or value_key of each argument, or the value itself where no value
    of another type equals a valid one (a torch.dtype); written out per op, as a generic loop over
    the arguments costs twice as much. `plan(*args)` returns the op's run for the arguments' signature,
    `run(*args) -> outputs`. `dispatch(*args)` calls the op through torch.library (whose
    implementation is `plan(*args)(*args)`, the route torch.compile traces)."""

    def __init__(self, check: Callable, signature: Callable, plan: Callable, dispatch: Callable):
        self.check, self.signature, self.plan, self.dispatch = check, signature, plan, dispatch
        self._runs: dict[tuple, Callable] = {}

    def __call__(self, *args):
        if not enabled or _is_compiling() or _function_mode() or _dispatch_modes() or _functorch() or _profiling():
            return self._dispatched(args)
        try:  # the backend asked for and the kernel modules in place decide the plan too
            key = (_backend.requested_backend_raw(), id(_backend._emu), id(_backend._C), self.signature(*args))
            run = self._runs.get(key)
        except (Unkeyable, TypeError):  # TypeError: an unhashable value
            return self._dispatched(args)
        if run is None:
            run = self._planned(key, args)
        return run(*args)

    def _dispatched(self, args: tuple):
        self.check(*args)
        return self.dispatch(*args)

    def _planned(self, key: tuple, args: tuple) -> Callable:
        self.check(*args)
        run = self.plan(*args)
        if any(type(a) in (_TENSOR, _PARAMETER) and a.requires_grad for a in args):
            run = self._recorded_when_grad_enabled(run)
        if len(self._runs) >= _MAX_SIGNATURES:
            self._runs.clear()
        self._runs[key] = run
        return run

    def _recorded_when_grad_enabled(self, run: Callable) -> Callable:
        """An input requires grad: with grad enabled the call goes through the dispatcher, whose
        autograd entry records it."""
        return lambda *args: self.dispatch(*args) if _grad_enabled() else run(*args)
