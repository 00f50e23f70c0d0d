"""FP8 block-scaled GEMM ops (dx.gemm): validation, then CUDA kernel or reference.

Layouts the kernels read (checked here so the kernels never see anything else): a and b
contiguous, K-major, 16-byte aligned, K a multiple of 16; 1x128 scales (sa, and the per-row
kind of sb) M-major as dx.quant.per_token_cast_to_fp8 writes them; 128x128 scales contiguous.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional

import torch

from deepseek_ext._backend import uses_kernels
from deepseek_ext.ops import _gemm_kernels
from deepseek_ext.ops._checks import (check_aligned_all, check_contiguous, check_multiple, check_same_device,
                                      check_shape, check_tensor)
from deepseek_ext.ops._eager import EagerOp, contiguous_tensor_key, tensor_key, value_key
from deepseek_ext.reference import gemm as ref
from deepseek_ext.reference.gemm import M_ALIGNMENT
from deepseek_ext.reference.quant import FP8_DTYPE, GROUP, SCALE_ROW_ALIGN, ceil_div

_OUT_DTYPES = (torch.bfloat16, torch.float32)
_DIM_MULTIPLE = 16  # 16-byte FP8 rows for K; N in whole 16-wide MMA tiles


# --- validation ------------------------------------------------------------------------------

def _check_fp8_operand(t, name: str, dim: int) -> None:
    check_tensor(t, name, (FP8_DTYPE,), dim=dim)
    check_contiguous(t, name)
    check_multiple(t.shape[-1], _DIM_MULTIPLE, f"{name}.shape[-1] (K)")


def _check_same_k(a: torch.Tensor, b: torch.Tensor, what: str = "K") -> None:
    if b.shape[-1] != a.shape[-1]:
        raise ValueError(f"b.shape[-1] ({what}) must equal a.shape[-1]={a.shape[-1]}, got {b.shape[-1]}")


def _check_m_major_scales(s, name: str, expected: tuple[int, ...]) -> None:
    """1x128 scales in the layout per_token_cast_to_fp8 writes: stride(-2) == 1, columns 16 bytes
    apart and holding all rows; a 3-D tensor's groups one after another."""
    check_tensor(s, name, (torch.float32,), dim=len(expected))
    check_shape(s, name, expected)
    if s.numel() == 0:
        return
    rows, cols = s.shape[-2:]
    column_ok = s.stride(-1) % SCALE_ROW_ALIGN == 0 and s.stride(-1) >= rows
    rows_ok = rows == 1 or s.stride(-2) == 1
    groups_ok = s.dim() == 2 or s.shape[0] == 1 or s.stride(0) == cols * s.stride(-1)
    if not (column_ok and rows_ok and groups_ok):
        raise ValueError(
            f"{name} must be stored M-major ({name}.stride(-2) == 1, {name}.stride(-1) a multiple of "
            f"{SCALE_ROW_ALIGN} and >= {rows}), got strides {s.stride()}; produce the scales with "
            f"dx.quant.per_token_cast_to_fp8")


def _check_block_scales(s, name: str, expected: tuple[int, ...]) -> None:
    check_tensor(s, name, (torch.float32,), dim=len(expected))
    check_shape(s, name, expected)
    check_contiguous(s, name)


def _check_index_tensor(t, name: str, expected: tuple[int, ...]) -> None:
    check_tensor(t, name, (torch.int32,), dim=len(expected))
    check_shape(t, name, expected)
    check_contiguous(t, name)


def _check_out_dtype(out_dtype) -> None:
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be torch.bfloat16 or torch.float32, got {out_dtype}")


def _check_c(c, expected: tuple[int, ...]) -> None:
    if c is None:
        return
    check_tensor(c, "c", (torch.float32,), dim=len(expected))
    check_shape(c, "c", expected)
    check_contiguous(c, "c")


def _optional(**tensors: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if t is not None}


def _may_sync() -> bool:
    """Whether index-range checks on device tensors may sync: not while torch.compile traces
    (the decision is baked into the graph) and, in the op, not during CUDA-graph capture. The
    eager route never traces: its reference runs may sync; the dispatcher route passes this."""
    return not torch.compiler.is_compiling()


def _can_read(t: torch.Tensor, may_sync: bool) -> bool:
    """Whether a check may read t's values: always on the CPU; on a device only when allowed to
    sync and no CUDA graph is being captured."""
    return t.numel() > 0 and (t.device.type == "cpu" or (may_sync and not torch.cuda.is_current_stream_capturing()))


def _check_index_range(t: torch.Tensor, name: str, low: int, high: int, may_sync: bool) -> None:
    """Values of t in [low, high] (when _can_read)."""
    if not _can_read(t, may_sync):
        return
    lowest, highest = map(int, torch.aminmax(t))
    if lowest < low or highest > high:
        raise ValueError(f"{name} values must be in [{low}, {high}], got min {lowest} and max {highest}")


# --- fp8_gemm_nt -----------------------------------------------------------------------------

def _check_fp8_gemm_nt(a, sa, b, sb, out_dtype, c) -> None:
    _check_fp8_operand(a, "a", dim=2)
    _check_fp8_operand(b, "b", dim=2)
    _check_same_k(a, b)
    (m, k), n = a.shape, b.shape[0]
    check_multiple(n, _DIM_MULTIPLE, "b.shape[0] (N)")
    kb, nb = ceil_div(k, GROUP), ceil_div(n, GROUP)
    _check_m_major_scales(sa, "sa", (m, kb))
    check_tensor(sb, "sb", (torch.float32,), dim=2)
    if tuple(sb.shape) == (nb, kb):
        check_contiguous(sb, "sb")
    elif tuple(sb.shape) == (n, kb):
        _check_m_major_scales(sb, "sb", (n, kb))
    else:
        raise ValueError(f"sb must have shape {(nb, kb)} (128x128 scales) or {(n, kb)} (1x128 scales), "
                         f"got {tuple(sb.shape)}")
    _check_out_dtype(out_dtype)
    _check_c(c, (m, n))
    check_same_device("a", a, sa=sa, b=b, sb=sb, **_optional(c=c))


def _reference_fp8_gemm_nt(a, sa, b, sb, out_dtype, c) -> torch.Tensor:
    check_aligned_all(a=a, sa=sa, b=b, sb=sb, c=c)
    return ref.fp8_gemm_nt(a, sa, b, sb, out_dtype, c)


def _plan_fp8_gemm_nt(a, sa, b, sb, out_dtype, c):
    if uses_kernels(a) and a.numel() and b.numel():
        return _gemm_kernels.plan_fp8_gemm_nt(a, sa, b, sb, out_dtype, c)
    return _reference_fp8_gemm_nt


def _fp8_gemm_nt(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                 out_dtype: torch.dtype, c: Optional[torch.Tensor]) -> torch.Tensor:
    return _plan_fp8_gemm_nt(a, sa, b, sb, out_dtype, c)(a, sa, b, sb, out_dtype, c)


@torch.library.custom_op("deepseek_ext::fp8_gemm_nt", _fp8_gemm_nt, mutates_args=()).register_fake
def _(a, sa, b, sb, out_dtype, c):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


_FP8_GEMM_NT = EagerOp(
    _check_fp8_gemm_nt,
    lambda a, sa, b, sb, out_dtype, c: (contiguous_tensor_key(a), tensor_key(sa), contiguous_tensor_key(b),
                                        tensor_key(sb), out_dtype, None if c is None else tensor_key(c)),
    _plan_fp8_gemm_nt, torch.ops.deepseek_ext.fp8_gemm_nt)


def fp8_gemm_nt(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                out_dtype: torch.dtype = torch.bfloat16, c: torch.Tensor | None = None) -> torch.Tensor:
    """D = c + A @ B^T with FP8 operands, fp32 accumulation promoted per 128-wide K block.

    a [M, K] e4m3 with sa [M, ceil(K/128)] (1x128, M-major: from dx.quant.per_token_cast_to_fp8);
    b [N, K] e4m3 with sb [ceil(N/128), ceil(K/128)] (128x128 blocks: Fprop/Dgrad, contiguous) or
    sb [N, ceil(K/128)] (1x128 per row of b: Wgrad, M-major); c optional fp32 [M, N] added before
    the cast. N and K multiples of 16. Returns a new [M, N] tensor of out_dtype (bf16 or fp32).
    """
    return _FP8_GEMM_NT(a, sa, b, sb, out_dtype, c)


# --- grouped along M -------------------------------------------------------------------------

def _check_grouped_b(a: torch.Tensor, b, sb, groups: int | None = None) -> tuple[int, int]:
    """b [G, N, K] with 128x128 scales sb [G, ceil(N/128), ceil(K/128)]; returns (G, N)."""
    _check_fp8_operand(b, "b", dim=3)
    _check_same_k(a, b)
    g, n, k = b.shape
    if groups is not None and g != groups:
        raise ValueError(f"b.shape[0] (G) must equal a.shape[0]={groups}, got {g}")
    check_multiple(n, _DIM_MULTIPLE, "b.shape[1] (N)")
    _check_block_scales(sb, "sb", (g, ceil_div(n, GROUP), ceil_div(k, GROUP)))
    return g, n


def _check_block_groups(m_indices: torch.Tensor, may_sync: bool) -> None:
    """Every M_ALIGNMENT-row block holds one group's rows, then -1 (padding): each row is -1 or its
    block's first row's group, and no group row follows a -1 (when _can_read). The kernels check
    the same where they read the rows."""
    if not _can_read(m_indices, may_sync):
        return
    blocks = m_indices.view(-1, M_ALIGNMENT)
    mixed = (blocks != blocks[:, :1]) & (blocks != -1)
    mixed[:, 1:] |= (blocks[:, 1:] != -1) & (blocks[:, :-1] == -1)
    bad = mixed.any(dim=1).nonzero()
    if bad.numel():
        block = int(bad[0, 0])
        raise ValueError(f"m_indices must hold one group per {M_ALIGNMENT}-row block (its rows first, then -1 "
                         f"padding), got rows {block * M_ALIGNMENT}..{(block + 1) * M_ALIGNMENT - 1} with groups "
                         f"{sorted(set(blocks[block].tolist()))}")


def _check_m_grouped_contiguous(a, sa, b, sb, m_indices, out_dtype) -> None:
    _check_fp8_operand(a, "a", dim=2)
    m, k = a.shape
    check_multiple(m, M_ALIGNMENT, "a.shape[0] (M_total)")
    _check_grouped_b(a, b, sb)
    _check_m_major_scales(sa, "sa", (m, ceil_div(k, GROUP)))
    _check_index_tensor(m_indices, "m_indices", (m,))
    _check_out_dtype(out_dtype)
    check_same_device("a", a, sa=sa, b=b, sb=sb, m_indices=m_indices)


def _reference_m_grouped_contiguous(a, sa, b, sb, m_indices, out_dtype, *, may_sync: bool) -> torch.Tensor:
    check_aligned_all(a=a, sa=sa, b=b, sb=sb, m_indices=m_indices)
    _check_index_range(m_indices, "m_indices", -1, b.shape[0] - 1, may_sync)
    _check_block_groups(m_indices, may_sync)
    return ref.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, out_dtype)


def _plan_m_grouped_contiguous(a, sa, b, sb, m_indices, out_dtype, may_sync: bool = True):
    if uses_kernels(a) and a.numel() and b.numel():  # the kernel checks m_indices' values as it reads them
        return _gemm_kernels.plan_m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, out_dtype)
    return functools.partial(_reference_m_grouped_contiguous, may_sync=may_sync)


def _m_grouped_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                          m_indices: torch.Tensor, out_dtype: torch.dtype, may_sync: bool) -> torch.Tensor:
    return _plan_m_grouped_contiguous(a, sa, b, sb, m_indices, out_dtype, may_sync)(a, sa, b, sb, m_indices, out_dtype)


@torch.library.custom_op("deepseek_ext::m_grouped_fp8_gemm_nt_contiguous", _m_grouped_contiguous,
                         mutates_args=()).register_fake
def _(a, sa, b, sb, m_indices, out_dtype, may_sync):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


_M_GROUPED_CONTIGUOUS = EagerOp(_check_m_grouped_contiguous,
                                lambda a, sa, b, sb, m_indices, out_dtype: (
                                    contiguous_tensor_key(a), tensor_key(sa), contiguous_tensor_key(b),
                                    contiguous_tensor_key(sb), contiguous_tensor_key(m_indices), out_dtype),
                                _plan_m_grouped_contiguous,
                                lambda *args: torch.ops.deepseek_ext.m_grouped_fp8_gemm_nt_contiguous(
                                    *args, _may_sync()))


def m_grouped_fp8_gemm_nt_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                     m_indices: torch.Tensor,
                                     out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Row i of the output is a[i] @ b[m_indices[i]]^T (MoE experts, tokens contiguous along M).

    a [M_total, K] e4m3, M_total a multiple of M_ALIGNMENT (each expert's segment padded to it),
    sa [M_total, ceil(K/128)] M-major; b [G, N, K] e4m3 with sb [G, ceil(N/128), ceil(K/128)];
    m_indices [M_total] int32, the group of each row, -1 on padding rows (their output is zero);
    each 128-row block holds one group's rows and then padding (as dx.gemm.permute_to_grouped and
    dx.ep dispatch with expert_alignment=128 produce). The kernel writes every output row itself
    (zeros for padding), so no pre-zeroing pass is needed.

    Bad m_indices values raise: the reference checks them on the host; the kernel checks each
    where it reads it, without a host sync, and fails the launch naming the row (under the
    emulator a RuntimeError; on the GPU a device-side trap, which ends the CUDA context as a
    PyTorch device-side assert does).
    """
    return _M_GROUPED_CONTIGUOUS(a, sa, b, sb, m_indices, out_dtype)


def _check_m_grouped_masked(a, sa, b, sb, masked_m, expected_m, out_dtype) -> None:
    _check_fp8_operand(a, "a", dim=3)
    g, m_max, k = a.shape
    _check_grouped_b(a, b, sb, groups=g)
    _check_m_major_scales(sa, "sa", (g, m_max, ceil_div(k, GROUP)))
    _check_index_tensor(masked_m, "masked_m", (g,))
    if isinstance(expected_m, bool) or not isinstance(expected_m, int):
        raise TypeError(f"expected_m must be an int, got {type(expected_m).__name__}")
    if expected_m <= 0:
        raise ValueError(f"expected_m must be > 0, got {expected_m}")
    _check_out_dtype(out_dtype)
    check_same_device("a", a, sa=sa, b=b, sb=sb, masked_m=masked_m)


def _reference_m_grouped_masked(a, sa, b, sb, masked_m, expected_m, out_dtype, *, may_sync: bool) -> torch.Tensor:
    check_aligned_all(a=a, sa=sa, b=b, sb=sb, masked_m=masked_m)
    _check_index_range(masked_m, "masked_m", 0, a.shape[1], may_sync)
    return ref.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, expected_m, out_dtype)


def _plan_m_grouped_masked(a, sa, b, sb, masked_m, expected_m, out_dtype, may_sync: bool = True):
    if uses_kernels(a) and a.numel() and b.numel():  # the kernel checks masked_m's values as it reads them
        return _gemm_kernels.plan_m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, expected_m, out_dtype)
    return functools.partial(_reference_m_grouped_masked, may_sync=may_sync)


def _m_grouped_masked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                      masked_m: torch.Tensor, expected_m: int, out_dtype: torch.dtype,
                      may_sync: bool) -> torch.Tensor:
    return _plan_m_grouped_masked(a, sa, b, sb, masked_m, expected_m, out_dtype, may_sync)(
        a, sa, b, sb, masked_m, expected_m, out_dtype)


@torch.library.custom_op("deepseek_ext::m_grouped_fp8_gemm_nt_masked", _m_grouped_masked,
                         mutates_args=()).register_fake
def _(a, sa, b, sb, masked_m, expected_m, out_dtype, may_sync):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=out_dtype)


_M_GROUPED_MASKED = EagerOp(_check_m_grouped_masked,
                            lambda a, sa, b, sb, masked_m, expected_m, out_dtype: (
                                contiguous_tensor_key(a), tensor_key(sa), contiguous_tensor_key(b),
                                contiguous_tensor_key(sb), contiguous_tensor_key(masked_m),
                                type(expected_m), expected_m, out_dtype),
                            _plan_m_grouped_masked,
                            lambda *args: torch.ops.deepseek_ext.m_grouped_fp8_gemm_nt_masked(*args, _may_sync()))


def m_grouped_fp8_gemm_nt_masked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                 masked_m: torch.Tensor, expected_m: int,
                                 out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """out[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g]^T; rows beyond masked_m[g] are unspecified:
    never written (DeepGEMM's contract), so read only the first masked_m[g] rows of each group.

    a [G, Mmax, K] e4m3 with sa [G, Mmax, ceil(K/128)] M-major; b [G, N, K] e4m3 with sb
    [G, ceil(N/128), ceil(K/128)]; masked_m [G] int32 in [0, Mmax] on a's device (the host never
    reads it on the kernel path, so CUDA graphs can replay it: the kernel checks each value as it
    reads it, failing the launch as m_grouped_fp8_gemm_nt_contiguous does for a bad m_indices);
    expected_m > 0 a hint for the tile choice. The kernel visits only the ceil(masked_m[g] /
    BLOCK_M) row blocks of each group.
    """
    return _M_GROUPED_MASKED(a, sa, b, sb, masked_m, expected_m, out_dtype)


# --- grouped along K -------------------------------------------------------------------------

def _check_group_sizes(group_sizes, total: int) -> None:
    if not isinstance(group_sizes, Sequence) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in group_sizes):
        raise TypeError("group_sizes must be a list of ints or a 1-D integer tensor")
    for g, size in enumerate(group_sizes):
        if size < 0 or size % GROUP:
            raise ValueError(f"group_sizes[{g}] must be a non-negative multiple of {GROUP}, got {size}")
    if sum(group_sizes) != total:
        raise ValueError(f"group_sizes must sum to a.shape[1] (T)={total}, got {sum(group_sizes)}")


def _check_k_grouped(a, sa, b, sb, group_sizes, c) -> None:
    _check_fp8_operand(a, "a", dim=2)
    _check_fp8_operand(b, "b", dim=2)
    _check_same_k(a, b, what="T")
    (n, t), k = a.shape, b.shape[0]
    check_multiple(n, _DIM_MULTIPLE, "a.shape[0] (N)")
    check_multiple(k, _DIM_MULTIPLE, "b.shape[0] (K)")
    _check_group_sizes(group_sizes, t)
    _check_m_major_scales(sa, "sa", (n, t // GROUP))
    _check_m_major_scales(sb, "sb", (k, t // GROUP))
    _check_c(c, (len(group_sizes), n, k))
    check_same_device("a", a, sa=sa, b=b, sb=sb, **_optional(c=c))


def _reference_k_grouped(a, sa, b, sb, group_sizes, c) -> torch.Tensor:
    check_aligned_all(a=a, sa=sa, b=b, sb=sb, c=c)
    return ref.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, group_sizes, c)


def _plan_k_grouped(a, sa, b, sb, group_sizes, c):
    if uses_kernels(a) and a.numel() and b.numel() and group_sizes:
        return _gemm_kernels.plan_k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, ref.group_offsets(group_sizes), c)
    return _reference_k_grouped


def _k_grouped_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                          group_sizes: list[int], c: Optional[torch.Tensor]) -> torch.Tensor:
    return _plan_k_grouped(a, sa, b, sb, group_sizes, c)(a, sa, b, sb, group_sizes, c)


@torch.library.custom_op("deepseek_ext::k_grouped_fp8_gemm_tn_contiguous", _k_grouped_contiguous,
                         mutates_args=()).register_fake
def _(a, sa, b, sb, group_sizes, c):
    return a.new_empty((len(group_sizes), a.shape[0], b.shape[0]), dtype=torch.float32)


_K_GROUPED = EagerOp(
    _check_k_grouped,
    lambda a, sa, b, sb, group_sizes, c: (contiguous_tensor_key(a), tensor_key(sa), contiguous_tensor_key(b),
                                          tensor_key(sb), value_key(group_sizes), None if c is None else tensor_key(c)),
    _plan_k_grouped, torch.ops.deepseek_ext.k_grouped_fp8_gemm_tn_contiguous)


def k_grouped_fp8_gemm_tn_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                     group_sizes: Sequence[int] | torch.Tensor,
                                     c: torch.Tensor | None = None) -> torch.Tensor:
    """MoE weight gradients: out[g] = c[g] + a[:, seg_g] @ b[:, seg_g]^T, fp32 [G, N, K].

    a [N, T] and b [K, T] e4m3 with sa [N, T/128] and sb [K, T/128] (1x128 along T, M-major): the
    transposed outputs of dx.quant.per_token_cast_to_fp8_with_transpose for dY [T, N] and X [T, K].
    group_sizes: the tokens of each expert, consecutive along T, each a multiple of 128, summing
    to T (a list; a tensor is read on the host, which torch.compile cannot trace; on the GPU the
    group offsets are copied to the device each call and read there by the kernel). c optional
    fp32 [G, N, K] accumulated into. N and K multiples of 16; an empty group gives zeros (or c[g]).
    """
    if isinstance(group_sizes, torch.Tensor):
        check_tensor(group_sizes, "group_sizes", (torch.int32, torch.int64), dim=1)
        group_sizes = group_sizes.tolist()
    return _K_GROUPED(a, sa, b, sb, group_sizes, c)
