"""Dispatch/combine with torch.distributed.all_to_all_single (gloo on CPU, NCCL on GPUs and across
nodes). Each token's row travels as bytes (data | scales | local ids | weights | source index),
so every dtype takes the same path; results match deepseek_ext/reference/ep.py bit for bit."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from deepseek_ext.ep.agreement import OpHeader, check_headers, headers_from
from deepseek_ext.ep.types import DispatchResult, Handle, Layout
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import to_m_major


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """[n, ...] -> [n, bytes per row] uint8 (a copy when t is not contiguous)."""
    return t.contiguous().view(torch.uint8).reshape(t.shape[0], math.prod(t.shape[1:]) * t.element_size())


def _unbytes(raw: torch.Tensor, dtype: torch.dtype, cols: int) -> torch.Tensor:
    """A column slice of received bytes -> [n, cols] of dtype (copied: slices are not aligned)."""
    packed = torch.empty(raw.shape, dtype=torch.uint8, device=raw.device).copy_(raw)
    return packed.view(dtype).reshape(raw.shape[0], cols)


def reduce_expert_rows(y: torch.Tensor, row_token: torch.Tensor, row_weight: torch.Tensor,
                       num_tokens: int) -> torch.Tensor:
    """Expanded layout -> fp32 partial per received token: rows times weights added in row order
    (0 + r0*w0 + r1*w1 ..., product rounded before the add), as the reference; one pass per
    occurrence so each token's additions keep their order."""
    partial = torch.zeros(num_tokens, y.shape[1], dtype=torch.float32, device=y.device)
    rows = (row_token >= 0).nonzero().squeeze(1)
    tokens = row_token[rows]
    order = torch.sort(tokens, stable=True).indices
    rows, tokens = rows[order], tokens[order]
    first = torch.searchsorted(tokens, tokens)  # first occurrence of each token in sorted order
    occurrence = torch.arange(tokens.numel(), device=y.device) - first
    for p in range(int(occurrence.max()) + 1 if occurrence.numel() else 0):
        sel = occurrence == p
        r, t = rows[sel], tokens[sel]
        partial[t] = partial[t] + y[r].float() * row_weight[r][:, None]
    return partial


class TorchEngine:
    """all_to_all_single over `group`; tensors go through the CPU when the group is gloo."""

    def __init__(self, group, num_experts: int):
        self.group = group
        self.num_ranks = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.num_experts = num_experts
        self.local_experts = ref.experts_per_rank(num_experts, self.num_ranks)
        self.on_cpu = dist.get_backend(group) == "gloo"

    def _comm_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu") if self.on_cpu else device

    def _all_to_all(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        """Rows of `send` (grouped by destination) -> rows from every source, sources ascending."""
        device = send.device
        send = send.to(self._comm_device(device)).contiguous()
        recv = send.new_empty((sum(recv_counts), *send.shape[1:]))
        dist.all_to_all_single(recv, send, recv_counts, send_counts, group=self.group)
        return recv.to(device)

    def _all_gather_counts(self, row: torch.Tensor) -> torch.Tensor:
        row = row.to(self._comm_device(row.device))
        table = [torch.empty_like(row) for _ in range(self.num_ranks)]
        dist.all_gather(table, row, group=self.group)
        return torch.stack(table)

    def agree(self, header: OpHeader) -> None:
        """Every operation's first collective: an all-gather of each rank's header (a fixed-size
        row, so ranks in different operations, or one that rejected its inputs, still complete
        it); every rank then checks the same table and raises the same error."""
        row = torch.tensor(header.words(), dtype=torch.int64)
        if not self.on_cpu:
            row = row.to(torch.device("cuda", torch.cuda.current_device()))
        check_headers(headers_from(self._all_gather_counts(row).cpu()))

    def dispatch(self, x: torch.Tensor, scales: torch.Tensor | None, topk_idx: torch.Tensor,
                 topk_weights: torch.Tensor, layout: Layout, expert_alignment: int) -> DispatchResult:
        num_tokens, k = topk_idx.shape
        counts_row = torch.cat([torch.tensor([num_tokens], device=layout.num_tokens_per_rank.device),
                                layout.num_tokens_per_rank.long()])
        table = self._all_gather_counts(counts_row).tolist()  # [R, 1 + R]: T_s, then tokens s -> d
        num_src_tokens = tuple(row[0] for row in table)
        send_counts = table[self.rank][1:]
        recv_counts = [row[1 + self.rank] for row in table]

        in_rank = layout.is_token_in_rank
        send_token = torch.cat([in_rank[:, d].nonzero().squeeze(1) for d in range(self.num_ranks)])
        send_dst = torch.repeat_interleave(torch.arange(self.num_ranks, device=x.device),
                                           torch.tensor(send_counts, device=x.device))
        first = send_dst[:, None] * self.local_experts
        idx = topk_idx[send_token].long()
        here = (idx >= first) & (idx < first + self.local_experts)
        parts = [_bytes(x[send_token])]
        if scales is not None:
            parts.append(_bytes(scales[send_token]))
        parts += [_bytes(torch.where(here, idx - first, -1)),
                  _bytes(torch.where(here, topk_weights[send_token].float(), 0.0)), _bytes(send_token[:, None])]
        widths = [p.shape[1] for p in parts]
        recv = self._all_to_all(torch.cat(parts, 1), send_counts, recv_counts)
        fields = list(torch.split(recv, widths, 1))

        recv_x = _unbytes(fields.pop(0), x.dtype, x.shape[1])
        recv_scales = to_m_major(_unbytes(fields.pop(0), torch.float32, scales.shape[1])) if scales is not None else None
        local_idx = _unbytes(fields[0], torch.int64, k).to(topk_idx.dtype)
        local_w = _unbytes(fields[1], torch.float32, k)
        src_token = _unbytes(fields[2], torch.int64, 1).squeeze(1)
        src_rank = torch.repeat_interleave(torch.arange(self.num_ranks, device=x.device),
                                           torch.tensor(recv_counts, device=x.device))
        counts = torch.bincount(local_idx[local_idx >= 0].long(), minlength=self.local_experts).tolist()
        handle = Handle(src_rank, src_token, num_src_tokens, is_token_in_rank=in_rank,
                        num_recv_per_rank=tuple(recv_counts), topk_idx=topk_idx, topk_weights=topk_weights)
        plain = ref.DispatchResult(recv_x, recv_scales, local_idx, local_w, counts, handle)
        if expert_alignment == 1:
            return DispatchResult(recv_x, recv_scales, local_idx, local_w, counts, handle)
        expanded = ref._expand(plain, self.local_experts, expert_alignment)  # the reference's own layout code
        handle.row_token, handle.row_weight = expanded.handle.row_token, expanded.handle.row_weight
        return DispatchResult(expanded.x, expanded.x_scales, local_idx, local_w, expanded.num_tokens_per_expert,
                              handle, m_indices=expanded.m_indices)

    def send_back(self, rows: torch.Tensor, handle: Handle) -> list[torch.Tensor]:
        """Received-order rows [N_recv, C] -> per destination rank d ascending, the rows for this
        rank's tokens that went to d (tokens ascending)."""
        send_counts = [int(n) for n in handle.is_token_in_rank.sum(0).tolist()]
        recv = self._all_to_all(rows, list(handle.num_recv_per_rank), send_counts)
        return list(torch.split(recv, send_counts, 0))

    def combine(self, y: torch.Tensor, handle: Handle) -> torch.Tensor:
        if handle.row_token is not None:
            partial = reduce_expert_rows(y, handle.row_token, handle.row_weight, handle.src_rank.numel())
        else:
            partial = y
        returned = self.send_back(_bytes(partial.to(torch.bfloat16)), handle)
        in_rank = handle.is_token_in_rank
        out = torch.zeros(in_rank.shape[0], y.shape[1], dtype=torch.float32, device=y.device)
        for d, raw in enumerate(returned):  # ranks ascending: the reference's fp32 sum order
            tokens = in_rank[:, d].nonzero().squeeze(1)
            out[tokens] += _unbytes(raw, torch.bfloat16, y.shape[1]).float()
        return out.to(torch.bfloat16)

    def combine_weights(self, grad_w: torch.Tensor, handle: Handle) -> torch.Tensor:
        """Backward of the received topk_weights: [N_recv, k] fp32 -> [T, k] (each slot's expert
        lives on one rank, so each source slot receives one non-zero value)."""
        returned = self.send_back(_bytes(grad_w.float()), handle)
        in_rank = handle.is_token_in_rank
        out = torch.zeros(in_rank.shape[0], grad_w.shape[1], dtype=torch.float32, device=grad_w.device)
        for d, raw in enumerate(returned):
            tokens = in_rank[:, d].nonzero().squeeze(1)
            out[tokens] += _unbytes(raw, torch.float32, grad_w.shape[1])
        return out
