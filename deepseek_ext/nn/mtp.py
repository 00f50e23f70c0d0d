"""Multi-Token Prediction (DeepSeek-V3 section 2.2): D sequential modules, module k predicts the
token k+1 positions ahead from module k-1's hidden state (the main model's for k = 1) and the
embedding of token i+k, keeping the causal chain. Embedding and output head are the main model's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepseek_ext.nn.block import Block
from deepseek_ext.nn.fp8_linear import FP8Linear
from deepseek_ext.nn.norm import RMSNorm


class MTPModule(nn.Module):
    """h' = block(proj(cat(norm_h(h), norm_e(emb)))); logits come from head(norm_out(h'))."""

    def __init__(self, block: Block, hidden: int, eps: float = 1e-6, fp8: bool = True, device=None):
        super().__init__()
        self.hidden_norm = RMSNorm(hidden, eps, device=device)
        self.embed_norm = RMSNorm(hidden, eps, device=device)
        self.proj = FP8Linear(2 * hidden, hidden, fp8=fp8, device=device)
        self.block = block
        self.out_norm = RMSNorm(hidden, eps, device=device)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([self.hidden_norm(h), self.embed_norm(emb).to(h.dtype)], dim=-1)
        return self.block(self.proj(merged).to(h.dtype))


class MTP(nn.Module):
    """D = len(modules) prediction depths with loss weight `lambda_` (the MTP loss is
    lambda_ / D * sum of the depths' cross-entropies)."""

    def __init__(self, modules: list[MTPModule], lambda_: float = 0.3):
        super().__init__()
        self.depths = nn.ModuleList(modules)
        self.lambda_ = lambda_

    def forward(self, h: torch.Tensor, labels: torch.Tensor, embed: nn.Module, head: nn.Module) -> torch.Tensor:
        """h [B, S, H] main hidden states (before the final norm); labels [B, S] (labels[:, i] is
        the token after position i). Returns the weighted MTP loss (0 when S is too short)."""
        seq = h.shape[1]
        losses = []
        for k, module in enumerate(self.depths, start=1):
            if seq - k <= 0:
                break
            h = module(h[:, : seq - k], embed(labels[:, k - 1: seq - 1]))  # token i+k at position i
            logits = head(module.out_norm(h))
            losses.append(F.cross_entropy(logits.flatten(0, 1).float(), labels[:, k:].flatten()))
        if not losses:
            return h.new_zeros((), dtype=torch.float32)
        return self.lambda_ * torch.stack(losses).sum() / len(self.depths)

    def draft_logits(self, h: torch.Tensor, following: torch.Tensor, embed: nn.Module,
                     head: nn.Module) -> torch.Tensor:
        """Depth 1 as in training: h [B, L, H] main hidden states of the accepted tokens,
        following [B, L] the token after each of them (the last one the main model's next token)
        -> logits [B, vocab] for the token after that last one (the speculative draft)."""
        module = self.depths[0]
        return head(module.out_norm(module(h, embed(following))[:, -1:]))[:, -1]
