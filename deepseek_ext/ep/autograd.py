"""Autograd through dispatch and combine: dispatch's backward is a combine of the gradient (and
the received weights' gradient sent back), combine's backward is a dispatch of the gradient."""
from __future__ import annotations

import dataclasses

import torch

from deepseek_ext.ep.types import DispatchResult, Handle


def _unit_weight_handle(handle: Handle) -> Handle:
    """Expanded layout: the same rows with weight 1, so combine sums a token's row gradients."""
    if handle.row_token is None:
        return handle
    return dataclasses.replace(handle, row_weight=(handle.row_token >= 0).to(torch.float32))


class _Dispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, buffer, x, topk_weights, topk_idx, layout, expert_alignment, holder):
        result = buffer._run(lambda: buffer._dispatch(x, None, topk_idx, topk_weights.detach(), layout,
                                                      expert_alignment), False, (x, topk_idx, topk_weights))
        holder.append(result)
        ctx.buffer, ctx.handle, ctx.recv_here = buffer, result.handle, result.topk_idx >= 0
        ctx.x_dtype, ctx.w_dtype = x.dtype, topk_weights.dtype
        return result.x, result.topk_weights

    @staticmethod
    def backward(ctx, grad_x, grad_w):
        buffer, handle = ctx.buffer, ctx.handle
        grad_in = grad_w_in = None
        if ctx.needs_input_grad[1]:
            grad_in = buffer._run(lambda: buffer._combine(grad_x.contiguous(), _unit_weight_handle(handle)),
                                  False, (grad_x,))[0].to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            # received weights are where(expert here, w, 0): no gradient flows from other ranks' slots
            grad_w_in = buffer._combine_weights(torch.where(ctx.recv_here, grad_w, 0.0), handle).to(ctx.w_dtype)
        return None, grad_in, grad_w_in, None, None, None, None


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, buffer, y, handle):
        ctx.buffer, ctx.handle, ctx.y_dtype, ctx.rows = buffer, handle, y.dtype, y.shape[0]
        return buffer._run(lambda: buffer._combine(y.detach(), handle), False, (y,))[0]

    @staticmethod
    def backward(ctx, grad_out):
        buffer, handle = ctx.buffer, ctx.handle
        layout = buffer.get_dispatch_layout(handle.topk_idx)
        again = buffer._run(lambda: buffer._dispatch(grad_out.to(torch.bfloat16).contiguous(), None, handle.topk_idx,
                                                     handle.topk_weights, layout, 1), False, (grad_out,))
        grad = again.x
        if handle.row_token is not None:  # expanded rows: d out / d y[row] = weight of the row
            real = handle.row_token >= 0
            expanded = torch.zeros(ctx.rows, grad.shape[1], dtype=torch.float32, device=grad.device)
            expanded[real] = grad[handle.row_token[real]].float() * handle.row_weight[real][:, None]
            grad = expanded
        return None, grad.to(ctx.y_dtype), None


def dispatch(buffer, x, topk_idx, topk_weights, layout, expert_alignment, async_op) -> DispatchResult:
    holder: list[DispatchResult] = []
    recv_x, recv_w = _Dispatch.apply(buffer, x, topk_weights, topk_idx, layout, expert_alignment, holder)
    result = holder[0]
    result.x, result.topk_weights = recv_x, recv_w
    if async_op and buffer._comm_stream is not None:
        result.event = torch.cuda.Event()
        result.event.record(torch.cuda.current_stream())
    return result


def combine(buffer, y, handle, async_op):
    out = _Combine.apply(buffer, y, handle)
    if not async_op:
        return out
    event = None
    if buffer._comm_stream is not None:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream())
    return out, event
