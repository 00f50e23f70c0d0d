"""Reference expert-contiguous (grouped) layout of routed tokens, and the way back.

The layout, shared with dx.ep dispatch(expert_alignment=A) (one row per (token, expert) pair):
experts ascending; within an expert, tokens ascending (top-k slots of one token name distinct
experts, so a token appears at most once per expert); every expert's segment is followed by
padding rows up to a multiple of A (an expert without tokens has no rows). Padding rows hold
zero data and zero scales, m_indices -1 and row_token -1. Slots with expert -1 get no row.

unpermute_from_grouped reduces back to tokens in a fixed order: out[t] starts at fp32 0 and,
for slot j = 0, 1, ..., k-1 with a row, adds fp32(y[row]) * w[t, j] (product rounded to fp32,
then added: no fused multiply-add); the sum is rounded to bf16 once.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from deepseek_ext.reference.quant import ceil_div, to_m_major


class GroupedLayout(NamedTuple):
    row_token: torch.Tensor  # [rows] int64 token of each row, -1 on padding
    row_slot: torch.Tensor  # [rows] int64 top-k slot of each row, -1 on padding
    m_indices: torch.Tensor  # [rows] int32 expert of each row, -1 on padding
    inverse_map: torch.Tensor  # [T, k] int32 row of each (token, slot), -1 where the slot is -1
    counts: list[int]  # rows per expert, padding included (multiples of the alignment)


def grouped_layout(topk_idx: torch.Tensor, num_experts: int, alignment: int) -> GroupedLayout:
    """topk_idx [T, k] expert ids in [-1, num_experts) -> the grouped layout (module doc)."""
    num_tokens, k = topk_idx.shape
    flat = topk_idx.reshape(-1).long()
    valid = flat >= 0
    per_expert = torch.bincount(flat[valid], minlength=num_experts)
    padded = [ceil_div(int(c), alignment) * alignment for c in per_expert.tolist()]
    starts = torch.tensor([0, *padded], dtype=torch.int64, device=flat.device).cumsum(0)[:-1]
    first_of_expert = per_expert.cumsum(0) - per_expert
    # (token, slot) pairs in token order, stably sorted by expert: tokens ascending within an expert.
    order = torch.sort(torch.where(valid, flat, num_experts), stable=True).indices[: int(valid.sum())]
    expert = flat[order]
    rows = starts[expert] + torch.arange(order.numel(), device=flat.device) - first_of_expert[expert]
    total = sum(padded)
    row_token = torch.full((total,), -1, dtype=torch.int64, device=flat.device)
    row_slot = torch.full_like(row_token, -1)
    m_indices = torch.full((total,), -1, dtype=torch.int32, device=flat.device)
    row_token[rows], row_slot[rows], m_indices[rows] = order // k, order % k, expert.int()
    inverse_map = torch.full((num_tokens * k,), -1, dtype=torch.int32, device=flat.device)
    inverse_map[order] = rows.int()
    return GroupedLayout(row_token, row_slot, m_indices, inverse_map.view(num_tokens, k), padded)


def gather_rows(x: torch.Tensor, row_token: torch.Tensor) -> torch.Tensor:
    """out[r] = x[row_token[r]], zero where row_token[r] == -1 (any dtype, FP8 included)."""
    bits = x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x
    out = bits[row_token.clamp(min=0)]
    out[row_token < 0] = 0
    return out.view(x.dtype)


def permute_to_grouped(x: torch.Tensor, x_scales: torch.Tensor | None, topk_idx: torch.Tensor,
                       num_experts: int, alignment: int = 128):
    """x [T, H] (bf16, or e4m3 with x_scales [T, H/128]) routed by topk_idx [T, k] -> (x rows
    [rows, H], their scales M-major [rows, H/128] or None, m_indices [rows] int32, inverse_map
    [T, k] int32), in the grouped layout of the module doc."""
    layout = grouped_layout(topk_idx, num_experts, alignment)
    scales = None if x_scales is None else to_m_major(gather_rows(x_scales, layout.row_token))
    return gather_rows(x, layout.row_token), scales, layout.m_indices, layout.inverse_map


def unpermute_from_grouped(y: torch.Tensor, inverse_map: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """y [rows, H] -> [T, H] bf16: out[t] = sum over slots j in order of y[inverse_map[t, j]] *
    topk_weights[t, j] in fp32 (module doc), slots with inverse_map -1 skipped."""
    out = torch.zeros(inverse_map.shape[0], y.shape[1], dtype=torch.float32, device=y.device)
    if y.shape[0] == 0:  # every slot is -1: nothing routed
        return out.to(torch.bfloat16)
    for j in range(inverse_map.shape[1]):
        rows = inverse_map[:, j].long()
        has_row = rows >= 0
        term = y[rows.clamp(min=0)].float() * topk_weights[:, j, None].float()
        out += torch.where(has_row[:, None], term, 0.0)
    return out.to(torch.bfloat16)
