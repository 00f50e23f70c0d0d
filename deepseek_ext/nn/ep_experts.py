"""Routed experts across an expert-parallel group through dx.ep.Buffer.

Tokens travel once to each rank holding one of their experts, in FP8 with power-of-two scales
(experts.dispatch_cast: the receiver's re-cast reproduces the same FP8 data, so the numbers equal
the single-process path); each rank sums its experts' weighted outputs per received token and
combine adds the ranks' bf16 partials. Backward: the dispatch's gradient goes back through
combine (bf16), the received routing weights' gradient through the Buffer's weight return path.
The layer (moe.py) imports this module and hands in its local expert computation; nothing here
imports the layer.
"""
from __future__ import annotations

from typing import Callable

import torch

import deepseek_ext.quant as quant
from deepseek_ext.nn.experts import dispatch_cast


class _FP8Dispatch(torch.autograd.Function):
    """x [T, H], topk_weights [T, k] -> received x [N, H] bf16 (dequantized FP8) and weights [N, k]."""

    @staticmethod
    def forward(ctx, buffer, x, topk_weights, topk_idx, received):
        result = buffer.dispatch(dispatch_cast(x.detach()), topk_idx, topk_weights.detach())
        received.append(result)
        ctx.buffer, ctx.handle, ctx.here = buffer, result.handle, result.topk_idx >= 0
        ctx.x_dtype, ctx.w_dtype = x.dtype, topk_weights.dtype
        x_recv = quant.dequantize(result.x, result.x_scales, block=(1, 128), out_dtype=torch.bfloat16)
        return x_recv, result.topk_weights

    @staticmethod
    def backward(ctx, grad_x, grad_w):
        # token-major rows: combine sums each token's copies over the ranks, the dispatch's adjoint
        grad_in = ctx.buffer.combine(grad_x.to(torch.bfloat16).contiguous(), ctx.handle).to(ctx.x_dtype)
        grad_w_in = ctx.buffer._combine_weights(torch.where(ctx.here, grad_w.float(), 0.0), ctx.handle)
        return None, grad_in, grad_w_in.to(ctx.w_dtype), None, None


LocalExperts = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ep_routed_experts(buffer, x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor,
                      local_experts: LocalExperts, fp8: bool) -> torch.Tensor:
    """This rank's tokens x [T, H] with global routing -> [T, H] bf16, the sum over all ranks'
    experts. local_experts(x_recv, local topk_idx, topk_weights) -> [N, H] is the weighted sum of
    this rank's experts per received token."""
    if fp8:
        received: list = []
        x_recv, w_recv = _FP8Dispatch.apply(buffer, x, topk_weights, topk_idx, received)
        idx_recv, handle = received[0].topk_idx, received[0].handle
    else:
        result = buffer.dispatch(x.to(torch.bfloat16), topk_idx, topk_weights)
        x_recv, w_recv, idx_recv, handle = result.x, result.topk_weights, result.topk_idx, result.handle
    partial = local_experts(x_recv, idx_recv, w_recv)
    return buffer.combine(partial.to(torch.bfloat16), handle)
