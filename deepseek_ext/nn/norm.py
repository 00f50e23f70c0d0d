"""RMSNorm whose backward recomputes the normalization from the input (the output is not kept)."""
from __future__ import annotations

import torch
from torch import nn

from deepseek_ext.nn.precision import math_dtype


def _inverse_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.to(math_dtype(x))
        ctx.save_for_backward(x, weight)  # the input only: backward recomputes the rest
        ctx.eps = eps
        return (xf * _inverse_rms(xf, eps) * weight.to(xf.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        xf = x.to(math_dtype(x))
        r = _inverse_rms(xf, ctx.eps)
        g = grad_y.to(xf.dtype)
        gw = g * weight.to(xf.dtype)
        grad_x = r * gw - xf * r.pow(3) * (gw * xf).mean(-1, keepdim=True)
        grad_w = (g * xf * r).reshape(-1, x.shape[-1]).sum(0)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), None


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, computed in fp32 (fp64 for fp64 input), returned in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RMSNormFunction.apply(x, self.weight, self.eps)
