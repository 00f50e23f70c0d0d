"""DeepSeekV3Config: the architecture hyper-parameters and the presets tiny / small / v3_671b."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from deepseek_ext.nn.mla import MLAConfig
from deepseek_ext.nn.rope import RopeConfig


@dataclass
class DeepSeekV3Config:
    vocab_size: int = 256
    hidden_size: int = 128
    intermediate_size: int = 256  # dense FFN of the first n_dense_layers
    moe_intermediate_size: int = 64  # one routed (and one shared) expert
    n_layers: int = 3
    n_dense_layers: int = 1
    n_heads: int = 4
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    n_activated_experts: int = 2  # top-k
    n_expert_groups: int = 4
    n_limited_groups: int = 2
    route_scale: float = 1.0
    q_lora_rank: int = 64
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    rope_factor: float = 1.0
    original_seq_len: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    n_mtp_modules: int = 1
    mtp_lambda: float = 0.3
    bias_update_speed: float = 1e-3  # gamma
    seq_balance_alpha: float = 1e-4
    norm_eps: float = 1e-6
    fp8: bool = True
    dtype: torch.dtype = torch.bfloat16  # activations (residual stream)

    @classmethod
    def preset(cls, name: str, **overrides) -> "DeepSeekV3Config":
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    def mla_config(self) -> MLAConfig:
        rope = RopeConfig(self.qk_rope_head_dim, self.rope_theta, self.rope_factor, self.original_seq_len,
                          self.beta_fast, self.beta_slow, self.mscale)
        return MLAConfig(self.hidden_size, self.n_heads, self.q_lora_rank, self.kv_lora_rank,
                         self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim, self.max_seq_len,
                         rope, self.fp8, self.norm_eps)


PRESETS = {
    # trains on a 2-core CPU in minutes; every matmul dim a multiple of 16 (FP8-friendly)
    "tiny": DeepSeekV3Config(),
    # one GPU: ~0.5B parameters in total
    "small": DeepSeekV3Config(vocab_size=16384, hidden_size=1024, intermediate_size=2816,
                              moe_intermediate_size=512, n_layers=8, n_dense_layers=1, n_heads=8,
                              n_routed_experts=32, n_activated_experts=4, n_expert_groups=4, n_limited_groups=2,
                              q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
                              v_head_dim=64, max_seq_len=1024),
    # the published DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3)
    "v3_671b": DeepSeekV3Config(vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                                moe_intermediate_size=2048, n_layers=61, n_dense_layers=3, n_heads=128,
                                n_routed_experts=256, n_shared_experts=1, n_activated_experts=8,
                                n_expert_groups=8, n_limited_groups=4, route_scale=2.5, q_lora_rank=1536,
                                kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                                max_seq_len=163840, rope_factor=40.0, original_seq_len=4096, n_mtp_modules=1),
}
