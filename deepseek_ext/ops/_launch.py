"""Tensor -> raw launcher arguments, and launcher errors -> Python exceptions."""
from __future__ import annotations

import torch

from deepseek_ext._backend import kernel_module

DTYPE_CODE = {torch.bfloat16: 0, torch.float32: 1, torch.float8_e4m3fn: 2}  # dx::DType


def stream_handle_of(device: torch.device) -> int:
    """The current stream of a CUDA device; 0 for the emulator (CPU tensors), whose launches run in order.
    The raw handle, read without building a torch.cuda.Stream (as torch.compile's generated code reads it)."""
    if device.type != "cuda":
        return 0
    return torch._C._cuda_getCurrentRawStream(torch.cuda.current_device() if device.index is None else device.index)


def stream_handle(t: torch.Tensor) -> int:
    return stream_handle_of(t.device)


def call(name: str, *args, device: torch.device) -> None:
    """Runs launcher `name` of the module serving `device` (the CUDA extension, or the emulator
    for CPU tensors) with `device` current; raises RuntimeError on a launch error."""
    launcher = getattr(kernel_module(device), name)
    if device.type == "cuda" and device.index not in (None, torch.cuda.current_device()):
        with torch.cuda.device(device):  # the launch goes to the current device, the stream to the tensor's
            error = launcher(*args)
    else:
        error = launcher(*args)
    if error:
        raise RuntimeError(f"deepseek_ext kernel {name} failed: {error}")
