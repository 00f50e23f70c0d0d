"""Routed experts as grouped weights: w13 [E, 2I, H] (gate rows first) and w2 [E, H, I], applied to
rows in the expert-contiguous layout (grouped_layout.py).

FP8 path (the DeepSeek-V3 recipe): inputs are quantized 1x128 with power-of-two scales (what EP
dispatches), weights 128x128; Fprop and Dgrad run dx.gemm.m_grouped_fp8_gemm_nt_contiguous (Dgrad
on transpose_block_fp8 of the quantized weights), Wgrad dx.gemm.k_grouped_fp8_gemm_tn_contiguous
on the fused transposed casts; SwiGLU is fused with the cast (dx.quant.swiglu_cast_to_fp8) and
recomputed in backward from its input. bf16 path: torch._grouped_mm (one matmul per expert where
torch lacks it, and for fp32/fp64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import deepseek_ext.gemm as gemm
import deepseek_ext.quant as quant
from deepseek_ext.nn.fp8_linear import quantize_weight
from deepseek_ext.nn.swiglu import swiglu


def dispatch_cast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The FP8 form tokens travel in: 1x128 groups, power-of-two scales. Its dequantized value is
    exact in bf16 and re-quantizes to the same (q, s)."""
    return quant.per_token_cast_to_fp8(x, pow2_scale=True)


def _swiglu_grad(grad_a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        h = h.detach().requires_grad_(True)
        (grad_h,) = torch.autograd.grad(swiglu(h), h, grad_a)
    return grad_h


class _FP8ExpertsFunction(torch.autograd.Function):
    """x rows [M, H] (bf16, M a multiple of M_ALIGNMENT, padding rows zero) -> y rows [M, H] bf16."""

    @staticmethod
    def forward(ctx, x, w13, w2, m_indices, group_sizes):
        xq, xs = dispatch_cast(x)
        # the Wgrad operand is built from the same FP8 x (exact in bf16), as on an EP receiver
        x_fp8 = quant.dequantize(xq, xs, block=(1, 128), out_dtype=torch.bfloat16)
        w13q, w13s = quantize_weight(w13)
        w2q, w2s = quantize_weight(w2)
        h = gemm.m_grouped_fp8_gemm_nt_contiguous(xq, xs, w13q, w13s, m_indices)
        aq, as_ = quant.swiglu_cast_to_fp8(h)
        y = gemm.m_grouped_fp8_gemm_nt_contiguous(aq, as_, w2q, w2s, m_indices)
        _, _, xqt, xst = quant.per_token_cast_to_fp8_with_transpose(x_fp8)
        ctx.save_for_backward(xqt, xst, h, w13q, w13s, w2q, w2s, m_indices)
        ctx.group_sizes = group_sizes
        return y

    @staticmethod
    def backward(ctx, grad_y):
        xqt, xst, h, w13q, w13s, w2q, w2s, m_indices = ctx.saved_tensors
        sizes = ctx.group_sizes
        gq, gs, gqt, gst = quant.per_token_cast_to_fp8_with_transpose(grad_y.contiguous())
        # recompute the SwiGLU output (FP8, transposed for Wgrad) from its kept input h
        a = quant.dequantize(*quant.swiglu_cast_to_fp8(h), block=(1, 128), out_dtype=torch.bfloat16)
        _, _, aqt, ast = quant.per_token_cast_to_fp8_with_transpose(a)
        grad_w2 = gemm.k_grouped_fp8_gemm_tn_contiguous(gqt, gst, aqt, ast, sizes)
        grad_a = gemm.m_grouped_fp8_gemm_nt_contiguous(gq, gs, *quant.transpose_block_fp8(w2q, w2s), m_indices)
        grad_h = _swiglu_grad(grad_a, h)
        hq, hs, hqt, hst = quant.per_token_cast_to_fp8_with_transpose(grad_h.contiguous())
        grad_w13 = gemm.k_grouped_fp8_gemm_tn_contiguous(hqt, hst, xqt, xst, sizes)
        grad_x = gemm.m_grouped_fp8_gemm_nt_contiguous(hq, hs, *quant.transpose_block_fp8(w13q, w13s), m_indices)
        return grad_x, grad_w13, grad_w2, None, None


def _fp8_experts_inference(x, w13, w2, m_indices) -> torch.Tensor:
    """The forward of _FP8ExpertsFunction without what only backward needs."""
    h = gemm.m_grouped_fp8_gemm_nt_contiguous(*dispatch_cast(x), *quantize_weight(w13), m_indices)
    return gemm.m_grouped_fp8_gemm_nt_contiguous(*quant.swiglu_cast_to_fp8(h), *quantize_weight(w2), m_indices)


def _segments(group_sizes: list[int]):
    start = 0
    for e, size in enumerate(group_sizes):
        if size:
            yield e, slice(start, start + size)
        start += size


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, group_sizes: list[int]) -> torch.Tensor:
    """rows of expert e times w[e]^T in x's dtype: torch._grouped_mm for bf16 where this torch
    has it, else one matmul per expert."""
    w = w.to(x.dtype)
    if hasattr(torch, "_grouped_mm") and x.dtype == torch.bfloat16:
        offs = torch.tensor(group_sizes, device=x.device).cumsum(0).to(torch.int32)
        return torch._grouped_mm(x, w.transpose(-1, -2), offs=offs)
    parts = [F.linear(x[rows], w[e]) for e, rows in _segments(group_sizes)]
    return torch.cat(parts) if parts else x.new_zeros(0, w.shape[1])


def experts_forward(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, m_indices: torch.Tensor,
                    group_sizes: list[int], fp8: bool) -> torch.Tensor:
    """Expert-contiguous rows x [M, H] -> expert outputs [M, H] (bf16 in the FP8 path)."""
    if x.shape[0] == 0:  # no rows here (an EP rank may receive none): zero output, zero weight grads
        return x.new_zeros(0, w2.shape[1], dtype=torch.bfloat16 if fp8 else x.dtype) + 0 * (w13.sum() + w2.sum())
    if fp8:
        x = x.to(torch.bfloat16).contiguous()
        if torch.is_grad_enabled() and (x.requires_grad or w13.requires_grad or w2.requires_grad):
            return _FP8ExpertsFunction.apply(x, w13, w2, m_indices, group_sizes)
        return _fp8_experts_inference(x, w13, w2, m_indices)
    return _grouped_mm(swiglu(_grouped_mm(x, w13, group_sizes)), w2, group_sizes)
