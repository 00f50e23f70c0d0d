"""Dense SwiGLU feed-forward block (also DeepSeekMoE's shared experts)."""
from __future__ import annotations

import torch
from torch import nn

from deepseek_ext.nn.fp8_linear import FP8Linear
from deepseek_ext.nn.swiglu import swiglu


class MLP(nn.Module):
    """w2(silu(x W1^T) * (x W3^T)), W1 and W3 stored as one [2I, H] weight (gate rows first)."""

    def __init__(self, hidden: int, intermediate: int, fp8: bool = True, device=None):
        super().__init__()
        self.w13 = FP8Linear(hidden, 2 * intermediate, fp8=fp8, device=device)
        self.w2 = FP8Linear(intermediate, hidden, fp8=fp8, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(swiglu(self.w13(x)))
