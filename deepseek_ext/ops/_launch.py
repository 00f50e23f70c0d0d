"""Kernel launchers bound to a device: each call passes the device's current stream, runs with the
device current and turns a launcher's error string into a RuntimeError."""
from __future__ import annotations

from collections.abc import Callable

import torch

from deepseek_ext import _backend

DTYPE_CODE = {torch.bfloat16: 0, torch.float32: 1, torch.float8_e4m3fn: 2}  # dx::DType


def _failed(name: str, error: str) -> None:
    raise RuntimeError(f"deepseek_ext kernel {name} failed: {error}")


def launcher(name: str, device: torch.device) -> Callable[..., None]:
    """Launcher `name` of the module serving `device` (the emulator for CPU tensors, else the CUDA
    extension), called with its arguments but the stream. The module is looked up on each call,
    so a call always reaches the module deepseek_ext._backend holds then."""
    if device.type != "cuda":  # the emulator runs its launches in order: stream 0
        def launch(*args) -> None:
            error = getattr(_backend._emu, name)(*args, 0)
            if error:
                _failed(name, error)
        return launch

    def launch_on_gpu(*args) -> None:
        current = torch.cuda.current_device()
        index = current if device.index is None else device.index
        # The raw handle, read without building a torch.cuda.Stream (as torch.compile's generated code reads it).
        stream = torch._C._cuda_getCurrentRawStream(index)
        if index == current:
            error = getattr(_backend._C, name)(*args, stream)
        else:
            with torch.cuda.device(index):  # the launch goes to the current device, the stream to the tensor's
                error = getattr(_backend._C, name)(*args, stream)
        if error:
            _failed(name, error)
    return launch_on_gpu


def call(name: str, *args, device: torch.device) -> None:
    """One launch of `name` on `device` (see launcher)."""
    launcher(name, device)(*args)
