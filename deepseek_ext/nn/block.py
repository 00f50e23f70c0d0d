"""Pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(.)); the residual stays in x's dtype."""
from __future__ import annotations

import torch
from torch import nn

from deepseek_ext.nn.mla import MLA, LatentCache
from deepseek_ext.nn.norm import RMSNorm


class Block(nn.Module):
    def __init__(self, attn: MLA, ffn: nn.Module, hidden: int, eps: float = 1e-6, device=None):
        super().__init__()
        self.attn_norm = RMSNorm(hidden, eps, device=device)
        self.attn = attn
        self.ffn_norm = RMSNorm(hidden, eps, device=device)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, start_pos).to(x.dtype)
        return x + self.ffn(self.ffn_norm(x)).to(x.dtype)
