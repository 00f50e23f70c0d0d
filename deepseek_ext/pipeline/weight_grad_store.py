"""WeightGradStore: weight-gradient work set aside during a backward pass (zero-bubble B/W split).

While ``WeightGradStore.enabled`` is set, layers that cooperate (``DeferredWeightGradLinear``
below, or any layer calling ``WeightGradStore.put``) compute only the input gradient in autograd
and hand their weight-gradient computation over as a closure. ``flush()`` closes the group of one
backward pass; ``pop()`` later runs the oldest group (the pipeline's W pass). When not enabled,
``put`` runs the closure at once, so the same layer works outside the pipeline.
"""
from __future__ import annotations

import queue
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class WeightGradStore:
    """Class-level state, as in upstream DualPipe: ``cache`` is the open group (the current
    backward pass), ``funcs_queue`` the FIFO of closed groups waiting for their W pass."""

    enabled: bool = False
    cache: list[Callable[[], None]] = []
    funcs_queue: queue.Queue = queue.Queue()

    @classmethod
    def put(cls, closure: Callable[[], None]) -> None:
        if cls.enabled:
            cls.cache.append(closure)
        else:
            closure()

    @classmethod
    def flush(cls) -> None:
        cls.funcs_queue.put(cls.cache)
        cls.cache = []

    @classmethod
    def pop(cls) -> None:
        if cls.funcs_queue.empty():
            raise RuntimeError("WeightGradStore.pop: no deferred weight gradients are waiting")
        for closure in cls.funcs_queue.get():
            closure()

    @classmethod
    def pending(cls) -> int:
        return cls.funcs_queue.qsize() + bool(cls.cache)

    @classmethod
    def clear(cls) -> None:
        cls.enabled = False
        cls.cache = []
        cls.funcs_queue = queue.Queue()


def _accumulate_grad(param: torch.Tensor, grad: torch.Tensor) -> None:
    param.grad = grad if param.grad is None else param.grad + grad


class _DeferredWeightGradLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.bias = bias
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        bias = ctx.bias

        @torch.no_grad()  # it may run later, outside the backward pass: build no graph
        def weight_grad():
            flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
            _accumulate_grad(weight, flat_grad.t() @ x.reshape(-1, x.shape[-1]))
            if bias is not None:
                _accumulate_grad(bias, flat_grad.sum(0))

        WeightGradStore.put(weight_grad)
        return grad_out @ weight, None, None


class DeferredWeightGradLinear(nn.Linear):
    """nn.Linear whose weight and bias gradients go through WeightGradStore (accumulated into
    ``.grad`` directly, outside autograd); the input gradient stays in autograd."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return _DeferredWeightGradLinearFn.apply(x, self.weight, self.bias)
