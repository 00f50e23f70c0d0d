"""dx.quant: FP8 quantization with DeepSeek's fine-grained (1x128, 128x128) scaling."""
from deepseek_ext.ops.quant import per_token_cast_to_fp8

__all__ = ["per_token_cast_to_fp8"]
