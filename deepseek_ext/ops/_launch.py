"""Tensor -> raw launcher arguments, and launcher errors -> Python exceptions."""
from __future__ import annotations

import torch

from deepseek_ext._backend import kernel_module

DTYPE_CODE = {torch.bfloat16: 0, torch.float32: 1, torch.float8_e4m3fn: 2}  # dx::DType


def stream_handle_of(device: torch.device) -> int:
    """The current stream of a CUDA device; 0 for the emulator (CPU tensors), whose launches run in order."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def stream_handle(t: torch.Tensor) -> int:
    return stream_handle_of(t.device)


def call(name: str, *args, device: torch.device) -> None:
    """Runs launcher `name` of the module serving `device` (the CUDA extension, or the emulator
    for CPU tensors) with `device` current; raises RuntimeError on a launch error."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # the launch goes to the current device, the stream to the tensor's
            error = getattr(kernel_module(device), name)(*args)
    else:
        error = getattr(kernel_module(device), name)(*args)
    if error:
        raise RuntimeError(f"deepseek_ext kernel {name} failed: {error}")
