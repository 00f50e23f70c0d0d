"""Tensor -> raw launcher arguments, and launcher errors -> Python exceptions."""
from __future__ import annotations

import torch

from deepseek_ext._backend import _C

DTYPE_CODE = {torch.bfloat16: 0, torch.float32: 1, torch.float8_e4m3fn: 2}  # dx::DType


def stream_handle(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def call(name: str, *args) -> None:
    """Runs launcher `name` of the extension; raises RuntimeError on a CUDA error."""
    error = getattr(_C, name)(*args)
    if error:
        raise RuntimeError(f"deepseek_ext kernel {name} failed: {error}")
