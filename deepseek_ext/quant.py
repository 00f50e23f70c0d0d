"""dx.quant: FP8 quantization with DeepSeek's fine-grained (1x128, 128x128) scaling."""
from deepseek_ext.ops.quant import (dequantize, per_block_cast_to_fp8, per_token_cast_to_fp8,
                                    per_token_cast_to_fp8_with_transpose, swiglu_cast_to_fp8,
                                    transpose_block_fp8)

__all__ = ["dequantize", "per_block_cast_to_fp8", "per_token_cast_to_fp8",
           "per_token_cast_to_fp8_with_transpose", "swiglu_cast_to_fp8", "transpose_block_fp8"]
