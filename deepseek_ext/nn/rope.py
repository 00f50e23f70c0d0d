"""Rotary position embedding with YaRN context extension (the frequencies DeepSeek-V3 uses).

YaRN keeps the high-frequency dims (many rotations within the original context) as they are,
divides the low-frequency dims by `factor`, and ramps linearly between the two; the attention
softmax scale grows by yarn_mscale(factor)^2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepseek_ext.nn.precision import math_dtype


@dataclass(frozen=True)
class RopeConfig:
    dim: int  # rotated dims per head (even)
    base: float = 10000.0
    factor: float = 1.0  # context extension factor; 1 = plain RoPE
    original_max_len: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0

    @property
    def uses_yarn(self) -> bool:
        return self.factor > 1


def _correction_dim(rotations: float, dim: int, base: float, max_len: int) -> float:
    """The dim index whose wavelength fits `rotations` full turns into max_len positions."""
    return dim * math.log(max_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


def inverse_frequencies(cfg: RopeConfig) -> torch.Tensor:
    """[dim/2] fp64 angular frequencies, YaRN-interpolated when cfg.factor > 1."""
    freqs = 1.0 / cfg.base ** (torch.arange(0, cfg.dim, 2, dtype=torch.float64) / cfg.dim)
    if not cfg.uses_yarn:
        return freqs
    low = max(math.floor(_correction_dim(cfg.beta_fast, cfg.dim, cfg.base, cfg.original_max_len)), 0)
    high = min(math.ceil(_correction_dim(cfg.beta_slow, cfg.dim, cfg.base, cfg.original_max_len)), cfg.dim - 1)
    ramp = ((torch.arange(cfg.dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    keep = 1 - ramp  # 1 on fast dims (kept), 0 on slow dims (interpolated)
    return freqs / cfg.factor * (1 - keep) + freqs * keep


def yarn_mscale(cfg: RopeConfig) -> float:
    """Attention temperature factor; the softmax scale is multiplied by its square."""
    return 0.1 * cfg.mscale * math.log(cfg.factor) + 1.0 if cfg.uses_yarn else 1.0


def rope_cos_sin(cfg: RopeConfig, max_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_len, dim/2] fp32 for positions 0..max_len-1."""
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inverse_frequencies(cfg))
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates interleaved pairs (x[..., 2i], x[..., 2i+1]) of x [B, S, heads, dim] by the angles
    of cos/sin [S, dim/2]; computed in fp32 (fp64 for fp64 x), returned in x's dtype."""
    work = math_dtype(x)
    pairs = x.to(work).unflatten(-1, (-1, 2))
    c, s = cos[:, None, :].to(work), sin[:, None, :].to(work)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
