"""Training cost of a DeepSeekV3Config: FLOPs per token -> GPU-hours -> money.

GPU-hours = flops_per_token x tokens / (mfu x peak_flops) / 3600, where mfu is the model FLOPs
utilization (the share of the GPU's dense peak the training run turns into model FLOPs).
"""
from __future__ import annotations

from dataclasses import dataclass

from deepseek_ext.models.config import DeepSeekV3Config
from deepseek_ext.models.counting import flops_per_token

# H800 SXM (same tensor cores as the H100 SXM): dense BF16 tensor-core peak; FP8 is 2x this
H800_BF16_PEAK_FLOPS = 989.4e12


@dataclass(frozen=True)
class TrainingCost:
    tokens: float
    gpus: int
    mfu: float
    flops_per_token: float
    total_flops: float
    gpu_hours: float
    cost: float  # gpu_hours x price_per_gpu_hour
    days: float  # wall clock on `gpus` GPUs


def _check(name: str, value: float, low: float = 0.0, high: float = float("inf")) -> None:
    if not low < value <= high:
        raise ValueError(f"{name} must be in ({low}, {high}], got {value}")


def training_cost(config: DeepSeekV3Config, tokens: float, gpus: int, mfu: float, price_per_gpu_hour: float = 2.0,
                  seq_len: int = 4096, peak_flops: float = H800_BF16_PEAK_FLOPS) -> TrainingCost:
    """GPU-hours, cost and wall-clock days of training `config` on `tokens` tokens of length
    `seq_len` with `gpus` GPUs running at `mfu` of `peak_flops` (default: H800 dense BF16)."""
    _check("tokens", tokens)
    _check("gpus", gpus)
    _check("mfu", mfu, high=1.0)
    _check("peak_flops", peak_flops)
    if price_per_gpu_hour < 0:
        raise ValueError(f"price_per_gpu_hour must be >= 0, got {price_per_gpu_hour}")
    per_token = flops_per_token(config, seq_len)
    total = per_token * tokens
    gpu_hours = total / (mfu * peak_flops) / 3600
    return TrainingCost(tokens, gpus, mfu, per_token, total, gpu_hours, gpu_hours * price_per_gpu_hour,
                        gpu_hours / gpus / 24)


def implied_mfu(config: DeepSeekV3Config, tokens: float, gpu_hours: float, seq_len: int = 4096,
                peak_flops: float = H800_BF16_PEAK_FLOPS) -> float:
    """The utilization at which training `config` on `tokens` tokens takes `gpu_hours`."""
    _check("tokens", tokens)
    _check("gpu_hours", gpu_hours)
    return flops_per_token(config, seq_len) * tokens / (gpu_hours * 3600 * peak_flops)
