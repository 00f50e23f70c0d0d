"""Reference expert-parallel dispatch/combine over R ranks simulated in one process.

Experts are split contiguously: rank r holds global experts [r*E/R, (r+1)*E/R). Each token
travels once to every rank that holds at least one of its experts (-1 slots go nowhere).

Canonical orders, which the kernels reproduce bit-exactly:
- receive order on a rank: by source rank ascending, then source token index ascending;
- expert-contiguous layout (expert_alignment > 1): one row per (received token, local expert),
  local experts ascending, canonical order within an expert, every segment zero-padded (data and
  scales) up to a multiple of the alignment;
- combine: what travels back is bf16, one partial per (token, rank); a token's output is the fp32
  sum of its partials over ranks ascending, starting from 0, cast to bf16. In the expanded layout
  a rank first reduces its rows per received token in fp32, local experts ascending, adding each
  row times its topk weight (product rounded to fp32, then added: no fused multiply-add), and
  rounds that partial to bf16. y in other float dtypes is rounded to bf16 the same way.
Expert ids within one token are distinct (as top-k gives them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from deepseek_ext.reference.permute import gather_rows, grouped_layout
from deepseek_ext.reference.quant import to_m_major

Activation = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # bf16 x, or FP8 (q, s)


class Layout(NamedTuple):
    num_tokens_per_rank: torch.Tensor  # [R] int64: tokens sent to each rank
    num_tokens_per_expert: torch.Tensor  # [E] int64: tokens routed to each expert
    is_token_in_rank: torch.Tensor  # [T, R] bool


@dataclass
class DispatchHandle:
    """Where each row a rank received came from; what combine needs to send results back."""
    src_rank: torch.Tensor  # [N_recv] int64, per received token
    src_token: torch.Tensor  # [N_recv] int64, the token's index on its source rank
    num_src_tokens: tuple[int, ...]  # T_r of every source rank
    row_token: torch.Tensor | None = None  # expanded layout: [rows] received token per row, -1 on padding
    row_weight: torch.Tensor | None = None  # expanded layout: [rows] fp32 topk weight per row, 0 on padding


@dataclass
class DispatchResult:
    x: torch.Tensor  # [N_recv, H] (or [rows, H] in the expanded layout)
    x_scales: torch.Tensor | None  # FP8 input: scales of x, M-major; None for bf16
    topk_idx: torch.Tensor  # [N_recv, k] local expert ids, -1 where the expert lives elsewhere
    topk_weights: torch.Tensor  # [N_recv, k] fp32, 0 where topk_idx is -1
    num_tokens_per_expert: list[int]  # per local expert (padded counts in the expanded layout)
    handle: DispatchHandle
    m_indices: torch.Tensor | None = None  # expanded layout: [rows] int32 local expert, -1 on padding


def experts_per_rank(num_experts: int, num_ranks: int) -> int:
    if num_experts % num_ranks:
        raise ValueError(f"num_experts ({num_experts}) must be divisible by the number of ranks ({num_ranks})")
    return num_experts // num_ranks


def get_dispatch_layout(topk_idx: torch.Tensor, num_experts: int, num_ranks: int) -> Layout:
    """Counts for one rank's tokens: topk_idx [T, k] global expert ids, -1 ignored."""
    valid = topk_idx >= 0
    rank_of_slot = torch.where(valid, topk_idx // experts_per_rank(num_experts, num_ranks), num_ranks)
    in_rank = torch.zeros(topk_idx.shape[0], num_ranks + 1, dtype=torch.bool, device=topk_idx.device)
    in_rank.scatter_(1, rank_of_slot.long(), True)  # column R collects the -1 slots
    is_token_in_rank = in_rank[:, :num_ranks]
    per_expert = torch.bincount(topk_idx[valid].long(), minlength=num_experts)
    return Layout(is_token_in_rank.sum(0), per_expert, is_token_in_rank)


def _split(x: Activation) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (x[0], x[1]) if isinstance(x, tuple) else (x, None)


def _to_local(topk_idx: torch.Tensor, topk_weights: torch.Tensor, rank: int,
              local_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    first = rank * local_experts
    here = (topk_idx >= first) & (topk_idx < first + local_experts)
    local_idx = torch.where(here, topk_idx - first, -1)
    return local_idx, torch.where(here, topk_weights.float(), 0.0)


def _expand(result: DispatchResult, local_experts: int, alignment: int) -> DispatchResult:
    """Token-major received data -> expert-contiguous rows, each segment padded to `alignment`
    (the grouped layout of reference/permute.py)."""
    layout = grouped_layout(result.topk_idx, local_experts, alignment)
    has_row = layout.row_token >= 0
    weights = torch.zeros(layout.row_token.numel(), dtype=torch.float32, device=result.x.device)
    weights[has_row] = result.topk_weights[layout.row_token[has_row], layout.row_slot[has_row]]
    handle = DispatchHandle(result.handle.src_rank, result.handle.src_token, result.handle.num_src_tokens,
                            row_token=layout.row_token, row_weight=weights)
    x_scales = None if result.x_scales is None else to_m_major(gather_rows(result.x_scales, layout.row_token))
    return DispatchResult(gather_rows(result.x, layout.row_token), x_scales, result.topk_idx, result.topk_weights,
                          layout.counts, handle, m_indices=layout.m_indices)


def dispatch(x_per_rank: list[Activation], topk_idx_per_rank: list[torch.Tensor],
             topk_weights_per_rank: list[torch.Tensor], num_experts: int,
             expert_alignment: int = 1) -> list[DispatchResult]:
    """Lists over source ranks in; a list over receiving ranks out (see the module doc for orders)."""
    if expert_alignment < 1:
        raise ValueError(f"expert_alignment must be >= 1, got {expert_alignment}")
    num_ranks = len(x_per_rank)
    local_experts = experts_per_rank(num_experts, num_ranks)
    layouts = [get_dispatch_layout(idx, num_experts, num_ranks) for idx in topk_idx_per_rank]
    num_src_tokens = tuple(idx.shape[0] for idx in topk_idx_per_rank)
    results = []
    for dst in range(num_ranks):
        xs, scales, idxs, weights, src_ranks, src_tokens = [], [], [], [], [], []
        for src in range(num_ranks):
            token = layouts[src].is_token_in_rank[:, dst].nonzero().squeeze(1)
            x, s = _split(x_per_rank[src])
            xs.append(x[token])
            if s is not None:
                scales.append(s[token])
            local_idx, local_w = _to_local(topk_idx_per_rank[src][token], topk_weights_per_rank[src][token],
                                           dst, local_experts)
            idxs.append(local_idx)
            weights.append(local_w)
            src_ranks.append(torch.full_like(token, src))
            src_tokens.append(token)
        topk_idx = torch.cat(idxs)
        counts = [int((topk_idx == e).sum()) for e in range(local_experts)]
        handle = DispatchHandle(torch.cat(src_ranks), torch.cat(src_tokens), num_src_tokens)
        result = DispatchResult(torch.cat(xs), to_m_major(torch.cat(scales)) if scales else None, topk_idx,
                                torch.cat(weights), counts, handle)
        results.append(_expand(result, local_experts, expert_alignment) if expert_alignment > 1 else result)
    return results


def _reduce_rows(y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
    """Expanded layout: fp32 sum per received token of its rows times their weights, in row
    order (local experts ascending); padding rows are skipped."""
    partial = torch.zeros(handle.src_rank.numel(), y.shape[1], dtype=torch.float32, device=y.device)
    for row in (handle.row_token >= 0).nonzero().squeeze(1).tolist():
        partial[handle.row_token[row]] += y[row].float() * handle.row_weight[row]
    return partial


def combine(y_per_rank: list[torch.Tensor], handles: list[DispatchHandle]) -> list[torch.Tensor]:
    """y of every rank (token-major [N_recv, H], or expanded rows) -> [T_r, H] bf16 per source rank."""
    partials = []
    for y, handle in zip(y_per_rank, handles):
        partial = _reduce_rows(y, handle) if handle.row_token is not None else y
        partials.append(partial.to(torch.bfloat16))  # what travels between ranks
    hidden = y_per_rank[0].shape[1]
    outputs = []
    for src, num_tokens in enumerate(handles[0].num_src_tokens):
        out = torch.zeros(num_tokens, hidden, dtype=torch.float32, device=y_per_rank[0].device)
        for partial, handle in zip(partials, handles):  # ranks ascending
            rows = (handle.src_rank == src).nonzero().squeeze(1)
            out[handle.src_token[rows]] += partial[rows].float()  # each token at most once per rank
        outputs.append(out.to(torch.bfloat16))
    return outputs
