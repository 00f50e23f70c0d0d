"""Which implementation runs: the compiled CUDA kernels, their host emulation, or the
pure-PyTorch reference."""
from __future__ import annotations

import functools
import os

import torch

try:
    from deepseek_ext import _C
except ImportError:  # built without nvcc, or DEEPSEEK_EXT_CUDA=0
    _C = None
try:
    from deepseek_ext import _emu
except ImportError:  # built without the CUDA headers, or DEEPSEEK_EXT_EMULATE=0
    _emu = None

_BACKEND_ENV = "DEEPSEEK_EXT_BACKEND"
_BACKEND_CHOICES = ("auto", "reference", "cuda", "emulate")
# Every op call reads the env var, so it is read from os.environ's own store: os.environ.get
# re-encodes the key and decodes the value on each call (~1 us). Plain get where that store is absent.
_ENVIRON_STORE = getattr(os.environ, "_data", None)
_BACKEND_ENV_KEY = os.environ.encodekey(_BACKEND_ENV) if _ENVIRON_STORE is not None else None
EMULATED_SMS = 132  # the emulator models an H200's SM count (csrc/emu/scheduler.h kSmCount)
_num_sms: int | None = None


def has_cuda_ext() -> bool:
    """True when the compiled extension ``deepseek_ext._C`` is importable."""
    return _C is not None


def has_emulation() -> bool:
    """True when the host build of the kernels, ``deepseek_ext._emu``, is importable."""
    return _emu is not None


# DEEPSEEK_EXT_BACKEND as set, unparsed (the ops key their plans by it): one C call.
requested_backend_raw = (functools.partial(os.environ.get, _BACKEND_ENV) if _ENVIRON_STORE is None
                         else functools.partial(_ENVIRON_STORE.get, _BACKEND_ENV_KEY))


def _requested_backend() -> str:
    return _parse_backend(requested_backend_raw())


@functools.cache
def _parse_backend(raw: str | bytes | None) -> str:
    value = os.fsdecode(raw or "").strip().lower() or "auto"
    if value not in _BACKEND_CHOICES:
        raise ValueError(f"{_BACKEND_ENV} must be one of {_BACKEND_CHOICES}, got {value!r}")
    return value


@functools.cache
def _is_sm90(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) == (9, 0)


def _kernels_available(device: torch.device) -> bool:
    return _C is not None and device.type == "cuda" and _is_sm90(device.index or 0)


def uses_kernels(tensor: torch.Tensor) -> bool:
    """Whether an op on ``tensor`` runs our kernels (the CUDA build, or the emulator for CPU
    tensors under DEEPSEEK_EXT_BACKEND=emulate); else the reference implementation runs."""
    requested = _requested_backend()
    if requested == "reference":
        return False
    if requested == "emulate" and tensor.is_cpu:
        if _emu is None:
            raise RuntimeError(f"{_BACKEND_ENV}=emulate but deepseek_ext._emu was not built "
                               "(it needs a C++ compiler and the CUDA toolkit headers at install)")
        return True
    available = _kernels_available(tensor.device)
    if requested == "cuda" and not available:
        raise RuntimeError(
            f"{_BACKEND_ENV}=cuda but the kernels cannot run on {tensor.device} "
            f"(extension built: {has_cuda_ext()}; they need an sm_90 GPU)")
    return available


def kernel_module(device: torch.device):
    """The launcher module for tensors on `device`: the emulator for CPU tensors, else _C."""
    return _emu if device.type == "cpu" else _C


def backend() -> str:
    """``"emulate"`` under DEEPSEEK_EXT_BACKEND=emulate; ``"cuda"`` when ops on the current CUDA
    device run our kernels; else ``"reference"``. Consistent with the ops: where the env var
    forces a backend that cannot run here (``cuda`` without an sm_90 GPU and the extension,
    ``emulate`` without ``deepseek_ext._emu``), this raises the RuntimeError the ops raise."""
    requested = _requested_backend()
    if requested == "reference":
        return "reference"
    if requested == "emulate":
        uses_kernels(torch.empty(0))  # raises when _emu was not built
        return "emulate"
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if requested == "cuda":
        uses_kernels(torch.empty(0, device=device))  # raises when the kernels cannot run there
        return "cuda"
    return "cuda" if device.type == "cuda" and _kernels_available(device) else "reference"


@functools.cache
def _cuda_available() -> bool:
    return torch.cuda.is_available()


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_sm_count() -> int:
    if not _cuda_available():
        return EMULATED_SMS if _requested_backend() == "emulate" and _emu is not None else 0
    return _sm_count(torch.cuda.current_device())


def set_num_sms(num_sms: int) -> None:
    """Limit the SMs the GEMMs may use; the rest stay free for communication kernels."""
    if isinstance(num_sms, bool) or not isinstance(num_sms, int):
        raise TypeError(f"num_sms must be an int, got {type(num_sms).__name__}")
    available = _device_sm_count()
    if num_sms < 1 or (available and num_sms > available):
        limit = available if available else "the device's SM count"
        raise ValueError(f"num_sms must be in [1, {limit}], got {num_sms}")
    global _num_sms
    _num_sms = num_sms


def sm_count_of(device: torch.device) -> int:
    """Every SM the kernels for tensors on `device` may use: the GPU's, or the emulated H200's."""
    if device.type == "cpu":
        return EMULATED_SMS
    return _sm_count(torch.cuda.current_device() if device.index is None else device.index)


def get_num_sms() -> int:
    """SMs the GEMMs may use: the value given to set_num_sms, else every SM (0 without a GPU,
    the emulated H200's 132 under the emulator)."""
    return _num_sms if _num_sms is not None else _device_sm_count()
