"""WeightGradStore: weight-gradient work set aside during a backward pass (zero-bubble B/W split).

While ``WeightGradStore.enabled`` is set, layers that cooperate (``DeferredWeightGradLinear``
below, or any layer calling ``WeightGradStore.put``) compute only the input gradient in autograd
and hand their weight-gradient computation over as a closure. ``flush()`` closes the group of one
backward pass; ``pop()`` later runs the oldest group (the pipeline's W pass). When not enabled,
``put`` runs the closure at once, so the same layer works outside the pipeline.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class WeightGradStore:
    enabled: bool = False
    _current: list[Callable[[], None]] = []
    _groups: deque[list[Callable[[], None]]] = deque()

    @classmethod
    def put(cls, closure: Callable[[], None]) -> None:
        if cls.enabled:
            cls._current.append(closure)
        else:
            closure()

    @classmethod
    def flush(cls) -> None:
        cls._groups.append(cls._current)
        cls._current = []

    @classmethod
    def pop(cls) -> None:
        if not cls._groups:
            raise RuntimeError("WeightGradStore.pop: no deferred weight gradients are waiting")
        for closure in cls._groups.popleft():
            closure()

    @classmethod
    def pending(cls) -> int:
        return len(cls._groups) + bool(cls._current)

    @classmethod
    def clear(cls) -> None:
        cls.enabled = False
        cls._current = []
        cls._groups.clear()


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
