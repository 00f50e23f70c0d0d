"""DeepSeekMoE: shared experts + fine-grained routed experts, no token dropping.

Routed experts are grouped weights (experts.py). With `ep_group`, each rank holds
num_experts / ranks of them and tokens travel through dx.ep.Buffer: FP8 with power-of-two scales
on the way out, bf16 partial sums on the way back (combine). Without a group every expert is local
and the same FP8 cast is applied in place of the dispatch, so both give the same numbers.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import deepseek_ext.gemm as gemm
from deepseek_ext.ep import Buffer
from deepseek_ext.nn.ep_experts import ep_routed_experts
from deepseek_ext.nn.experts import experts_forward
from deepseek_ext.nn.gate import MoEGate
from deepseek_ext.nn.grouped_layout import grouped_layout
from deepseek_ext.nn.mlp import MLP

_BF16_ALIGNMENT = 16


def routed_experts(x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor, w13: torch.Tensor,
                   w2: torch.Tensor, fp8: bool) -> torch.Tensor:
    """[N, H] = sum over the routed slots of weight * expert(x) (slots with id -1 skipped), in the
    experts' output dtype (bf16 in the FP8 path) with fp32 accumulation (fp64 for fp64).
    x [N, H]; topk_idx [N, k] ids of the experts in w13/w2 or -1; topk_weights [N, k]."""
    layout = grouped_layout(topk_idx, w13.shape[0], gemm.M_ALIGNMENT if fp8 else _BF16_ALIGNMENT)
    rows = F.pad(x, (0, 0, 0, 1))[layout.row_token]  # padding rows read the appended zero row
    y = experts_forward(rows, w13, w2, layout.m_indices, layout.group_sizes, fp8)
    if y.shape[0] == 0:  # no slot routed here
        return x.new_zeros(x.shape, dtype=y.dtype) + 0 * y.sum()
    routed = layout.inverse_map >= 0
    weights = torch.where(routed, topk_weights, 0).to(y.dtype)
    # one batched [1, k] @ [k, H] per token: the weighted sum of its rows, accumulated in fp32
    return torch.bmm(weights.unsqueeze(1), y[layout.inverse_map.clamp(min=0)]).squeeze(1)


class DeepSeekMoE(nn.Module):
    def __init__(self, hidden: int, moe_intermediate: int, num_experts: int, topk: int, n_shared: int = 1,
                 n_groups: int = 1, topk_groups: int = 1, route_scale: float = 1.0,
                 bias_update_speed: float = 1e-3, balance_loss_alpha: float = 0.0, fp8: bool = True,
                 ep_group: dist.ProcessGroup | None = None, dp_group: dist.ProcessGroup | None = None,
                 max_tokens_per_rank: int = 4096, device=None):
        super().__init__()
        ranks = dist.get_world_size(ep_group) if ep_group is not None else 1
        if num_experts % ranks:
            raise ValueError(f"num_experts ({num_experts}) must be divisible by the EP group size ({ranks})")
        self.hidden, self.num_experts, self.fp8 = hidden, num_experts, fp8
        self.ep_group, self.max_tokens_per_rank = ep_group, max_tokens_per_rank
        self.num_local_experts = num_experts // ranks
        self.first_local_expert = (dist.get_rank(ep_group) if ep_group is not None else 0) * self.num_local_experts
        self.gate = MoEGate(hidden, num_experts, topk, n_groups, topk_groups, route_scale, bias_update_speed,
                            balance_loss_alpha, dp_group=dp_group, device=device)
        self.shared_experts = MLP(hidden, n_shared * moe_intermediate, fp8=fp8, device=device) if n_shared else None
        self.w13 = nn.Parameter(torch.empty(self.num_local_experts, 2 * moe_intermediate, hidden, device=device))
        self.w2 = nn.Parameter(torch.empty(self.num_local_experts, hidden, moe_intermediate, device=device))
        self.reset_parameters()
        self.balance_loss: torch.Tensor | None = None  # of the last forward (training, alpha > 0)
        self._buffer = None

    def reset_parameters(self) -> None:
        for w in (self.w13, self.w2):
            bound = 1 / math.sqrt(w.shape[-1])
            nn.init.uniform_(w, -bound, bound)

    def load_local_experts(self, w13: torch.Tensor, w2: torch.Tensor) -> None:
        """Copies this rank's slice of full [num_experts, ...] expert weights."""
        local = slice(self.first_local_expert, self.first_local_expert + self.num_local_experts)
        with torch.no_grad():
            self.w13.copy_(w13[local])
            self.w2.copy_(w2[local])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., S, H] -> [..., S, H] (bf16 in the FP8 path, else x's dtype)."""
        flat = x.reshape(-1, self.hidden)
        routing = self.gate(x)
        self.balance_loss = routing.balance_loss
        if self.ep_group is None:
            routed = routed_experts(flat, routing.topk_idx, routing.topk_weights, self.w13, self.w2, self.fp8)
        else:
            routed = ep_routed_experts(self._ep_buffer(flat.shape[0]), flat, routing.topk_idx, routing.topk_weights,
                                       self._local_experts, self.fp8)
        out_dtype = torch.bfloat16 if self.fp8 else x.dtype
        out = routed.to(out_dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat).to(out_dtype)
        return out.reshape(*x.shape[:-1], self.hidden)

    def _local_experts(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        return routed_experts(x, topk_idx, topk_weights, self.w13, self.w2, self.fp8)

    def _ep_buffer(self, tokens: int) -> Buffer:
        if tokens > self.max_tokens_per_rank:
            raise ValueError(f"{tokens} tokens on this rank exceed max_tokens_per_rank={self.max_tokens_per_rank}")
        if self._buffer is None:  # created on first use, by every rank of the group together
            self._buffer = Buffer(self.ep_group, self.hidden, self.num_experts, self.max_tokens_per_rank)
        return self._buffer
