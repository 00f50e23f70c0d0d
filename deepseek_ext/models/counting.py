"""Parameter counts and training FLOPs of a DeepSeekV3Config, from the model built on the meta device."""
from __future__ import annotations

import torch

from deepseek_ext.models.config import DeepSeekV3Config
from deepseek_ext.models.deepseek_v3 import DeepSeekV3
from deepseek_ext.nn.moe import DeepSeekMoE


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _inactive_expert_params(moe: DeepSeekMoE, topk: int) -> int:
    """Routed-expert weights a token does not touch (it uses topk of the experts)."""
    per_expert = (moe.w13.numel() + moe.w2.numel()) // moe.num_local_experts
    return per_expert * (moe.num_experts - topk)


_cache: dict[str, dict[str, int]] = {}


def _counts(config: DeepSeekV3Config) -> dict[str, int]:
    key = repr(config)
    if key not in _cache:  # building 671B on the meta device takes about a second
        _cache[key] = _count_model(config)
    return dict(_cache[key])


def _count_model(config: DeepSeekV3Config) -> dict[str, int]:
    with torch.device("meta"):
        model = DeepSeekV3(config)
    mtp = _numel(model.mtp) if model.mtp is not None else 0
    total = _numel(model) - mtp
    main_moe = [m for layer in model.layers for m in layer.modules() if isinstance(m, DeepSeekMoE)]
    inactive = sum(_inactive_expert_params(m, config.n_activated_experts) for m in main_moe)
    mtp_inactive = 0
    if model.mtp is not None:
        mtp_moe = [m for m in model.mtp.modules() if isinstance(m, DeepSeekMoE)]
        mtp_inactive = sum(_inactive_expert_params(m, config.n_activated_experts) for m in mtp_moe)
    return {"total": total, "activated": total - inactive, "mtp": mtp, "mtp_activated": mtp - mtp_inactive,
            "embedding": model.embed.weight.numel(), "head": model.head.weight.numel(),
            # as released checkpoints store it: each MTP module with its own embedding and head copy
            "mtp_checkpoint": mtp + config.n_mtp_modules * (model.embed.weight.numel() + model.head.weight.numel())}


def param_counts(config: DeepSeekV3Config) -> dict[str, int]:
    """{"total", "activated", "mtp"}: the main model's parameters (embedding and head included),
    those one token uses (shared + top-k routed experts), and the MTP modules' own parameters
    (the embedding and head they share with the main model are not counted again). Also
    "mtp_activated", "embedding", "head" and "mtp_checkpoint" (MTP counted with its own copies of
    the embedding and head, as the released DeepSeek-V3 checkpoint stores them)."""
    return _counts(config)


def flops_per_token(config: DeepSeekV3Config, seq_len: int = 4096, include_mtp: bool = True) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 x the activated matmul
    parameters (all but the embedding lookup), plus causal attention, 6 x n_heads x
    (qk_head_dim + v_head_dim) x seq_len / 2 per layer (QK^T and PV over the average causal
    context), plus the MTP modules (their block, projection and a second output head)."""
    counts = _counts(config)
    attn_per_layer = 6 * config.n_heads * (config.qk_nope_head_dim + config.qk_rope_head_dim
                                           + config.v_head_dim) * seq_len / 2
    flops = 6 * (counts["activated"] - counts["embedding"]) + attn_per_layer * config.n_layers
    if include_mtp and config.n_mtp_modules:
        flops += 6 * (counts["mtp_activated"] + counts["head"] * config.n_mtp_modules)
        flops += attn_per_layer * config.n_mtp_modules
    return float(flops)
