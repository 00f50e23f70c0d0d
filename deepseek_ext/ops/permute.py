"""Grouped-layout glue ops (dx.gemm.permute_to_grouped / unpermute_from_grouped): validation,
then CUDA kernels or the reference (deepseek_ext/reference/permute.py defines the layout).

permute_to_grouped's row count depends on the routing, so on the GPU it reads the per-expert
counts back to the host once (one sync, like torch.nonzero); under torch.compile its outputs
have a data-dependent first dim. unpermute_from_grouped never syncs (CUDA-graph capturable): on
the kernel path the kernel checks inverse_map's values where it reads them.
"""
from __future__ import annotations

import functools

import torch

from deepseek_ext._backend import kernel_module, uses_kernels
from deepseek_ext.ops import _launch
from deepseek_ext.ops._checks import (INT32_MAX, aligned_ptr, check_aligned, check_contiguous, check_multiple,
                                      check_same_device, check_shape, check_size_bound, check_tensor)
from deepseek_ext.ops._eager import EagerOp, contiguous_tensor_key, tensor_key, value_key
from deepseek_ext.ops.gemm import _check_index_range, _check_m_major_scales, _may_sync
from deepseek_ext.reference import permute as ref
from deepseek_ext.reference.quant import FP8_DTYPE, GROUP, ceil_div, empty_m_major_scales

_X_DTYPES = (torch.bfloat16, FP8_DTYPE)
_Y_DTYPES = (torch.bfloat16, torch.float32)
_INDEX_DTYPES = (torch.int64, torch.int32)
_VECTOR_BYTES = 16  # the kernels move rows in 16-byte vectors
# The size bounds shared by the kernel and the reference paths (checked before either runs):
# num_experts (the reference keeps per-expert counts; far beyond any MoE) and alignment, then
# the grouped rows (int32 row indices in m_indices / inverse_map) once the routing is known.
MAX_EXPERTS = 2**20
MAX_ALIGNMENT = INT32_MAX


def _check_int(value, name: str, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")


def _check_grouped_rows(rows: int, alignment: int) -> None:
    check_size_bound(rows, f"permute_to_grouped's output rows (each expert's tokens padded to alignment={alignment})")


def _reference_rows(topk_idx: torch.Tensor, alignment: int) -> int:
    """The grouped rows of the routing, from the experts present only (O(T*k), whatever num_experts)."""
    flat = topk_idx.reshape(-1)
    counts = torch.unique(flat[flat >= 0], return_counts=True)[1].tolist()
    return sum(ceil_div(c, alignment) * alignment for c in counts)


def _check_row_bytes(t: torch.Tensor, name: str) -> None:
    check_multiple(t.shape[1] * t.element_size(), _VECTOR_BYTES, f"{name}.shape[1] * element size (bytes)")


# --- permute_to_grouped ----------------------------------------------------------------------

def _row_outputs(x: torch.Tensor, rows, scale_cols: int):
    """The outputs with one row per grouped row: data, M-major scales, m_indices."""
    return (x.new_empty((rows, x.shape[1])), empty_m_major_scales((), rows, scale_cols, x.device),
            x.new_empty((rows,), dtype=torch.int32))


def _raise_bad_experts(topk_idx: torch.Tensor, num_experts: int) -> None:
    raise ValueError(f"topk_idx values must be in [-1, {num_experts - 1}], got min {int(topk_idx.min())} "
                     f"and max {int(topk_idx.max())}")


def _permute_kernels(x, x_scales, topk_idx, num_experts: int, alignment: int):
    num_tokens, topk = topk_idx.shape
    pairs = topk_idx.numel()
    idx = topk_idx.long().contiguous()
    counts = torch.zeros(num_experts + 1, dtype=torch.int32, device=x.device)
    chunks = ceil_div(pairs, kernel_module(x.device).PERMUTE_CHUNK_PAIRS)
    chunk_counts = torch.empty(chunks * num_experts, dtype=torch.int32, device=x.device)  # the kernels' scratch
    inverse_map = torch.empty((num_tokens, topk), dtype=torch.int32, device=x.device)
    _launch.call("count_experts", idx.data_ptr(), pairs, num_experts, counts.data_ptr(), chunk_counts.data_ptr(),
                 inverse_map.data_ptr(), device=x.device)
    per_expert = counts.tolist()  # the one sync: the output size depends on the routing
    if per_expert[-1]:
        _raise_bad_experts(topk_idx, num_experts)
    rows = sum(ceil_div(c, alignment) * alignment for c in per_expert[:-1])
    _check_grouped_rows(rows, alignment)
    scale_cols = 0 if x_scales is None else x_scales.shape[1]
    out, out_scales, m_indices = _row_outputs(x, rows, scale_cols)
    row_token = torch.empty(rows, dtype=torch.int32, device=x.device)
    _launch.call("grouped_layout", idx.data_ptr(), pairs, topk, counts.data_ptr(), chunk_counts.data_ptr(),
                 num_experts, alignment, row_token.data_ptr(), m_indices.data_ptr(), inverse_map.data_ptr(),
                 device=x.device)
    _launch.call("permute_rows", x.data_ptr(), x.shape[1] * x.element_size(),
                 0 if x_scales is None else x_scales.data_ptr(), 0 if x_scales is None else x_scales.stride(1),
                 scale_cols, row_token.data_ptr(), rows, out.data_ptr(), out_scales.data_ptr(),
                 out_scales.stride(1), device=x.device)
    return out, out_scales, m_indices, inverse_map


def _check_permute(x, x_scales, topk_idx, num_experts, alignment) -> None:
    check_tensor(x, "x", _X_DTYPES, dim=2)
    check_contiguous(x, "x")
    _check_row_bytes(x, "x")
    num_tokens, hidden = x.shape
    if x.dtype == FP8_DTYPE:
        if x_scales is None:
            raise ValueError("x_scales is required when x is float8_e4m3fn")
        _check_m_major_scales(x_scales, "x_scales", (num_tokens, ceil_div(hidden, GROUP)))
    elif x_scales is not None:
        raise ValueError(f"x_scales must be None when x is {str(x.dtype).removeprefix('torch.')}")
    check_tensor(topk_idx, "topk_idx", _INDEX_DTYPES, dim=2)
    if topk_idx.shape[0] != num_tokens:
        raise ValueError(f"topk_idx.shape[0] must equal x.shape[0]={num_tokens}, got {topk_idx.shape[0]}")
    _check_int(num_experts, "num_experts", 1, MAX_EXPERTS)
    _check_int(alignment, "alignment", 1, MAX_ALIGNMENT)
    check_same_device("x", x, topk_idx=topk_idx, **({} if x_scales is None else {"x_scales": x_scales}))


def _permute(x: torch.Tensor, x_scales: torch.Tensor | None, topk_idx: torch.Tensor, num_experts: int,
             alignment: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The implementation; without x_scales, the returned scales have 0 columns."""
    check_aligned(x, "x")
    if (uses_kernels(x) and topk_idx.numel() and x.shape[1]
            and num_experts <= kernel_module(x.device).PERMUTE_MAX_EXPERTS):  # beyond: the kernels' shared memory
        return _permute_kernels(x, x_scales, topk_idx, num_experts, alignment)
    _check_index_range(topk_idx, "topk_idx", -1, num_experts - 1, may_sync=True)
    _check_grouped_rows(_reference_rows(topk_idx, alignment), alignment)
    out, out_scales, m_indices, inverse_map = ref.permute_to_grouped(x, x_scales, topk_idx, num_experts, alignment)
    if out_scales is None:
        out_scales = empty_m_major_scales((), out.shape[0], 0, x.device)
    return out, out_scales, m_indices, inverse_map


@torch.library.custom_op("deepseek_ext::permute_to_grouped", mutates_args=())
def _permute_to_grouped(x: torch.Tensor, x_scales: torch.Tensor, topk_idx: torch.Tensor, num_experts: int,
                        alignment: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_scales with 0 columns stands for "no scales" (custom ops return tensors only)."""
    return _permute(x, x_scales if x_scales.shape[1] else None, topk_idx, num_experts, alignment)


@_permute_to_grouped.register_fake
def _(x, x_scales, topk_idx, num_experts, alignment):
    rows = torch.library.get_ctx().new_dynamic_size()
    return (*_row_outputs(x, rows, x_scales.shape[1]), topk_idx.new_empty(topk_idx.shape, dtype=torch.int32))


def _dispatch_permute(x, x_scales, topk_idx, num_experts, alignment):
    if x_scales is None:
        x_scales = empty_m_major_scales((), x.shape[0], 0, x.device)  # the op's "no scales"
    return torch.ops.deepseek_ext.permute_to_grouped(x, x_scales, topk_idx, num_experts, alignment)


def _plan_permute(x, x_scales, topk_idx, num_experts, alignment):
    """The rows depend on the routing's values, not the signature: the run is the implementation."""
    return _permute


_PERMUTE = EagerOp(_check_permute,
                   lambda x, x_scales, topk_idx, num_experts, alignment: (
                       tensor_key(x), None if x_scales is None else tensor_key(x_scales), tensor_key(topk_idx),
                       value_key(num_experts),
                       value_key(alignment)),
                   _plan_permute, _dispatch_permute)


def permute_to_grouped(x: torch.Tensor, x_scales: torch.Tensor | None, topk_idx: torch.Tensor, num_experts: int,
                       alignment: int = 128):
    """Routed tokens -> the expert-contiguous padded layout of m_grouped_fp8_gemm_nt_contiguous.

    x [T, H] bf16 (x_scales None) or e4m3 with x_scales [T, ceil(H/128)] M-major (from
    dx.quant.per_token_cast_to_fp8); H * element size a multiple of 16 bytes. topk_idx [T, k]
    int64/int32 expert ids in [-1, num_experts) (-1: no expert). Returns (x_rows [rows, H],
    x_rows_scales [rows, ceil(H/128)] M-major or None, m_indices [rows] int32 (-1 on padding),
    inverse_map [T, k] int32 (row of each (token, slot), -1 where the slot is -1)): experts
    ascending, tokens ascending within an expert, each expert's segment padded with zero rows
    and zero scales to a multiple of `alignment`; the same rows as dx.ep dispatch with
    expert_alignment=alignment on a single rank. Syncs once on the GPU (rows depend on routing).
    """
    out, out_scales, m_indices, inverse_map = _PERMUTE(x, x_scales, topk_idx, num_experts, alignment)
    return out, (out_scales if x_scales is not None else None), m_indices, inverse_map


# --- unpermute_from_grouped ------------------------------------------------------------------

def _check_unpermute(y, inverse_map, topk_weights) -> None:
    check_tensor(y, "y", _Y_DTYPES, dim=2)
    check_contiguous(y, "y")
    check_multiple(y.shape[1], 8, "y.shape[1] (H)")
    check_tensor(inverse_map, "inverse_map", (torch.int32,), dim=2)
    check_contiguous(inverse_map, "inverse_map")
    check_tensor(topk_weights, "topk_weights", (torch.float32,), dim=2)
    check_shape(topk_weights, "topk_weights", tuple(inverse_map.shape))
    check_contiguous(topk_weights, "topk_weights")
    check_same_device("y", y, inverse_map=inverse_map, topk_weights=topk_weights)


def _reference_unpermute(y, inverse_map, topk_weights, *, may_sync: bool) -> torch.Tensor:
    check_aligned(y, "y")
    _check_index_range(inverse_map, "inverse_map", -1, y.shape[0] - 1, may_sync)
    return ref.unpermute_from_grouped(y, inverse_map, topk_weights)


def _plan_unpermute(y: torch.Tensor, inverse_map: torch.Tensor, topk_weights: torch.Tensor, may_sync: bool = True):
    if not uses_kernels(y):
        return functools.partial(_reference_unpermute, may_sync=may_sync)
    # The kernel checks inverse_map's values as it reads them: the host reads none.
    (rows, hidden), (tokens, topk), device = y.shape, inverse_map.shape, y.device
    y_code, launch = _launch.DTYPE_CODE[y.dtype], _launch.launcher("unpermute", device)
    alloc_out = _launch.allocator((tokens, hidden), (hidden, 1), torch.bfloat16, device)

    def run(y, inverse_map, topk_weights):
        py = aligned_ptr(y, "y")
        out = alloc_out()
        launch(py, y_code, rows, inverse_map.data_ptr(), topk_weights.data_ptr(), tokens, topk, hidden, out.data_ptr())
        return out
    return run


def _unpermute(y: torch.Tensor, inverse_map: torch.Tensor, topk_weights: torch.Tensor,
               may_sync: bool) -> torch.Tensor:
    return _plan_unpermute(y, inverse_map, topk_weights, may_sync)(y, inverse_map, topk_weights)


@torch.library.custom_op("deepseek_ext::unpermute_from_grouped", _unpermute, mutates_args=()).register_fake
def _(y, inverse_map, topk_weights, may_sync):
    return y.new_empty((inverse_map.shape[0], y.shape[1]), dtype=torch.bfloat16)


_UNPERMUTE = EagerOp(_check_unpermute,
                     lambda y, inverse_map, topk_weights: (
                         contiguous_tensor_key(y), contiguous_tensor_key(inverse_map),
                         contiguous_tensor_key(topk_weights)),
                     _plan_unpermute,
                     lambda *args: torch.ops.deepseek_ext.unpermute_from_grouped(*args, _may_sync()))


def unpermute_from_grouped(y: torch.Tensor, inverse_map: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """Grouped rows back to tokens: out[t] = sum over slots j (in order, fp32, each product
    rounded before it is added) of y[inverse_map[t, j]] * topk_weights[t, j], slots with -1
    skipped, cast to bf16 once. y [rows, H] bf16/fp32 contiguous (H a multiple of 8);
    inverse_map [T, k] int32 from permute_to_grouped; topk_weights [T, k] fp32. Returns [T, H] bf16.
    An inverse_map value outside [-1, rows) raises: checked by the host on the reference, by the
    kernel where it reads it (failing the launch as the grouped GEMMs do for a bad m_indices).
    """
    return _UNPERMUTE(y, inverse_map, topk_weights)
