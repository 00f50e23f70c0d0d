"""MoEGate: DeepSeek-V3 routing with auxiliary-loss-free load balancing.

- affinities s = sigmoid(x W^T) (fp32);
- selection uses the biased scores s + b: experts form `n_groups` groups, a group scores the sum
  of its top-2 biased scores, only the `topk_groups` best groups stay, and the top-k experts are
  taken among them;
- weights come from the unbiased s of the selected experts, normalized over the selected and
  multiplied by `route_scale`;
- balancing: the bias b (a buffer, never trained by gradients) moves by +-gamma after each step
  towards the under-loaded experts: b += gamma * sign(mean load - load), with the loads summed
  over the data-parallel group when one is given;
- optional sequence-wise balance loss alpha * sum_i f_i P_i per sequence (DeepSeek-V3 eq. 17-20).

Node-limited routing: with `num_nodes`, the experts are split contiguously over that many nodes (as
dx.ep.Buffer places them), each node holding whole groups; `node_of_group` says which. A token's
experts then lie in its `topk_groups` kept groups, so it reaches at most `topk_groups` nodes
(DeepSeek-V3: 256 experts in 8 groups on 8 nodes, top-4 groups, so at most 4 nodes).

Order of the results: calling the gate returns Routing(topk_idx, topk_weights, balance_loss),
indices first; `route(x)` returns (weights, indices) in DeepSeek-V3's Gate order.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from deepseek_ext.nn.precision import math_dtype


class Routing(NamedTuple):
    topk_idx: torch.Tensor  # [T, k] int64 expert ids
    topk_weights: torch.Tensor  # [T, k] fp32 (fp64 for fp64 input)
    balance_loss: torch.Tensor | None  # scalar, when alpha > 0 and training


def node_of_group(n_groups: int, num_nodes: int) -> tuple[int, ...]:
    """The node holding each expert group when experts are split contiguously over num_nodes
    nodes; each node must hold whole groups, else a group would span nodes and topk_groups would
    not bound the nodes a token reaches."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1 or n_groups % num_nodes:
        raise ValueError(f"num_nodes must be a positive int dividing n_groups={n_groups} (each node holds whole "
                         f"groups, so topk_groups bounds the nodes a token reaches), got {num_nodes!r}")
    return tuple(g // (n_groups // num_nodes) for g in range(n_groups))


def group_limited_topk(biased: torch.Tensor, k: int, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Indices [T, k] of the top-k biased scores among the experts of the `topk_groups` groups
    whose top-2 sum is largest."""
    if n_groups > 1:
        grouped = biased.unflatten(-1, (n_groups, -1))
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(-1, group_scores.topk(topk_groups, dim=-1).indices, True)
        biased = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(-2)
    return biased.topk(k, dim=-1).indices


def sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    """sum_i f_i P_i averaged over sequences: f_i = E/(k S) * tokens sent to expert i in the
    sequence, P_i = mean over the sequence of s_i normalized over all experts."""
    num_experts, k = scores.shape[-1], topk_idx.shape[-1]
    probs = (scores / scores.sum(-1, keepdim=True)).reshape(-1, seq_len, num_experts)
    chosen = torch.zeros_like(scores).scatter_(-1, topk_idx, 1.0).reshape(-1, seq_len, num_experts)
    f = chosen.sum(1) * (num_experts / (k * seq_len))
    return (f * probs.mean(1)).sum(-1).mean()


class MoEGate(nn.Module):
    def __init__(self, hidden: int, num_experts: int, topk: int, n_groups: int = 1, topk_groups: int = 1,
                 route_scale: float = 1.0, bias_update_speed: float = 1e-3, balance_loss_alpha: float = 0.0,
                 use_bias: bool = True, dp_group: dist.ProcessGroup | None = None, num_nodes: int | None = None,
                 device=None):
        super().__init__()
        if num_experts % n_groups:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by n_groups ({n_groups})")
        if not 1 <= topk_groups <= n_groups:
            raise ValueError(f"topk_groups must be in [1, n_groups={n_groups}], got {topk_groups}")
        if not 1 <= topk <= topk_groups * (num_experts // n_groups):
            raise ValueError(f"topk must be in [1, experts in the kept groups], got {topk}")
        if n_groups > 1 and num_experts // n_groups < 2:
            raise ValueError("each group needs at least 2 experts (a group scores its top-2)")
        self.num_experts, self.topk = num_experts, topk
        self.n_groups, self.topk_groups = n_groups, topk_groups
        self.route_scale, self.gamma, self.alpha = route_scale, bias_update_speed, balance_loss_alpha
        self.use_bias, self.dp_group = use_bias, dp_group
        self.node_of_group = node_of_group(n_groups, num_nodes) if num_nodes is not None else None
        self.weight = nn.Parameter(torch.empty(num_experts, hidden, device=device))
        nn.init.normal_(self.weight, std=hidden ** -0.5)
        self.register_buffer("bias", torch.zeros(num_experts, device=device))
        # tokens routed to each expert since the last update_bias (the step's load)
        self.register_buffer("load", torch.zeros(num_experts, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> Routing:
        """x [B, S, H] (each row of B a sequence) or [T, H] (one sequence) -> Routing(topk_idx,
        topk_weights, balance_loss) over the tokens: indices first (route() gives V3's order)."""
        seq_len = x.shape[-2] if x.dim() >= 2 else 1
        flat = x.reshape(-1, x.shape[-1])
        work = math_dtype(flat)
        scores = torch.sigmoid(flat.to(work) @ self.weight.to(work).T)
        biased = scores.detach() + self.bias.to(work) if self.use_bias else scores.detach()
        topk_idx = group_limited_topk(biased, self.topk, self.n_groups, self.topk_groups)
        weights = scores.gather(-1, topk_idx)
        weights = weights / weights.sum(-1, keepdim=True) * self.route_scale
        if self.training:
            self.load += torch.bincount(topk_idx.flatten(), minlength=self.num_experts).to(self.load.dtype)
        loss = None
        if self.training and self.alpha > 0 and flat.shape[0]:
            loss = self.alpha * sequence_balance_loss(scores, topk_idx, seq_len)
        return Routing(topk_idx, weights, loss)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeepSeek-V3's Gate order: (weights, indices), weights first and in x's dtype as V3 returns
        them; calling the gate returns Routing(topk_idx, topk_weights, ...) with indices first and
        fp32 weights. The same routing (and, in training, the same load count)."""
        routing = self(x)
        return routing.topk_weights.to(x.dtype), routing.topk_idx

    @torch.no_grad()
    def update_bias(self) -> torch.Tensor:
        """After an optimizer step: b += gamma * sign(mean load - load) over the step's load
        (summed over dp_group), then the load restarts. Returns the load it used."""
        load = self.load.clone()
        if self.dp_group is not None:
            dist.all_reduce(load, group=self.dp_group)
        if self.use_bias:
            self.bias += self.gamma * torch.sign(load.mean() - load)
        self.load.zero_()
        return load
