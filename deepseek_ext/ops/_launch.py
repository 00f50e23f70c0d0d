"""Kernel launchers bound to a device: each call passes the device's current stream, runs with the
device current and turns a launcher's error string into a RuntimeError."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from deepseek_ext import _backend

DTYPE_CODE = {torch.bfloat16: 0, torch.float32: 1, torch.float8_e4m3fn: 2}  # dx::DType


@functools.cache
def _empty(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(0, dtype=dtype, device=device)


def allocator(shape, strides, dtype: torch.dtype, device: torch.device) -> Callable[[], torch.Tensor]:
    """alloc() -> a new uninitialized tensor of this layout: one C call (new_empty_strided of an
    empty tensor of dtype on device), cheaper than torch.empty_strided's keyword parsing."""
    return functools.partial(_empty(dtype, device).new_empty_strided, tuple(shape), tuple(strides))


def _failed(name: str, error: str) -> None:
    raise RuntimeError(f"deepseek_ext kernel {name} failed: {error}")


def launcher(name: str, device: torch.device) -> Callable[..., None]:
    """Launcher `name` of the module serving `device` now (the emulator for CPU tensors, else the
    CUDA extension), called with its arguments but the stream. The ops' plans are keyed by the
    modules in place, so a plan never outlives the module its launchers were taken from."""
    if device.type != "cuda":  # the emulator runs its launches in order: stream 0
        emulated = getattr(_backend._emu, name)

        def launch(*args) -> None:
            error = emulated(*args, 0)
            if error:
                _failed(name, error)
        return launch
    compiled = getattr(_backend._C, name)
    current_device = torch._C._cuda_getDevice  # torch.cuda.current_device less its lazy-init check: a tensor is there

    def launch_on_gpu(*args) -> None:
        current = current_device()
        index = current if device.index is None else device.index
        # The raw handle, read without building a torch.cuda.Stream (as torch.compile's generated code reads it).
        stream = torch._C._cuda_getCurrentRawStream(index)
        if index == current:
            error = compiled(*args, stream)
        else:
            with torch.cuda.device(index):  # the launch goes to the current device, the stream to the tensor's
                error = compiled(*args, stream)
        if error:
            _failed(name, error)
    return launch_on_gpu


def call(name: str, *args, device: torch.device) -> None:
    """One launch of `name` on `device` (see launcher)."""
    launcher(name, device)(*args)
