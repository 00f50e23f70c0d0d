"""Buffer.stats(): the bytes one rank sent in its last dispatch and its last combine (autograd's
backward calls count too), split by link: internode (to a rank on another node) and intranode
(to another rank of its node; what a rank keeps for itself crosses no link).

Counted are the activation rows: x (and its FP8 scales) in dispatch, the bf16 partial sums in
combine. Each dispatched row also carries its routing (k expert ids, k weights and a token index,
12k + 8 bytes on the flat path, 8k + 4 on the hierarchical one), which is not counted. The counts
are read when stats() is called, so recording them costs no device sync.
"""
from __future__ import annotations

from typing import Sequence

import torch

from deepseek_ext.ep.hierarchical import HierarchicalHandle
from deepseek_ext.ep.topology import Topology

_OPS = ("dispatch", "combine")


def bytes_by_link(rows_per_rank: Sequence[int], topology: Topology, row_bytes: int) -> tuple[int, int]:
    """Rows this rank sent to each group rank -> (internode bytes, intranode bytes)."""
    internode = intranode = 0
    for dst, rows in enumerate(rows_per_rank):
        if topology.node_of(dst) != topology.node:
            internode += rows * row_bytes
        elif dst != topology.rank:
            intranode += rows * row_bytes
    return internode, intranode


def _rows_back(handle, num_ranks: int):
    """Flat combine: one partial back to each source rank per token received from it (counted on
    the device, without a sync, when the sizes stayed there)."""
    if handle.num_recv_per_rank:
        return handle.num_recv_per_rank
    src = handle.src_rank.clamp(0, num_ranks - 1)
    received = torch.arange(src.numel(), device=src.device) < handle.num_recv[0]  # worst case: rows past it are unused
    return torch.zeros(num_ranks, dtype=torch.int64, device=src.device).scatter_add_(0, src, received.long())


class Traffic:
    def __init__(self, topology: Topology):
        self.topology = topology
        self._last: dict[str, tuple] = {}  # op -> (rows sent to each group rank, bytes per row)

    def dispatched(self, layout, handle, data: torch.Tensor, scales: torch.Tensor | None) -> None:
        row_bytes = data.shape[1] * data.element_size() + (4 * scales.shape[1] if scales is not None else 0)
        hierarchical = isinstance(handle, HierarchicalHandle)
        self._last["dispatch"] = (handle.dispatch_rows_sent if hierarchical else layout.num_tokens_per_rank, row_bytes)

    def combined(self, handle, hidden: int) -> None:
        hierarchical = isinstance(handle, HierarchicalHandle)
        rows = handle.combine_rows_sent if hierarchical else _rows_back(handle, self.topology.num_ranks)
        self._last["combine"] = (rows, 2 * hidden)

    def stats(self) -> dict[str, int]:
        """{dispatch,combine}_{internode,intranode}_bytes and their sums internode_bytes and
        intranode_bytes (0 for an op not run yet)."""
        out = {}
        for op in _OPS:
            rows, row_bytes = self._last.get(op, ((), 0))
            rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows
            out[f"{op}_internode_bytes"], out[f"{op}_intranode_bytes"] = bytes_by_link(rows, self.topology, row_bytes)
        for link in ("internode", "intranode"):
            out[f"{link}_bytes"] = sum(out[f"{op}_{link}_bytes"] for op in _OPS)
        return out
