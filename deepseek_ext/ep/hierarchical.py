"""Dispatch/combine across nodes in two hops, DeepSeek-V3's InfiniBand -> NVLink forwarding, on
torch.distributed (NCCL on GPUs, gloo on CPU). Rank (node n, local index l) is group rank n*L + l.

dispatch:
1. internode hop: one row per (token, destination node), to the rank with the same local index on
   that node, over the group of the ranks with local index l;
2. intranode hop: that rank forwards the row to every rank of its node that holds one of the
   token's experts, over the node's group.
The receiver puts the rows in the flat path's order (source rank, then source token), so
everything dispatch returns, the expanded layout included, equals the flat path's bit for bit.

combine: each rank's bf16 partial per received token goes back to the rank that forwarded it,
which sends to the source, in one internode message per (token, node), the partials of every rank
of its node that the token reached. The source adds them in fp32 over ranks ascending, like the
flat path. They are not summed inside the node first: the flat sum rounds after each addition in
rank order, and a node-first sum regroups those additions and changes the bits. So combine
crosses the network in fewer messages but with the flat path's bytes; dispatch is where bytes
are saved (one copy per node instead of one per rank).

Every collective runs on groups created with `timeout_s`: when a rank is slow or dead the others
raise TimeoutError instead of waiting (gloo raises in the call; NCCL's watchdog ends the process
with its timeout message), and the Buffer refuses every later call.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from deepseek_ext.ep.topology import Topology
from deepseek_ext.ep.torch_backend import TorchEngine, _bytes, _unbytes
from deepseek_ext.ep.types import DispatchResult, Handle, Layout
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import to_m_major

_GROUPS: dict[tuple, tuple] = {}  # (default group, ranks, ranks per node, timeout) -> (everyone, across, within)


def _node_groups(group, topology: Topology, timeout_s: float) -> tuple:
    """(all ranks, the ranks with this rank's local index, this rank's node) as process groups with
    timeout_s, shared by every Buffer over the same ranks. Collective over `group` when created."""
    ranks = dist.get_process_group_ranks(group)
    if ranks != sorted(ranks):
        raise ValueError(f"the Buffer's group must list its global ranks in ascending order across nodes, got {ranks}")
    key = (dist.distributed_c10d._get_default_group(), tuple(ranks), topology.ranks_per_node, timeout_s)
    if key not in _GROUPS:
        size, node, local = topology.ranks_per_node, topology.node, topology.local_index
        timeout = timedelta(seconds=timeout_s)
        _GROUPS[key] = tuple(dist.new_group(members, timeout=timeout, use_local_synchronization=True)
                             for members in (ranks, ranks[local::size], ranks[node * size:(node + 1) * size]))
    return key, _GROUPS[key]


@dataclass
class HierarchicalHandle(Handle):
    """The flat path's handle plus the routes of both hops, which combine retraces backwards."""
    arrival_order: torch.Tensor | None = None  # [N_recv]: result row i arrived as row arrival_order[i]
    from_forwarder: tuple[int, ...] = ()  # rows received from each rank of the node (intranode hop)
    forwarded: tuple[int, ...] = ()  # as forwarder: rows sent to each rank of the node
    pair_order: torch.Tensor | None = None  # as forwarder: returned partials -> (row, rank) order
    pairs_per_node: tuple[int, ...] = ()  # as forwarder: partials going back to each node
    dispatch_rows_sent: tuple[int, ...] = ()  # to each group rank, both hops (Buffer.stats)
    combine_rows_sent: tuple[int, ...] = ()


class _Rows:
    """A dispatched row as bytes: x | scales | k expert ids (int32) | k weights (fp32) | token (int32)."""

    def __init__(self, x: torch.Tensor, scales: torch.Tensor | None, k: int):
        self.x_dtype, self.hidden = x.dtype, x.shape[1]
        self.scale_cols = scales.shape[1] if scales is not None else 0
        self.k = k
        self.widths = [self.hidden * x.element_size(), 4 * self.scale_cols, 4 * k, 4 * k, 4]

    def pack(self, x, scales, topk_idx, topk_weights, tokens: torch.Tensor) -> torch.Tensor:
        fields = [x[tokens], topk_idx[tokens].to(torch.int32), topk_weights[tokens].float(), tokens.to(torch.int32)[:, None]]
        if scales is not None:
            fields.insert(1, scales[tokens])
        return torch.cat([_bytes(f) for f in fields], 1)

    def ids(self, raw: torch.Tensor) -> torch.Tensor:
        start = self.widths[0] + self.widths[1]
        return _unbytes(raw[:, start:start + 4 * self.k], torch.int32, self.k).long()

    def unpack(self, raw: torch.Tensor):
        x, s, ids, w, token = torch.split(raw, self.widths, 1)
        scales = to_m_major(_unbytes(s, torch.float32, self.scale_cols)) if self.scale_cols else None
        return (_unbytes(x, self.x_dtype, self.hidden), scales, _unbytes(ids, torch.int32, self.k).long(),
                _unbytes(w, torch.float32, self.k), _unbytes(token, torch.int32, 1).squeeze(1).long())


def backend_across_nodes(backend: str, topology: Topology) -> str:
    """The backend when the ranks span several nodes: the torch engine ("auto" picks it)."""
    if backend == "ipc":
        raise ValueError(f"backend='ipc' runs within one node, but ranks_per_node={topology.ranks_per_node} puts "
                         f"the {topology.num_ranks} ranks on {topology.num_nodes} nodes; use 'torch' or 'auto'")
    return "torch" if backend == "auto" else backend


def torch_engine(group, num_experts: int, topology: Topology, timeout_s: float) -> TorchEngine:
    """The flat engine within one node, the two-hop one across nodes."""
    if topology.num_nodes == 1:
        return TorchEngine(group, num_experts)
    return HierarchicalEngine(group, num_experts, topology, timeout_s)


class HierarchicalEngine(TorchEngine):
    """The torch engine's dispatch and its combine's way back, in two hops; combine itself (the
    fp32 sum over ranks ascending) is the torch engine's."""

    def __init__(self, group, num_experts: int, topology: Topology, timeout_s: float):
        key, (everyone, self._across, self._within) = _node_groups(group, topology, timeout_s)
        super().__init__(everyone, num_experts)  # the torch engine's exchanges run with timeout_s too
        self.topology, self.timeout_s, self._groups_key = topology, timeout_s, key
        self.failure: str | None = None

    # --- collectives with a bounded wait ---------------------------------------------------------

    def _guard(self, what: str, collective):
        if self.failure is not None:
            raise TimeoutError(self.failure)
        try:
            return collective()
        except RuntimeError as error:  # gloo: timed out, or a peer's connection closed
            self.failure = (f"dx.ep.Buffer, rank {self.rank}: the {what} did not complete within timeout_s="
                            f"{self.timeout_s}: a rank is slow or has died; this Buffer cannot be used again ({error})")
            _GROUPS.pop(self._groups_key, None)
            raise TimeoutError(self.failure) from error

    def _exchange(self, group, send: torch.Tensor, send_counts: list[int], recv_counts: list[int],
                  what: str) -> torch.Tensor:
        device = send.device
        send = send.to(self._comm_device(device)).contiguous()
        recv = send.new_empty((sum(recv_counts), *send.shape[1:]))
        self._guard(what, lambda: dist.all_to_all_single(recv, send, recv_counts, send_counts, group=group))
        return recv.to(device)

    def _all_gather_counts(self, row: torch.Tensor) -> torch.Tensor:
        return self._guard("all-gather over all ranks", lambda: super(HierarchicalEngine, self)._all_gather_counts(row))

    # --- dispatch --------------------------------------------------------------------------------

    def _node_ranks_of(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, k] global expert ids -> [N, L] bool: which ranks of this node hold one of them."""
        size = self.topology.ranks_per_node
        local = torch.div(ids, self.local_experts, rounding_mode="floor") - self.topology.node * size
        here = (ids >= 0) & (local >= 0) & (local < size)
        hit = torch.zeros(ids.shape[0], size + 1, dtype=torch.bool, device=ids.device)
        return hit.scatter_(1, torch.where(here, local, size), True)[:, :size]

    def dispatch(self, x: torch.Tensor, scales: torch.Tensor | None, topk_idx: torch.Tensor,
                 topk_weights: torch.Tensor, layout: Layout, expert_alignment: int) -> DispatchResult:
        topo, device = self.topology, x.device
        size, nodes, node, local, me = topo.ranks_per_node, topo.num_nodes, topo.node, topo.local_index, self.rank
        num_tokens = topk_idx.shape[0]
        in_node = layout.is_token_in_rank.reshape(num_tokens, nodes, size).any(2)
        to_node = in_node.sum(0)
        table = self._all_gather_counts(torch.cat([torch.tensor([num_tokens], device=device),
                                                   layout.num_tokens_per_rank.long(), to_node])).tolist()
        to_me = [row[1 + me] for row in table]  # [R]: tokens each source sends to this rank
        from_node = [table[m * size + local][1 + self.num_ranks + node] for m in range(nodes)]
        to_node = to_node.tolist()

        rows = _Rows(x, scales, topk_idx.shape[1])
        send_token = torch.cat([in_node[:, m].nonzero().squeeze(1) for m in range(nodes)])
        arrived = self._exchange(self._across, rows.pack(x, scales, topk_idx, topk_weights, send_token),
                                 to_node, from_node, "dispatch's internode hop")

        goes = self._node_ranks_of(rows.ids(arrived))  # [arrived, L]
        forward = [goes[:, j].nonzero().squeeze(1) for j in range(size)]
        forwarded = [f.numel() for f in forward]
        from_forwarder = [sum(to_me[m * size + j] for m in range(nodes)) for j in range(size)]
        received = self._exchange(self._within, arrived[torch.cat(forward)], forwarded, from_forwarder,
                                  "dispatch's intranode hop")

        # arrival: forwarders ascending, then source nodes, then tokens -> sources ascending, then tokens
        sources = [m * size + j for j in range(size) for m in range(nodes)]
        arrival_src = torch.repeat_interleave(torch.tensor(sources, device=device),
                                              torch.tensor([to_me[s] for s in sources], device=device))
        arrival_order = torch.sort(arrival_src, stable=True).indices
        recv_x, recv_scales, ids, weights, src_token = rows.unpack(received[arrival_order])
        first = me * self.local_experts
        here = (ids >= first) & (ids < first + self.local_experts)
        local_idx = torch.where(here, ids - first, -1).to(topk_idx.dtype)
        local_w = torch.where(here, weights, 0.0)

        forward_rank = torch.repeat_interleave(torch.arange(size, device=device), torch.tensor(forwarded, device=device))
        row_node = torch.repeat_interleave(torch.arange(nodes, device=device), torch.tensor(from_node, device=device))
        pairs_per_node = torch.zeros(nodes, dtype=torch.int64, device=device).index_add_(0, row_node, goes.sum(1))
        dispatch_sent, combine_sent = [0] * self.num_ranks, [0] * self.num_ranks
        for m in range(nodes):
            dispatch_sent[m * size + local] += to_node[m]
            combine_sent[m * size + local] += int(pairs_per_node[m])
        for j in range(size):
            dispatch_sent[node * size + j] += forwarded[j]
            combine_sent[node * size + j] += from_forwarder[j]
        handle = HierarchicalHandle(
            arrival_src[arrival_order], src_token, tuple(row[0] for row in table),
            is_token_in_rank=layout.is_token_in_rank, num_recv_per_rank=tuple(to_me), topk_idx=topk_idx,
            topk_weights=topk_weights, arrival_order=arrival_order, from_forwarder=tuple(from_forwarder),
            forwarded=tuple(forwarded), pair_order=torch.argsort(torch.cat(forward) * size + forward_rank),
            pairs_per_node=tuple(pairs_per_node.tolist()), dispatch_rows_sent=tuple(dispatch_sent),
            combine_rows_sent=tuple(combine_sent))
        counts = torch.bincount(local_idx[local_idx >= 0].long(), minlength=self.local_experts).tolist()
        result = DispatchResult(recv_x, recv_scales, local_idx, local_w, counts, handle)
        if expert_alignment == 1:
            return result
        expanded = ref._expand(result, self.local_experts, expert_alignment)
        handle.row_token, handle.row_weight = expanded.handle.row_token, expanded.handle.row_weight
        return DispatchResult(expanded.x, expanded.x_scales, local_idx, local_w, expanded.num_tokens_per_expert,
                              handle, m_indices=expanded.m_indices)

    # --- combine's way back ----------------------------------------------------------------------

    def send_back(self, rows: torch.Tensor, handle: HierarchicalHandle) -> list[torch.Tensor]:
        """Rows in dispatch's result order [N_recv, C] -> per destination rank d ascending, the rows
        for this rank's tokens that went to d (tokens ascending), through both hops backwards."""
        size, nodes = self.topology.ranks_per_node, self.topology.num_nodes
        arrival = torch.empty_like(rows)
        arrival[handle.arrival_order] = rows
        returned = self._exchange(self._within, arrival, list(handle.from_forwarder), list(handle.forwarded),
                                  "combine's intranode hop")
        in_node = handle.is_token_in_rank.reshape(-1, nodes, size)  # [T, nodes, L]
        from_node = in_node.sum((0, 2)).tolist()
        back = self._exchange(self._across, returned[handle.pair_order], list(handle.pairs_per_node), from_node,
                              "combine's internode hop")
        per_rank = []
        for m, block in enumerate(torch.split(back, from_node, 0)):
            rank_of_pair = in_node[:, m].nonzero()[:, 1]  # block order: tokens, then ranks of node m
            per_rank += [block[rank_of_pair == j] for j in range(size)]
        return per_rank
