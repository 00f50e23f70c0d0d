"""DualPipe's own API over dx.pipeline: ``from deepseek_ext.compat.dualpipe import ...`` in
place of ``from dualpipe import ...`` / ``from dualpipe.utils import ...``.

Follows github.com/deepseek-ai/DualPipe at commit 3da1bbe (2025-03-06, package version 1.0.0):

- ``DualPipe`` / ``DualPipeV(modules, batch_dim=0, process_group=None, rank_mapping=None)``;
  ``step(*inputs, num_chunks, criterion, labels, return_outputs)`` returns ``(loss, outputs)``
  with loss the vector of per-chunk losses on the ranks where chunks end, labels a list or tuple;
- a stage class's ``overlapped_forward_backward(module0, inputs0, criterion0, labels0, module1,
  loss1, outputs1, output_grads1) -> (outputs0, loss0)`` runs the F&B ops;
- ``WeightGradStore`` with ``enabled``, ``cache``, ``funcs_queue``, ``put/flush/pop/clear``;
- ``run_backward(tensors, grad_tensors)``, ``set_p2p_tensor_shapes``, ``set_p2p_tensor_dtype``.

Differences: stages may live on any device (upstream asserts the current CUDA device); the
shapes and dtype given to set_p2p_tensor_* are checked and kept but not needed, because our
transfers carry their own shapes and dtypes (so stages may return anything a header describes);
criterion is needed only where chunks end; and a bad or mismatched step raises ValueError on
every rank, and a rank missing at step start a TimeoutError, where upstream asserts or hangs
(``agreement_timeout=`` is an extra keyword of the constructors). The classes are dx.pipeline's,
so ``DualPipe.sum_mirror_grads()`` is there too.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from deepseek_ext import pipeline
from deepseek_ext.pipeline.weight_grad_store import WeightGradStore

__all__ = ["DualPipe", "DualPipeV", "WeightGradStore", "set_p2p_tensor_shapes", "set_p2p_tensor_dtype",
           "run_backward"]

TENSOR_SHAPES: list[tuple[int, ...]] | None = None
TENSOR_DTYPE: torch.dtype | None = None


def set_p2p_tensor_shapes(shapes: Sequence[Sequence[int]]) -> None:
    """Upstream's declaration of the activation shapes passed between ranks (checked, kept)."""
    global TENSOR_SHAPES
    if not isinstance(shapes, (list, tuple)) or not all(
            isinstance(s, (list, tuple, torch.Size)) and all(type(d) is int and d >= 0 for d in s) for s in shapes):
        raise TypeError(f"shapes: expected a list of shapes (tuples of non-negative ints), got {shapes!r}")
    TENSOR_SHAPES = [tuple(s) for s in shapes]


def set_p2p_tensor_dtype(dtype: torch.dtype) -> None:
    """Upstream's declaration of the activation dtype passed between ranks (checked, kept)."""
    global TENSOR_DTYPE
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    TENSOR_DTYPE = dtype


def run_backward(tensors: Sequence[torch.Tensor], grad_tensors: Sequence[torch.Tensor | None]) -> None:
    """Backpropagate grad_tensors through tensors, accumulating into the leaves' ``.grad``."""
    if len(tensors) != len(grad_tensors):
        raise ValueError(f"grad_tensors: {len(grad_tensors)} given for {len(tensors)} tensors")
    torch.autograd.backward(tuple(tensors), tuple(grad_tensors))


class _UpstreamAPI:
    """Upstream's constructor argument order, and step() returning the per-chunk losses."""

    loss_reduction = "none"

    def __init__(self, modules: Sequence[nn.Module], batch_dim: int = 0, process_group=None,
                 rank_mapping: Sequence[int] | None = None, *, agreement_timeout: float | None = None):
        super().__init__(modules, process_group=process_group, batch_dim=batch_dim, rank_mapping=rank_mapping,
                         agreement_timeout=agreement_timeout)


class DualPipe(_UpstreamAPI, pipeline.DualPipe):
    """Upstream's ``DualPipe(modules, batch_dim=0, process_group=None, rank_mapping=None)``: dx.pipeline.DualPipe
    (see there for where inputs and labels go) with step() returning one loss per chunk."""


class DualPipeV(_UpstreamAPI, pipeline.DualPipeV):
    """Upstream's ``DualPipeV(modules, batch_dim=0, process_group=None, rank_mapping=None)``: dx.pipeline.DualPipeV
    with step() returning one loss per chunk."""
