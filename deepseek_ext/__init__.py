"""deepseek_ext: the DeepSeek-V3 training-efficiency stack for PyTorch."""
from deepseek_ext._backend import backend, get_num_sms, has_cuda_ext, has_emulation, set_num_sms
from deepseek_ext import quant, reference
from deepseek_ext import gemm
from deepseek_ext import pipeline
from deepseek_ext import ep
from deepseek_ext import nn
from deepseek_ext import models

__version__ = "0.1.0"
__all__ = ["backend", "get_num_sms", "has_cuda_ext", "has_emulation", "set_num_sms", "quant", "reference", "gemm", "pipeline", "ep", "nn", "models"]
