"""dx.nn: the DeepSeek-V3 layers (FP8 linear, RMSNorm, SwiGLU, MoE gate and layer, MLA, MTP, CPU EMA)."""
from deepseek_ext.nn.block import Block
from deepseek_ext.nn.ema import CPUEMA
from deepseek_ext.nn.fp8_linear import FP8Linear, fp8_supported
from deepseek_ext.nn.gate import MoEGate, Routing
from deepseek_ext.nn.mla import MLA, LatentCache, MLAConfig
from deepseek_ext.nn.mlp import MLP
from deepseek_ext.nn.moe import DeepSeekMoE
from deepseek_ext.nn.mtp import MTP, MTPModule
from deepseek_ext.nn.norm import RMSNorm
from deepseek_ext.nn.rope import RopeConfig
from deepseek_ext.nn.swiglu import swiglu

__all__ = ["Block", "CPUEMA", "DeepSeekMoE", "FP8Linear", "LatentCache", "MLA", "MLAConfig", "MLP", "MTP",
           "MTPModule", "MoEGate", "RMSNorm", "RopeConfig", "Routing", "fp8_supported", "swiglu"]
