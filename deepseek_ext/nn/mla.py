"""Multi-head Latent Attention (DeepSeek-V2/V3).

Queries pass through a low-rank bottleneck (q_lora_rank; 0 = a plain projection). Keys and values
come from one joint latent c_kv (kv_lora_rank) plus a single RoPE key k_pe (qk_rope_head_dim)
shared by all heads: the decoupled RoPE. Two paths give the same function:
- training (`forward(x)`): keys and values are expanded per head, causal attention over x;
- inference (`forward(x, cache=..., start_pos=...)`): the up-projections are absorbed into the
  query and the output, so the cache holds only normalized c_kv and roped k_pe per token
  (optionally FP8, 1x128 groups), which is what makes MLA's KV cache small.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import deepseek_ext.quant as quant
from deepseek_ext.nn.fp8_linear import FP8Linear
from deepseek_ext.nn.norm import RMSNorm
from deepseek_ext.nn.precision import math_dtype
from deepseek_ext.nn.rope import RopeConfig, apply_rope, rope_cos_sin, yarn_mscale


@dataclass(frozen=True)
class MLAConfig:
    hidden: int
    n_heads: int
    q_lora_rank: int  # 0: no query compression
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    max_seq_len: int
    rope: RopeConfig
    fp8: bool = True
    norm_eps: float = 1e-6

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class LatentCache:
    """Per-token compressed KV: cat([normalized c_kv, roped k_pe]) [B, max_len, kv_lora + rope],
    in the activations' dtype or FP8 (1x128 groups along the last dim, fp32 scales)."""

    def __init__(self, batch: int, max_len: int, kv_lora_rank: int, rope_dim: int, fp8: bool = False,
                 dtype=torch.float32, device=None):
        width = kv_lora_rank + rope_dim
        self.kv_lora_rank, self.fp8 = kv_lora_rank, fp8
        self.data = torch.zeros(batch, max_len, width, dtype=torch.float8_e4m3fn if fp8 else dtype, device=device)
        self.scales = torch.ones(batch, max_len, -(-width // 128), device=device) if fp8 else None

    def bytes_per_token(self) -> int:
        per = self.data[0, 0].numel() * self.data.element_size()
        return per + (self.scales[0, 0].numel() * 4 if self.fp8 else 0)

    def write(self, start: int, entries: torch.Tensor) -> None:
        end = start + entries.shape[1]
        if self.fp8:
            q, s = quant.per_token_cast_to_fp8(entries.float().contiguous())
            self.data[:, start:end], self.scales[:, start:end] = q, s
        else:
            self.data[:, start:end] = entries.to(self.data.dtype)

    def read(self, end: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_kv [B, end, kv_lora], k_pe [B, end, rope]) in dtype."""
        data = self.data[:, :end]
        if self.fp8:
            data = quant.dequantize(data.contiguous(), self.scales[:, :end], block=(1, 128))
        data = data.to(dtype)
        return data[..., : self.kv_lora_rank], data[..., self.kv_lora_rank:]


class MLA(nn.Module):
    def __init__(self, cfg: MLAConfig, device=None):
        super().__init__()
        self.cfg = cfg
        h, nh = cfg.hidden, cfg.n_heads
        if cfg.q_lora_rank:
            self.wq_a = FP8Linear(h, cfg.q_lora_rank, fp8=cfg.fp8, device=device)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps, device=device)
            self.wq_b = FP8Linear(cfg.q_lora_rank, nh * cfg.qk_head_dim, fp8=cfg.fp8, device=device)
        else:
            self.wq = FP8Linear(h, nh * cfg.qk_head_dim, fp8=cfg.fp8, device=device)
        self.wkv_a = FP8Linear(h, cfg.kv_lora_rank + cfg.qk_rope_head_dim, fp8=cfg.fp8, device=device)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps, device=device)
        self.wkv_b = FP8Linear(cfg.kv_lora_rank, nh * (cfg.qk_nope_head_dim + cfg.v_head_dim), fp8=cfg.fp8,
                               device=device)
        self.wo = FP8Linear(nh * cfg.v_head_dim, h, fp8=cfg.fp8, device=device)
        self.softmax_scale = cfg.qk_head_dim ** -0.5 * yarn_mscale(cfg.rope) ** 2
        cos, sin = rope_cos_sin(cfg.rope, cfg.max_seq_len, device=device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def new_cache(self, batch: int, fp8: bool = False, dtype=torch.float32, max_len: int | None = None) -> LatentCache:
        return LatentCache(batch, max_len or self.cfg.max_seq_len, self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim,
                           fp8=fp8, dtype=dtype, device=self.wkv_a.weight.device)

    def _queries(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        q = self.wq_b(self.q_norm(self.wq_a(x))) if cfg.q_lora_rank else self.wq(x)
        q = q.unflatten(-1, (cfg.n_heads, cfg.qk_head_dim))
        q_nope, q_pe = q.split([cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], dim=-1)
        return q_nope, self._rope(q_pe, start)

    def _rope(self, x: torch.Tensor, start: int) -> torch.Tensor:
        end = start + x.shape[1]
        return apply_rope(x, self.rope_cos[start:end], self.rope_sin[start:end])

    def _latent(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized c_kv [B, S, kv_lora] and roped k_pe [B, S, rope] of x."""
        c_kv, k_pe = self.wkv_a(x).split([self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim], dim=-1)
        return self.kv_norm(c_kv), self._rope(k_pe.unsqueeze(2), start).squeeze(2)

    def forward(self, x: torch.Tensor, cache: LatentCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """x [B, S, H] -> [B, S, H]. Without cache: causal attention over x (training path). With
        cache: x are the tokens at positions start_pos.. (absorbed path), appended to the cache."""
        if x.shape[1] == 0:
            return x.new_zeros(x.shape)
        if cache is None:
            return self._forward_naive(x)
        return self._forward_absorbed(x, cache, start_pos)

    def _forward_naive(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        q_nope, q_pe = self._queries(x, 0)
        c_kv, k_pe = self._latent(x, 0)
        kv = self.wkv_b(c_kv).unflatten(-1, (cfg.n_heads, cfg.qk_nope_head_dim + cfg.v_head_dim))
        k_nope, v = kv.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)
        dtype = torch.promote_types(q_nope.dtype, k_nope.dtype)
        q = torch.cat([q_nope, q_pe.to(q_nope.dtype)], dim=-1).to(dtype)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, cfg.n_heads, -1).to(k_nope.dtype)], dim=-1).to(dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.to(dtype).transpose(1, 2),
                                             is_causal=True, scale=self.softmax_scale)
        return self.wo(out.transpose(1, 2).flatten(2))

    def _forward_absorbed(self, x: torch.Tensor, cache: LatentCache, start: int) -> torch.Tensor:
        cfg = self.cfg
        seq = x.shape[1]
        q_nope, q_pe = self._queries(x, start)
        c_kv, k_pe = self._latent(x, start)
        cache.write(start, torch.cat([c_kv, k_pe.to(c_kv.dtype)], dim=-1))
        work = math_dtype(x)
        latent, rope_keys = cache.read(start + seq, work)
        wkv_b = self.wkv_b.effective_weight().to(work).unflatten(0, (cfg.n_heads, -1))  # [nh, nope+v, kv_lora]
        w_uk, w_uv = wkv_b.split([cfg.qk_nope_head_dim, cfg.v_head_dim], dim=1)
        q_latent = torch.einsum("bshd,hdc->bshc", q_nope.to(work), w_uk)  # absorb W_UK into the query
        scores = (torch.einsum("bshc,btc->bsht", q_latent, latent)
                  + torch.einsum("bshr,btr->bsht", q_pe.to(work), rope_keys)) * self.softmax_scale
        query_pos = torch.arange(start, start + seq, device=x.device)
        future = torch.arange(start + seq, device=x.device)[None, :] > query_pos[:, None]
        attn = scores.masked_fill(future[None, :, None, :], float("-inf")).softmax(dim=-1)
        out_latent = torch.einsum("bsht,btc->bshc", attn, latent)
        out = torch.einsum("bshc,hvc->bshv", out_latent, w_uv)  # absorb W_UV into the output
        return self.wo(out.flatten(2).to(x.dtype))
