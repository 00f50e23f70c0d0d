"""FP8 quantization ops (dx.quant): validation, then CUDA kernel or reference."""
from __future__ import annotations

import torch

from deepseek_ext._backend import uses_kernels
from deepseek_ext.ops import _launch
from deepseek_ext.ops._checks import (aligned_ptr, check_aligned, check_bool, check_contiguous, check_multiple,
                                      check_same_device, check_shape, check_tensor, row_stride)
from deepseek_ext.ops._eager import EagerOp, contiguous_tensor_key, tensor_key, value_key
from deepseek_ext.reference import quant as ref
from deepseek_ext.reference.quant import GROUP, FP8_DTYPE, ceil_div, contiguous_strides, m_major_scales_layout

_FLOAT_INPUTS = (torch.bfloat16, torch.float32)
_DEQUANT_OUTPUTS = (torch.float32, torch.bfloat16)
_K_MULTIPLE = 16  # 16-byte FP8 rows: what the GEMM's TMA and the kernels' vector accesses need
_BLOCKS = ((1, GROUP), (GROUP, GROUP))


def _check_activation(x: torch.Tensor, name: str, min_dim: int = 2) -> None:
    check_tensor(x, name, _FLOAT_INPUTS, min_dim=min_dim)
    check_multiple(x.shape[-1], _K_MULTIPLE, f"{name}.shape[-1]")
    row_stride(x, name)


def _row_ld(x: torch.Tensor) -> int:
    """The row stride of an input that passed _check_activation (what row_stride returned there)."""
    return x.stride(-2) if x.numel() else x.shape[-1]


def _rows(t: torch.Tensor) -> int:
    """Rows of t viewed as [rows, t.shape[-1]]."""
    return t.numel() // t.shape[-1] if t.shape[-1] else 0


def _cast_signature(x, pow2_scale) -> tuple:
    # A bool's value without a value_key call: any other pow2_scale is neither and fails validation.
    return tensor_key(x), pow2_scale is True, pow2_scale is False


def _reference(fn, name: str):
    """The reference run of an op: its first argument's start address checked as the kernels' plans check it."""
    def run(t, *args):
        check_aligned(t, name)
        return fn(t, *args)
    return run


# An op's outputs are described by layouts, (shape, strides, dtype) each: the fake (meta) outputs
# under torch.compile are made from them, and so are the allocators of the kernel plans.

def _contiguous(shape: tuple, dtype: torch.dtype) -> tuple:
    shape = tuple(shape)
    return shape, contiguous_strides(shape), dtype


def _outputs(layouts, device: torch.device) -> tuple:
    return tuple(torch.empty_strided(shape, strides, dtype=dtype, device=device) for shape, strides, dtype in layouts)


def _allocators(layouts, device: torch.device) -> tuple:
    return tuple(_launch.allocator(shape, strides, dtype, device) for shape, strides, dtype in layouts)


def _per_token_layouts(x: torch.Tensor, k: int) -> tuple:
    """q [..., k] e4m3 and its M-major 1x128 scales."""
    shape = tuple(x.shape)
    return (_contiguous((*shape[:-1], k), FP8_DTYPE),
            (*m_major_scales_layout(shape[:-2], shape[-2], ceil_div(k, GROUP)), torch.float32))


# --- per_token_cast_to_fp8 -------------------------------------------------------------------

def _check_per_token(x, pow2_scale) -> None:
    _check_activation(x, "x")
    check_bool(pow2_scale, "pow2_scale")


def _plan_per_token(x: torch.Tensor, pow2_scale: bool):
    if not uses_kernels(x):
        return _reference(ref.per_token_cast_to_fp8, "x")
    return _plan_row_cast("per_token_cast_to_fp8", x, "x", x.shape[-1])


def _plan_cast(name: str, t: torch.Tensor, arg_name: str, layouts: tuple, *sizes: int):
    """run(t, pow2_scale) -> (q, s) of a cast launcher `name` taking (t, its dtype, its row stride,
    q, s, *sizes, pow2_scale); t is the argument arg_name, its outputs are of `layouts`."""
    device = t.device
    (alloc_q, alloc_s), t_code, ld = _allocators(layouts, device), _launch.DTYPE_CODE[t.dtype], _row_ld(t)
    launch = _launch.launcher(name, device)

    def run(t, pow2_scale):
        pt = aligned_ptr(t, arg_name)
        q, s = alloc_q(), alloc_s()
        launch(pt, t_code, ld, q.data_ptr(), s.data_ptr(), *sizes, pow2_scale)
        return q, s
    return run


def _plan_row_cast(name: str, x: torch.Tensor, arg_name: str, k: int):
    """The 1x128 casts (per token, swiglu): k outputs for each of x's rows."""
    layouts = _per_token_layouts(x, k)
    return _plan_cast(name, x, arg_name, layouts, _rows(x), k, x.shape[-2], layouts[1][1][-1])


def _per_token_cast_to_fp8(x: torch.Tensor, pow2_scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _plan_per_token(x, pow2_scale)(x, pow2_scale)


@torch.library.custom_op("deepseek_ext::per_token_cast_to_fp8", _per_token_cast_to_fp8,
                         mutates_args=()).register_fake
def _(x, pow2_scale):
    return _outputs(_per_token_layouts(x, x.shape[-1]), x.device)


_PER_TOKEN = EagerOp(_check_per_token, _cast_signature, _plan_per_token, torch.ops.deepseek_ext.per_token_cast_to_fp8)


def per_token_cast_to_fp8(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """1x128 FP8 cast along the last dim. x [..., M, K] bf16/fp32, K a multiple of 16.

    Returns q [..., K] float8_e4m3fn and s [..., ceil(K/128)] fp32 (x ~= q * s), s stored
    M-major (s.stride(-2) == 1, M padded to 4 in storage) as the FP8 GEMM reads it.
    """
    return _PER_TOKEN(x, pow2_scale)


# --- swiglu_cast_to_fp8 ----------------------------------------------------------------------

def _check_swiglu(gate_up, pow2_scale) -> None:
    _check_activation(gate_up, "gate_up")
    check_bool(pow2_scale, "pow2_scale")
    check_multiple(gate_up.shape[-1], 2 * _K_MULTIPLE, "gate_up.shape[-1] (2 x intermediate size)")


def _plan_swiglu(gate_up: torch.Tensor, pow2_scale: bool):
    if not uses_kernels(gate_up):
        return _reference(ref.swiglu_cast_to_fp8, "gate_up")
    return _plan_row_cast("swiglu_cast_to_fp8", gate_up, "gate_up", gate_up.shape[-1] // 2)


def _swiglu_cast_to_fp8(gate_up: torch.Tensor, pow2_scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _plan_swiglu(gate_up, pow2_scale)(gate_up, pow2_scale)


@torch.library.custom_op("deepseek_ext::swiglu_cast_to_fp8", _swiglu_cast_to_fp8, mutates_args=()).register_fake
def _(gate_up, pow2_scale):
    return _outputs(_per_token_layouts(gate_up, gate_up.shape[-1] // 2), gate_up.device)


_SWIGLU = EagerOp(_check_swiglu, _cast_signature, _plan_swiglu, torch.ops.deepseek_ext.swiglu_cast_to_fp8)


def swiglu_cast_to_fp8(gate_up: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(g) * u in fp32 fused with the 1x128 cast. gate_up [..., M, 2I] = cat([g, u], -1),
    bf16/fp32, I a multiple of 16. Returns q [..., M, I] and M-major s [..., M, ceil(I/128)]."""
    return _SWIGLU(gate_up, pow2_scale)


# --- per_block_cast_to_fp8 -------------------------------------------------------------------

def _per_block_layouts(w: torch.Tensor) -> tuple:
    n, k = w.shape[-2:]
    return _contiguous(w.shape, FP8_DTYPE), _contiguous((*w.shape[:-2], ceil_div(n, GROUP), ceil_div(k, GROUP)),
                                                         torch.float32)


def _check_per_block(w, pow2_scale) -> None:
    _check_activation(w, "w")
    check_bool(pow2_scale, "pow2_scale")


def _plan_per_block(w: torch.Tensor, pow2_scale: bool):
    if not uses_kernels(w):
        return _reference(ref.per_block_cast_to_fp8, "w")
    return _plan_cast("per_block_cast_to_fp8", w, "w", _per_block_layouts(w), _rows(w), *w.shape[-2:])


def _per_block_cast_to_fp8(w: torch.Tensor, pow2_scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _plan_per_block(w, pow2_scale)(w, pow2_scale)


@torch.library.custom_op("deepseek_ext::per_block_cast_to_fp8", _per_block_cast_to_fp8,
                         mutates_args=()).register_fake
def _(w, pow2_scale):
    return _outputs(_per_block_layouts(w), w.device)


_PER_BLOCK = EagerOp(_check_per_block, _cast_signature, _plan_per_block, torch.ops.deepseek_ext.per_block_cast_to_fp8)


def per_block_cast_to_fp8(w: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """128x128 block FP8 cast. w [..., N, K] bf16/fp32, K a multiple of 16. Returns q [..., N, K]
    float8_e4m3fn and s [..., ceil(N/128), ceil(K/128)] fp32, contiguous (w ~= q * s per block)."""
    return _PER_BLOCK(w, pow2_scale)


# --- per_token_cast_to_fp8_with_transpose ----------------------------------------------------

def _with_transpose_layouts(x: torch.Tensor) -> tuple:
    m, k = x.shape
    return (*_per_token_layouts(x, k), _contiguous((k, m), FP8_DTYPE),
            (*m_major_scales_layout((), k, ceil_div(m, GROUP)), torch.float32))


def _check_with_transpose(x, pow2_scale) -> None:
    _check_activation(x, "x")
    check_bool(pow2_scale, "pow2_scale")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    check_multiple(x.shape[0], _K_MULTIPLE, "x.shape[0] (M: rows of the transposed copy)")


def _plan_with_transpose(x: torch.Tensor, pow2_scale: bool):
    if not uses_kernels(x):
        return _reference(ref.per_token_cast_to_fp8_with_transpose, "x")
    layouts, device = _with_transpose_layouts(x), x.device
    alloc_q, alloc_s, alloc_qt, alloc_st = _allocators(layouts, device)
    ld_s, ld_st = layouts[1][1][-1], layouts[3][1][-1]
    x_code, ld, (m, k) = _launch.DTYPE_CODE[x.dtype], _row_ld(x), x.shape
    launch = _launch.launcher("cast_with_transpose", device)

    def run(x, pow2_scale):
        px = aligned_ptr(x, "x")
        q, s, qt, st = alloc_q(), alloc_s(), alloc_qt(), alloc_st()
        launch(px, x_code, ld, q.data_ptr(), s.data_ptr(), qt.data_ptr(), st.data_ptr(), m, k, ld_s, ld_st, pow2_scale)
        return q, s, qt, st
    return run


def _per_token_cast_to_fp8_with_transpose(
        x: torch.Tensor, pow2_scale: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _plan_with_transpose(x, pow2_scale)(x, pow2_scale)


@torch.library.custom_op("deepseek_ext::per_token_cast_to_fp8_with_transpose", _per_token_cast_to_fp8_with_transpose,
                         mutates_args=()).register_fake
def _(x, pow2_scale):
    return _outputs(_with_transpose_layouts(x), x.device)


_WITH_TRANSPOSE = EagerOp(_check_with_transpose, _cast_signature, _plan_with_transpose,
                          torch.ops.deepseek_ext.per_token_cast_to_fp8_with_transpose)


def per_token_cast_to_fp8_with_transpose(x: torch.Tensor, pow2_scale: bool = False):
    """One read of x [M, K] (bf16/fp32, M and K multiples of 16) gives (q, s) = 1x128 along K and
    (qt [K, M], st [K, ceil(M/128)]) = x^T quantized 1x128 along M; s and st M-major."""
    return _WITH_TRANSPOSE(x, pow2_scale)


# --- transpose_block_fp8 ---------------------------------------------------------------------

def _transposed_layouts(q: torch.Tensor, s: torch.Tensor) -> tuple:
    return (_contiguous((*q.shape[:-2], q.shape[-1], q.shape[-2]), q.dtype),
            _contiguous((*s.shape[:-2], s.shape[-1], s.shape[-2]), s.dtype))


def _check_transpose_block(q, s) -> None:
    check_tensor(q, "q", (FP8_DTYPE,), min_dim=2)
    check_tensor(s, "s", (torch.float32,), dim=q.dim())
    n, k = q.shape[-2:]
    check_multiple(n, _K_MULTIPLE, "q.shape[-2]")
    check_multiple(k, _K_MULTIPLE, "q.shape[-1]")
    check_shape(s, "s", (*q.shape[:-2], ceil_div(n, GROUP), ceil_div(k, GROUP)))
    check_contiguous(q, "q")
    check_contiguous(s, "s")
    check_same_device("q", q, s=s)


def _plan_transpose_block(q: torch.Tensor, s: torch.Tensor):
    if not uses_kernels(q):
        return _reference(ref.transpose_block_fp8, "q")
    (n, k), device = q.shape[-2:], q.device
    alloc_qt, alloc_st = _allocators(_transposed_layouts(q, s), device)
    batch = q.numel() // (n * k) if n * k else 0
    launch = _launch.launcher("transpose_block_fp8", device)

    def run(q, s):
        pq = aligned_ptr(q, "q")
        qt, st = alloc_qt(), alloc_st()
        launch(pq, s.data_ptr(), qt.data_ptr(), st.data_ptr(), batch, n, k)
        return qt, st
    return run


def _transpose_block_fp8(q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _plan_transpose_block(q, s)(q, s)


@torch.library.custom_op("deepseek_ext::transpose_block_fp8", _transpose_block_fp8, mutates_args=()).register_fake
def _(q, s):
    return _outputs(_transposed_layouts(q, s), q.device)


_TRANSPOSE_BLOCK = EagerOp(_check_transpose_block, lambda q, s: (contiguous_tensor_key(q), contiguous_tensor_key(s)),
                           _plan_transpose_block,
                           torch.ops.deepseek_ext.transpose_block_fp8)


def transpose_block_fp8(q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact transpose of a 128x128-scaled FP8 matrix: q [..., N, K] float8_e4m3fn (contiguous,
    N and K multiples of 16), s [..., ceil(N/128), ceil(K/128)] fp32 (contiguous) ->
    (q^T [..., K, N], s^T [..., ceil(K/128), ceil(N/128)]), both contiguous."""
    return _TRANSPOSE_BLOCK(q, s)


# --- dequantize ------------------------------------------------------------------------------

def _scale_batch_stride(s: torch.Tensor) -> int:
    """Stride between the [rows, groups] scale matrices of s's collapsed leading dims."""
    if s.numel() == 0:
        return 0
    for i in range(s.dim() - 3):
        if s.shape[i] > 1 and s.stride(i) != s.stride(i + 1) * s.shape[i + 1]:
            raise ValueError(f"s's leading dims must be collapsible, got shape {tuple(s.shape)} "
                             f"and strides {s.stride()}")
    return s.stride(-3) if s.dim() > 2 else 0


def _block(q: torch.Tensor, s: torch.Tensor, block) -> tuple[int, int]:
    """The scale block: `block`, or when None the one s's shape implies."""
    if block is None:
        return _BLOCKS[0] if s.shape[-2] == q.shape[-2] else _BLOCKS[1]
    return block


def _check_dequantize(q, s, block, out_dtype) -> None:
    check_tensor(q, "q", (FP8_DTYPE,), min_dim=2)
    check_tensor(s, "s", (torch.float32,), dim=q.dim())
    check_multiple(q.shape[-1], _K_MULTIPLE, "q.shape[-1]")
    check_contiguous(q, "q")
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in _DEQUANT_OUTPUTS:
        raise TypeError(f"out_dtype must be torch.float32 or torch.bfloat16, got {out_dtype}")
    block = _block(q, s, block)
    if not isinstance(block, (tuple, list)):
        raise TypeError(f"block must be a tuple (1, 128) or (128, 128), got {type(block).__name__}")
    block = tuple(block)
    if block not in _BLOCKS:
        raise ValueError(f"block must be (1, 128) or (128, 128), got {block}")
    m, k = q.shape[-2:]
    check_shape(s, "s", (*q.shape[:-2], ceil_div(m, block[0]), ceil_div(k, GROUP)))
    check_same_device("q", q, s=s)
    _scale_batch_stride(s)


def _plan_dequantize(q: torch.Tensor, s: torch.Tensor, block_rows: int, out_dtype: torch.dtype):
    """run(q, s, block, out_dtype) -> q * s for this signature's block_rows (the third argument, a
    block or block_rows, is fixed by the signature and not read again)."""
    if not uses_kernels(q):
        reference = _reference(ref.dequantize, "q")
        return lambda q, s, _, out_dtype: reference(q, s, (block_rows, GROUP), out_dtype)
    device = q.device
    alloc_out, = _allocators((_contiguous(q.shape, out_dtype),), device)
    out_code, rows, (m, k) = _launch.DTYPE_CODE[out_dtype], _rows(q), q.shape[-2:]
    scale_strides = (_scale_batch_stride(s), s.stride(-2), s.stride(-1))
    launch = _launch.launcher("dequantize", device)

    def run(q, s, _, out_dtype):
        pq = aligned_ptr(q, "q")
        out = alloc_out()
        launch(pq, s.data_ptr(), out.data_ptr(), out_code, rows, k, m, block_rows, *scale_strides)
        return out
    return run


def _dequantize(q: torch.Tensor, s: torch.Tensor, block_rows: int, out_dtype: torch.dtype) -> torch.Tensor:
    return _plan_dequantize(q, s, block_rows, out_dtype)(q, s, block_rows, out_dtype)


@torch.library.custom_op("deepseek_ext::dequantize", _dequantize, mutates_args=()).register_fake
def _(q, s, block_rows, out_dtype):
    return torch.empty(q.shape, dtype=out_dtype, device=q.device)


def _with_block_rows(fn):
    """fn(q, s, block_rows, out_dtype) called with dequantize's arguments (q, s, block, out_dtype)."""
    return lambda q, s, block, out_dtype: fn(q, s, _block(q, s, block)[0], out_dtype)


_DEQUANTIZE = EagerOp(_check_dequantize,
                      lambda q, s, block, out_dtype: (contiguous_tensor_key(q), tensor_key(s), value_key(block),
                                                      out_dtype),
                      _with_block_rows(_plan_dequantize),
                      _with_block_rows(torch.ops.deepseek_ext.dequantize))


def dequantize(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int] | None = None,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * s with one scale per `block` ((1, 128) or (128, 128)) of q's last two dims.

    q [..., M, K] float8_e4m3fn (contiguous, K a multiple of 16); s fp32 [..., M, ceil(K/128)]
    for (1, 128) (any strides, e.g. the M-major scales of per_token_cast_to_fp8) or
    [..., ceil(M/128), ceil(K/128)] for (128, 128). block=None infers it from s.shape[-2].
    out_dtype: float32 or bfloat16.
    """
    return _DEQUANTIZE(q, s, block, out_dtype)
