"""What the expert-parallel Buffer hands back: the layout, the dispatch result and its handle.
The fields of the reference's types (deepseek_ext/reference/ep.py) keep their meaning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.ep import DispatchHandle


class Layout(NamedTuple):
    num_tokens_per_rank: torch.Tensor  # [R] int64: tokens sent to each rank
    num_tokens_per_expert: torch.Tensor  # [E] int64: tokens routed to each expert
    is_token_in_rank: torch.Tensor  # [T, R] bool
    token_slot_in_rank: torch.Tensor  # [T, R] int32: index among the tokens sent to that rank, -1 if not sent
    slot_in_expert: torch.Tensor  # [T, k] int32: index among the tokens routed to that slot's expert, -1 on -1


@dataclass
class Handle(DispatchHandle):
    """The reference handle plus what the distributed combine (and the autograd) need."""
    is_token_in_rank: torch.Tensor | None = None  # [T, R] bool: where this rank's tokens went
    num_recv_per_rank: tuple[int, ...] = ()  # rows received from each source rank
    token_rows: torch.Tensor | None = None  # expanded layout: [N_recv, k] int32 rows per token, experts ascending, -1 pad
    topk_idx: torch.Tensor | None = None  # this rank's routing (combine's backward dispatches again with it)
    topk_weights: torch.Tensor | None = None
    num_recv: torch.Tensor | None = None  # ipc: [2 + R] int64 on the device: tokens received, expanded rows, each source's T


@dataclass
class DispatchResult(ref.DispatchResult):
    """The reference's result (x, x_scales, topk_idx, topk_weights, num_tokens_per_expert, handle,
    m_indices) plus the event of async_op; num_tokens_per_expert stays on the device in
    worst-case mode and handle is a Handle."""
    event: torch.cuda.Event | None = None  # async_op: record of the communication stream's work
