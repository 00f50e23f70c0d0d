"""SwiGLU silu(g) * u whose backward recomputes silu(g) from the kept input (the output is not kept)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deepseek_ext.nn.precision import math_dtype


class _SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate_up)
        g, u = gate_up.to(math_dtype(gate_up)).chunk(2, dim=-1)
        return (F.silu(g) * u).to(gate_up.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (gate_up,) = ctx.saved_tensors
        g, u = gate_up.to(math_dtype(gate_up)).chunk(2, dim=-1)
        sig = torch.sigmoid(g)
        silu = g * sig
        grad = grad_out.to(g.dtype)
        grad_g = grad * u * sig * (1 + g * (1 - sig))
        return torch.cat([grad_g, grad * silu], dim=-1).to(gate_up.dtype)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2I] = cat([g, u], -1) -> silu(g) * u [..., I] in gate_up's dtype (fp32 math)."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up.shape[-1] must be even (cat of gate and up), got {gate_up.shape[-1]}")
    return _SwiGLUFunction.apply(gate_up)
