"""FP8 quantization ops (dx.quant): validation, then CUDA kernel or reference."""
from __future__ import annotations

import torch

from deepseek_ext._backend import uses_kernels
from deepseek_ext.ops import _launch
from deepseek_ext.ops._checks import check_aligned, check_multiple, check_tensor, row_stride
from deepseek_ext.reference import quant as ref
from deepseek_ext.reference.quant import GROUP, FP8_DTYPE, ceil_div, empty_m_major_scales

_FLOAT_INPUTS = (torch.bfloat16, torch.float32)
_K_MULTIPLE = 16  # 16-byte FP8 rows: what the GEMM's TMA and the kernels' vector accesses need


def _check_activation(x: torch.Tensor, name: str) -> int:
    check_tensor(x, name, _FLOAT_INPUTS, min_dim=2)
    check_multiple(x.shape[-1], _K_MULTIPLE, f"{name}.shape[-1]")
    return row_stride(x, name)


def _per_token_outputs(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.empty((*x.shape[:-1], k), dtype=FP8_DTYPE, device=x.device)
    s = empty_m_major_scales(tuple(x.shape[:-2]), x.shape[-2], ceil_div(k, GROUP), x.device)
    return q, s


# --- per_token_cast_to_fp8 -------------------------------------------------------------------

@torch.library.custom_op("deepseek_ext::per_token_cast_to_fp8", mutates_args=())
def _per_token_cast_to_fp8(x: torch.Tensor, pow2_scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    check_aligned(x, "x")
    if not uses_kernels(x):
        return ref.per_token_cast_to_fp8(x, pow2_scale)
    k = x.shape[-1]
    q, s = _per_token_outputs(x, k)
    rows = x.numel() // k if k else 0
    _launch.call("per_token_cast_to_fp8", x.data_ptr(), _launch.DTYPE_CODE[x.dtype], row_stride(x, "x"),
                 q.data_ptr(), s.data_ptr(), rows, k, x.shape[-2], s.stride(-1), pow2_scale,
                 _launch.stream_handle(x))
    return q, s


@_per_token_cast_to_fp8.register_fake
def _(x, pow2_scale):
    return _per_token_outputs(x, x.shape[-1])


def per_token_cast_to_fp8(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """1x128 FP8 cast along the last dim. x [..., M, K] bf16/fp32, K a multiple of 16.

    Returns q [..., K] float8_e4m3fn and s [..., ceil(K/128)] fp32 (x ~= q * s), s stored
    M-major (s.stride(-2) == 1, M padded to 4 in storage) as the FP8 GEMM reads it.
    """
    _check_activation(x, "x")
    return torch.ops.deepseek_ext.per_token_cast_to_fp8(x, pow2_scale)
