"""Input validation shared by the ops: every error names the argument and what was expected."""
from __future__ import annotations

from collections.abc import Iterable

import torch

ALIGN_BYTES = 16


def check_tensor(t, name: str, dtypes: Iterable[torch.dtype], min_dim: int = 1,
                 dim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).removeprefix('torch.')}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(t.shape)}")


def check_same_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on {reference.device}")


def check_multiple(value: int, multiple: int, what: str) -> None:
    if value % multiple:
        raise ValueError(f"{what} must be a multiple of {multiple}, got {value}")


def check_shape(t: torch.Tensor, name: str, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def is_empty(t: torch.Tensor) -> bool:
    """t has no elements; False while a size is symbolic (torch.compile's data-dependent sizes),
    where the regular stride checks run."""
    return all(isinstance(d, int) for d in t.shape) and t.numel() == 0


def row_stride(t: torch.Tensor, name: str) -> int:
    """Row stride (elements) of t viewed as [rows, t.shape[-1]] without a copy; raises when the
    last dim is strided, the leading dims do not collapse, or rows are not 16-byte aligned.
    An empty tensor has no rows to read: its strides are not checked (numpy-made or broadcast
    empties carry zero strides) and its row stride is reported as the last dim."""
    if is_empty(t):
        return t.shape[-1] if t.dim() >= 1 else 0
    if t.dim() >= 1 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous along its last dim (stride 1), "
                         f"got strides {t.stride()}; call .contiguous() first")
    ld = t.stride(-2) if t.dim() >= 2 else t.shape[-1]
    for i in range(t.dim() - 2):
        if t.shape[i] > 1 and t.stride(i) != t.stride(i + 1) * t.shape[i + 1]:
            raise ValueError(f"{name}'s leading dims must be collapsible into rows, got shape "
                             f"{tuple(t.shape)} and strides {t.stride()}; call .contiguous() first")
    rows = t.numel() // t.shape[-1] if t.shape[-1] else 0  # leading dims flattened: [B, 1, K] has B rows
    if rows > 1 and (ld * t.element_size()) % ALIGN_BYTES:
        raise ValueError(f"{name}'s rows must start 16 bytes apart, got row stride {ld} "
                         f"elements of {t.element_size()} bytes")
    return ld


def check_aligned(t: torch.Tensor, name: str) -> None:
    """Start address check; runs inside the op implementations (real tensors, also under compile)."""
    if t.numel() and t.data_ptr() % ALIGN_BYTES:
        raise ValueError(f"{name} must start at a 16-byte aligned address")


def aligned_ptr(t: torch.Tensor, name: str) -> int:
    """t.data_ptr(), checked as check_aligned checks it (the launch paths' one test per tensor)."""
    ptr = t.data_ptr()
    if ptr % ALIGN_BYTES:
        check_aligned(t, name)
    return ptr


def check_aligned_all(**tensors: torch.Tensor | None) -> None:
    """check_aligned for each named tensor that is not None."""
    for name, t in tensors.items():
        if t is not None:
            check_aligned(t, name)


def check_contiguous(t: torch.Tensor, name: str) -> None:
    """Contiguity check; skipped for empty tensors (nothing is read, whatever their strides)."""
    if not t.is_contiguous() and not is_empty(t):
        raise ValueError(f"{name} must be contiguous, got shape {tuple(t.shape)} strides {t.stride()}")


def check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> None:
    """value an int (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


INT32_MAX = 2**31 - 1  # the kernels index rows, experts and groups with int32


def check_size_bound(value: int, what: str, limit: int = INT32_MAX) -> None:
    """The size bound shared by the kernel and reference paths (checked before either runs)."""
    if value > limit:
        raise ValueError(f"{what} must be <= {limit} (int32 indices), got {value}")
