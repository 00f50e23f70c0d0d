"""Expert-contiguous row layout for the grouped GEMMs: every (token, expert) pair becomes one row,
experts ascending, tokens ascending within an expert (the order of dx.gemm.permute_to_grouped and
of dx.ep's expanded dispatch), each expert's segment padded to `alignment` rows
(dx.gemm.M_ALIGNMENT for the FP8 grouped GEMMs)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class GroupedLayout(NamedTuple):
    row_token: torch.Tensor  # [rows] int64: source token of each row; N (one past the last) on padding
    inverse_map: torch.Tensor  # [N, k] int64: row of each (token, slot), -1 where the slot is -1
    m_indices: torch.Tensor  # [rows] int32: expert of each row, -1 on padding
    group_sizes: list[int]  # rows per expert, padding included (multiples of the alignment)


def grouped_layout(topk_idx: torch.Tensor, num_experts: int, alignment: int) -> GroupedLayout:
    """topk_idx [N, k] expert ids in [0, num_experts) or -1 (slot not routed here)."""
    num_tokens, k = topk_idx.shape
    flat = topk_idx.reshape(-1).long()
    slot = (flat >= 0).nonzero().squeeze(1)
    experts, order = torch.sort(flat[slot], stable=True)  # stable: tokens stay ascending
    slot = slot[order]
    counts = torch.bincount(experts, minlength=num_experts)
    padded = (counts + alignment - 1) // alignment * alignment
    first_row = torch.cumsum(padded, 0) - padded
    first_slot = torch.cumsum(counts, 0) - counts
    row = first_row[experts] + torch.arange(slot.numel(), device=flat.device) - first_slot[experts]
    rows = int(padded.sum())
    row_token = torch.full((rows,), num_tokens, dtype=torch.int64, device=flat.device)
    row_token[row] = slot // k
    m_indices = torch.full((rows,), -1, dtype=torch.int32, device=flat.device)
    m_indices[row] = experts.to(torch.int32)
    inverse_map = torch.full((num_tokens * k,), -1, dtype=torch.int64, device=flat.device)
    inverse_map[slot] = row
    return GroupedLayout(row_token, inverse_map.view(num_tokens, k), m_indices, padded.tolist())
