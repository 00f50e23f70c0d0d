"""DeepSeekV3: embedding, MLA + (dense FFN | DeepSeekMoE) blocks, final norm, output head, and the
MTP modules; training loss, balancing update and (speculative) greedy generation.

Build on the meta device (`with torch.device("meta"): DeepSeekV3(cfg)`) to inspect the 671B
configuration without memory.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from deepseek_ext.models.config import DeepSeekV3Config
from deepseek_ext.nn.block import Block
from deepseek_ext.nn.fp8_linear import FP8Linear
from deepseek_ext.nn.mla import MLA
from deepseek_ext.nn.mlp import MLP
from deepseek_ext.nn.moe import DeepSeekMoE
from deepseek_ext.nn.mtp import MTP, MTPModule
from deepseek_ext.nn.norm import RMSNorm


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, S, vocab]
    loss: torch.Tensor | None  # main + MTP + balance losses (when labels are given)
    main_loss: torch.Tensor | None
    mtp_loss: torch.Tensor | None
    balance_loss: torch.Tensor | None


class DeepSeekV3(nn.Module):
    def __init__(self, config: DeepSeekV3Config, ep_group: dist.ProcessGroup | None = None,
                 dp_group: dist.ProcessGroup | None = None, device=None):
        super().__init__()
        self.config = config
        self._groups = (ep_group, dp_group)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size, device=device)
        self.layers = nn.ModuleList(self._block(i, device) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps, device=device)
        self.head = FP8Linear(config.hidden_size, config.vocab_size, fp8=config.fp8, device=device)
        modules = [MTPModule(self._block(config.n_layers + d, device), config.hidden_size, config.norm_eps,
                             config.fp8, device) for d in range(config.n_mtp_modules)]
        self.mtp = MTP(modules, config.mtp_lambda) if modules else None

    def _block(self, layer_id: int, device) -> Block:
        c = self.config
        if layer_id < c.n_dense_layers:
            ffn = MLP(c.hidden_size, c.intermediate_size, fp8=c.fp8, device=device)
        else:
            ep_group, dp_group = self._groups
            ffn = DeepSeekMoE(c.hidden_size, c.moe_intermediate_size, c.n_routed_experts, c.n_activated_experts,
                              c.n_shared_experts, c.n_expert_groups, c.n_limited_groups, c.route_scale,
                              c.bias_update_speed, c.seq_balance_alpha, fp8=c.fp8, ep_group=ep_group,
                              dp_group=dp_group, device=device)
        return Block(MLA(c.mla_config(), device=device), ffn, c.hidden_size, c.norm_eps, device=device)

    def moe_layers(self) -> list[DeepSeekMoE]:
        return [m for m in self.modules() if isinstance(m, DeepSeekMoE)]

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids).to(self.config.dtype)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, S] token ids -> [B, S, H] output of the last block (before the final norm)."""
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h)).float()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        """input_ids [B, S]; labels [B, S] (labels[:, i] = the token after input_ids[:, i])."""
        h = self.hidden_states(input_ids)
        logits = self.logits(h)
        if labels is None:
            return ModelOutput(logits, None, None, None, None)
        main = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        mtp = self.mtp(h, labels, self.embed_tokens, self.head) if self.mtp is not None else None
        balance = [m.balance_loss for m in self.moe_layers() if m.balance_loss is not None]
        balance_loss = torch.stack(balance).sum() if balance else None
        loss = main + sum(t for t in (mtp, balance_loss) if t is not None)
        return ModelOutput(logits, loss, main, mtp, balance_loss)

    @torch.no_grad()
    def update_balancing(self) -> list[torch.Tensor]:
        """Call after each optimizer step: every gate moves its bias by its step's expert load.
        Returns the loads (tokens per expert) per MoE layer, main model first."""
        return [m.gate.update_bias() for m in self.moe_layers()]
