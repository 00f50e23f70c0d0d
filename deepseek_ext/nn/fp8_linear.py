"""FP8Linear: y = x @ W^T with Fprop, Dgrad and Wgrad in FP8, as DeepSeek-V3 trains.

Activations and gradients are quantized 1x128 (dx.quant.per_token_cast_to_fp8*), the fp32 master
weight 128x128 (per_block_cast_to_fp8). Wgrad reads the transposed copies that the fused
per_token_cast_to_fp8_with_transpose writes; Dgrad reads transpose_block_fp8 of the quantized
weight (exact: no re-quantization). The activation kept for backward is that FP8 transposed copy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import deepseek_ext.gemm as gemm
import deepseek_ext.quant as quant

FP8_DIM_MULTIPLE = 16  # the FP8 ops need N and K in whole 16-byte rows
_ROW_MULTIPLE = 16  # the fused transpose cast needs the token count M padded to this


def fp8_supported(in_features: int, out_features: int) -> bool:
    """The rule for FP8Linear(fp8=True): both dims multiples of 16, else the layer runs bf16."""
    return in_features % FP8_DIM_MULTIPLE == 0 and out_features % FP8_DIM_MULTIPLE == 0


def pad_rows(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """x [M, K] followed by zero rows up to a multiple of `multiple` (x itself when aligned)."""
    extra = -x.shape[0] % multiple
    return F.pad(x, (0, 0, 0, extra)) if extra else x


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """128x128 FP8 copy of an fp32 master weight [..., N, K]."""
    return quant.per_block_cast_to_fp8(weight.detach())


class _FP8LinearFunction(torch.autograd.Function):
    """x [M, K] (any float), weight fp32 [N, K] -> bf16 [M, N]; grads: x's dtype and fp32."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        xq, xs, xqt, xst = quant.per_token_cast_to_fp8_with_transpose(pad_rows(x, _ROW_MULTIPLE))
        wq, ws = quantize_weight(weight)
        y = gemm.fp8_gemm_nt(xq, xs, wq, ws, out_dtype=torch.bfloat16)[:m]
        ctx.save_for_backward(xqt, xst, wq, ws)  # the activation is kept in FP8 only
        ctx.rows, ctx.x_dtype = m, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        xqt, xst, wq, ws = ctx.saved_tensors
        gq, gs, gqt, gst = quant.per_token_cast_to_fp8_with_transpose(
            pad_rows(grad_y.contiguous(), _ROW_MULTIPLE))
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            wqt, wst = quant.transpose_block_fp8(wq, ws)
            grad_x = gemm.fp8_gemm_nt(gq, gs, wqt, wst, out_dtype=torch.bfloat16)[:ctx.rows].to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            # dW [N, K] = dY^T @ X: both operands are 1x128 along the token dim
            grad_w = gemm.fp8_gemm_nt(gqt, gst, xqt, xst, out_dtype=torch.float32)
        return grad_x, grad_w


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """FP8 x [..., K] @ weight^T -> bf16 [..., N]; differentiable in x and weight."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] == 0:
        return F.linear(x.to(torch.bfloat16), weight.to(torch.bfloat16))  # no tokens: nothing to quantize
    if torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad):
        y = _FP8LinearFunction.apply(flat, weight)
    else:  # inference: no transposed copy for a backward that will not come
        y = gemm.fp8_gemm_nt(*quant.per_token_cast_to_fp8(flat), *quantize_weight(weight))
    return y.reshape(*x.shape[:-1], weight.shape[0])


class FP8Linear(nn.Module):
    """Linear layer without bias, fp32 master weight [out_features, in_features].

    fp8=True (and both dims multiples of 16, see fp8_supported): FP8 Fprop/Dgrad/Wgrad, bf16
    output. Otherwise plain: the matmul runs in the input's dtype (bf16 in -> bf16 out; fp32/fp64
    inputs keep full precision, which the tests use as the reference).
    """

    def __init__(self, in_features: int, out_features: int, fp8: bool = True,
                 device=None, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.fp8 = fp8
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @property
    def uses_fp8(self) -> bool:
        return self.fp8 and fp8_supported(self.in_features, self.out_features)

    def effective_weight(self) -> torch.Tensor:
        """The weight as the matmul sees it: dequantized 128x128 FP8 when FP8 runs, else the master."""
        if not self.uses_fp8:
            return self.weight
        return quant.dequantize(*quantize_weight(self.weight), block=(128, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x.shape[-1] must be in_features={self.in_features}, got {x.shape[-1]}")
        if self.uses_fp8:
            return fp8_linear(x, self.weight)
        return F.linear(x, self.weight.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8={self.fp8}"
