"""The dtype the layers do their sensitive math in."""
from __future__ import annotations

import torch


def math_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for bf16/fp32 tensors; fp64 for fp64 ones (what the tests use as the exact reference)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
