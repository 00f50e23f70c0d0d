"""dx.quant kernels vs the reference run on the same tensors: bitwise (q bytes, scales, the
scale layout), NaN-poisoned groups compared by their NaN masks. Each test runs on the GPU and under
the host emulation of the kernels (kernel_device "cpu"), where shapes too large to emulate skip."""
from __future__ import annotations

import math

import pytest
import torch

import deepseek_ext as dx
from conftest import emulation_too_large
from deepseek_ext.reference import quant as ref

pytestmark = pytest.mark.gpu
E4M3 = torch.float8_e4m3fn


def random_input(shape, dtype, device: str, nan_row: int | None = None, inf_row: int | None = None) -> torch.Tensor:
    """Normal values, a different magnitude per row (huge and tiny included), optional NaN/Inf."""
    x = torch.randn(shape, device=device)
    rows = x.view(-1, shape[-1])
    magnitudes = torch.tensor([1.0, 1e30, 1e-30, 3e-6, 250.0, 1e-3, 7.0], device=device)
    rows *= magnitudes[torch.arange(rows.shape[0], device=device) % len(magnitudes)].unsqueeze(-1)
    if nan_row is not None:
        rows[nan_row, shape[-1] // 2] = float("nan")
    if inf_row is not None:
        rows[inf_row, 3] = float("inf")
    return x.to(dtype)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same strides on every dim of size > 1 (a size-1 dim's stride addresses
    nothing: the reference's q for one row is a view of a 128-wide padded row, stride(0) == 128)."""
    return a.shape == b.shape and all(
        sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride(), strict=True) if n > 1)


def assert_fp8_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == E4M3 and same_layout(a, b)
    nan_a, nan_b = a.float().isnan(), b.float().isnan()
    assert torch.equal(nan_a, nan_b)
    assert torch.equal(a.view(torch.uint8)[~nan_a], b.view(torch.uint8)[~nan_b])


def assert_scales_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.float32 and same_layout(a, b)
    assert torch.equal(a.isnan(), b.isnan())
    assert torch.equal(a[~a.isnan()], b[~b.isnan()])


def assert_outputs_equal(got, expected) -> None:
    for g, e in zip(got, expected, strict=True):
        (assert_fp8_equal if g.dtype == E4M3 else assert_scales_equal)(g, e)


def test_kernels_are_what_runs(kernel_device):
    assert dx.backend() == ("cuda" if kernel_device == "cuda" else "emulate")


PER_TOKEN_SHAPES = ((1, 16), (7, 144), (200, 4112), (3, 77, 400), (4096, 7168), (16384, 7168))


@pytest.mark.parametrize("shape", PER_TOKEN_SHAPES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
def test_per_token_cast_bitwise(kernel_device, shape, dtype, pow2):
    emulation_too_large(kernel_device, math.prod(shape))  # work: elements cast
    rows = math.prod(shape[:-1])
    x = random_input(shape, dtype, kernel_device, nan_row=rows // 2, inf_row=rows - 1)
    assert_outputs_equal(dx.quant.per_token_cast_to_fp8(x, pow2), ref.per_token_cast_to_fp8(x, pow2))


def test_per_token_cast_row_strided_input(kernel_device):
    x = random_input((300, 1024), torch.bfloat16, kernel_device)[:, 256:784]
    assert_outputs_equal(dx.quant.per_token_cast_to_fp8(x), ref.per_token_cast_to_fp8(x))


# Edges of the per-token mapping (csrc/include/deepseek_ext/quant/per_token_cast.cuh): slots of 8
# lanes hold 4 bf16 / 2 fp32 groups (SwiGLU: half), 2^k slots make a row's pass (32 >> k rows per
# CTA), gridDim.y passes cover a row (16384 / 8192 / 4096 columns).
TOKEN_MAPPING_SHAPES = (
    (37, 256),      # 1 or 2 slots per row: 32 or 16 rows per CTA, the last CTA mostly past the end
    (45, 1040),     # 9 groups, the last partial: slots partly or wholly past the row's end
    (3, 37, 400),   # batches of 37 rows across CTAs of 32, 16 or 8 rows
    (2, 5, 2064),   # 17 groups: 8 to 32 slots per row (4 to 1 rows per CTA), batches of 5 rows
    (3, 16784),     # 132 groups: 2 to 5 passes, the last one partial
    (2, 3, 33296),  # 261 groups: 3 to 9 passes, batches of 3 rows
)


@pytest.mark.parametrize("shape", TOKEN_MAPPING_SHAPES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
def test_per_token_and_swiglu_mapping_edges(kernel_device, shape, dtype, pow2):
    emulation_too_large(kernel_device, 2 * math.prod(shape))
    rows = math.prod(shape[:-1])
    x = random_input(shape, dtype, kernel_device, nan_row=rows // 2, inf_row=rows - 1)
    assert_outputs_equal(dx.quant.per_token_cast_to_fp8(x, pow2), ref.per_token_cast_to_fp8(x, pow2))
    gate_up = (torch.randn((*shape[:-1], 2 * shape[-1]), device=kernel_device) * 4).to(dtype)
    gate_up.view(rows, -1)[rows // 2, shape[-1] - 1] = float("nan")  # g of the last column
    gate_up.view(rows, -1)[rows - 1, -1] = float("inf")  # u of the last column
    assert_outputs_equal(dx.quant.swiglu_cast_to_fp8(gate_up, pow2), ref.swiglu_cast_to_fp8(gate_up, pow2))


def test_swiglu_cast_row_strided_input(kernel_device):
    gate_up = (torch.randn((45, 2 * 400 + 64), device=kernel_device) * 4).to(torch.bfloat16)[:, 32:832]
    assert_outputs_equal(dx.quant.swiglu_cast_to_fp8(gate_up), ref.swiglu_cast_to_fp8(gate_up))


@pytest.mark.parametrize("shape", ((1, 16), (200, 272), (130, 128), (3, 300, 400), (4096, 7168), (7168, 7168)))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
def test_per_block_cast_bitwise(kernel_device, shape, dtype, pow2):
    emulation_too_large(kernel_device, math.prod(shape))
    w = random_input(shape, dtype, kernel_device, nan_row=min(5, shape[-2] - 1))
    assert_outputs_equal(dx.quant.per_block_cast_to_fp8(w, pow2), ref.per_block_cast_to_fp8(w, pow2))


# Edges of the persistent per-block cast (csrc/include/deepseek_ext/quant/per_block_cast.cuh): CTA b
# takes tiles b, b + grid, ... with grid = SMs x 4 (bf16) or x 2 (fp32), 528 / 264 on the emulated
# H200, so 1100 tiles make CTAs loop 2-5 times (the landing buffer's mbarrier parity wraps); batches
# of one row (strides of size-1 dims), partial tiles at the end of every batch, tile rows that do not
# divide the batch.
@pytest.mark.parametrize("shape", ((1100, 16, 16), (700, 1, 144), (300, 40, 144), (5, 130, 272)))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
def test_per_block_cast_persistent_edges(kernel_device, shape, dtype, pow2):
    rows = math.prod(shape[:-1])
    w = random_input(shape, dtype, kernel_device, nan_row=rows // 3, inf_row=rows - 1)
    assert_outputs_equal(dx.quant.per_block_cast_to_fp8(w, pow2), ref.per_block_cast_to_fp8(w, pow2))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
def test_per_block_cast_row_strided_batched_input(kernel_device, dtype):
    w = random_input((3, 300, 1024), dtype, kernel_device, nan_row=400)[:, :, 256:784]
    assert_outputs_equal(dx.quant.per_block_cast_to_fp8(w), ref.per_block_cast_to_fp8(w))


@pytest.mark.parametrize("shape", ((16, 16), (144, 272), (48, 400), (4096, 7168), (16384, 7168)))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
def test_cast_with_transpose_bitwise(kernel_device, shape, dtype, pow2):
    emulation_too_large(kernel_device, math.prod(shape))
    x = random_input(shape, dtype, kernel_device, nan_row=shape[0] - 3, inf_row=1)
    got = dx.quant.per_token_cast_to_fp8_with_transpose(x, pow2)
    assert_outputs_equal(got, ref.per_token_cast_to_fp8_with_transpose(x, pow2))
    assert got[3].stride(-2) == 1


def test_cast_with_transpose_row_strided_input(kernel_device):
    x = random_input((144, 1024), torch.bfloat16, kernel_device)[:, 128:400]
    assert_outputs_equal(dx.quant.per_token_cast_to_fp8_with_transpose(x),
                         ref.per_token_cast_to_fp8_with_transpose(x))


# The persistent walk of the cast with transpose (csrc/include/deepseek_ext/quant/cast_with_transpose.cuh):
# 6800 x 528 is 54 x 5 tiles, the last tile row (16 rows) and column (16 columns) partial, on
# 132 SMs x 2 = 264 CTAs (an H200, and the emulator). CTAs 0-5 take a second tile, three of them
# with the column wrapping to the next tile row; those tiles are partial, and their loads skip the
# out-of-bounds chunks, whose registers still hold the CTA's first tile: a NaN and an Inf planted
# there (in bounds in the first tile) must not reach the second tile's groups.
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
@pytest.mark.parametrize("row_strided", (False, True))
def test_cast_with_transpose_persistent_walk(kernel_device, dtype, pow2, row_strided):
    shape = (6800, 528)
    emulation_too_large(kernel_device, math.prod(shape))
    full = random_input((shape[0], 1024) if row_strided else shape, dtype, kernel_device, nan_row=6790, inf_row=6701)
    x = full[:, 256:256 + shape[1]] if row_strided else full
    x[20, 200] = float("nan")  # CTA 1: tile (0, 1); row 20 of tile (53, 0) is out of bounds
    x[5, 100] = float("inf")  # CTA 0: tile (0, 0); column 100 of tile (52, 4) is out of bounds
    x[6700, 520] = float("nan")  # in bounds in partial tile (52, 4)
    got = dx.quant.per_token_cast_to_fp8_with_transpose(x, pow2)
    expected = ref.per_token_cast_to_fp8_with_transpose(x, pow2)
    assert_outputs_equal(got, expected)
    assert not got[3][:128, 53].isnan().any() and not got[1][6656 + 5, 4].isinf()  # the planted values stayed out


@pytest.mark.parametrize("shape", ((16, 16), (272, 144), (2, 400, 144), (7168, 7168)))
def test_transpose_block_bitwise(kernel_device, shape):
    emulation_too_large(kernel_device, math.prod(shape))
    q, s = ref.per_block_cast_to_fp8(random_input(shape, torch.bfloat16, kernel_device, nan_row=1))
    assert_outputs_equal(dx.quant.transpose_block_fp8(q, s), ref.transpose_block_fp8(q, s))


@pytest.mark.parametrize("shape", ((1, 32), (7, 2 * 272), (3, 5, 2 * 400), (16384, 2 * 2048)))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
def test_swiglu_cast_bitwise(kernel_device, shape, dtype, pow2):
    emulation_too_large(kernel_device, math.prod(shape))
    gate_up = (torch.randn(shape, device=kernel_device) * 4).to(dtype)
    gate_up.view(-1, shape[-1])[0, 5] = float("nan")
    assert_outputs_equal(dx.quant.swiglu_cast_to_fp8(gate_up, pow2), ref.swiglu_cast_to_fp8(gate_up, pow2))


@pytest.mark.parametrize("per_block", (False, True))
@pytest.mark.parametrize("out_dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("shape", ((1, 16), (200, 272), (3, 130, 400), (4096, 7168)))
def test_dequantize_bitwise(kernel_device, per_block, out_dtype, shape):
    emulation_too_large(kernel_device, math.prod(shape))
    x = random_input(shape, torch.bfloat16, kernel_device, nan_row=0)
    q, s = (ref.per_block_cast_to_fp8 if per_block else ref.per_token_cast_to_fp8)(x)
    block = (128, 128) if per_block else (1, 128)
    got = dx.quant.dequantize(q, s, out_dtype=out_dtype)
    expected = ref.dequantize(q, s, block, out_dtype)
    assert got.dtype == out_dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def strided_copies(s: torch.Tensor) -> list[torch.Tensor]:
    """s, and the same values at other strides: column-major storage, and a window of a wider tensor."""
    column_major = s.transpose(-1, -2).contiguous().transpose(-1, -2)
    wide = torch.full((*s.shape[:-1], s.shape[-1] + 3), float("nan"), device=s.device)
    wide[..., 1:-2] = s
    return [s, column_major, wide[..., 1:-2]]


# Edges of the dequantize mapping (csrc/include/deepseek_ext/quant/dequantize.cuh): a warp per row,
# 4 spans of 32 lanes x 16 output bytes (128 fp32 / 256 bf16 columns) per CTA column block; rows
# narrower than a span, several column blocks with a partial last span, batches of rows that are not
# a multiple of 128, and scales at any strides. Compared bitwise (the sign of zero included).
@pytest.mark.parametrize("per_block", (False, True))
@pytest.mark.parametrize("out_dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("shape", ((5, 16), (2, 130, 48), (37, 1040), (3, 129, 2320)))
def test_dequantize_mapping_edges(kernel_device, per_block, out_dtype, shape):
    x = random_input(shape, torch.bfloat16, kernel_device, nan_row=1, inf_row=3)
    q, s = (ref.per_block_cast_to_fp8 if per_block else ref.per_token_cast_to_fp8)(x)
    block = (128, 128) if per_block else (1, 128)
    for scales in strided_copies(s):
        got = dx.quant.dequantize(q, scales, block, out_dtype)
        expected = ref.dequantize(q, scales, block, out_dtype)
        nan = expected.isnan()
        assert torch.equal(got.isnan(), nan)
        bits = torch.int32 if out_dtype == torch.float32 else torch.int16
        assert torch.equal(got[~nan].view(bits), expected[~nan].view(bits))


def test_empty_inputs_launch_nothing(kernel_device):
    x = torch.empty(0, 256, device=kernel_device)
    assert dx.quant.per_token_cast_to_fp8(x)[1].shape == (0, 2)
    assert dx.quant.per_block_cast_to_fp8(x)[1].shape == (0, 2)
    assert dx.quant.per_token_cast_to_fp8_with_transpose(x)[2].shape == (256, 0)
    assert dx.quant.swiglu_cast_to_fp8(x)[0].shape == (0, 128)
    q, s = dx.quant.per_token_cast_to_fp8(x)
    assert dx.quant.dequantize(q, s).shape == (0, 256)
    assert dx.quant.transpose_block_fp8(*dx.quant.per_block_cast_to_fp8(x))[0].shape == (256, 0)
    if kernel_device == "cuda":
        torch.cuda.synchronize()


# --- GPU only: CUDA graphs, streams, torch.compile on CUDA -----------------------------------


def test_cuda_graph_capture_and_replay():
    x = random_input((512, 7168), torch.bfloat16, "cuda")
    dx.quant.per_token_cast_to_fp8_with_transpose(x)  # warm up outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        outputs = dx.quant.per_token_cast_to_fp8_with_transpose(x)
    torch.cuda.current_stream().wait_stream(stream)
    x.copy_(random_input((512, 7168), torch.bfloat16, "cuda") * 3)
    graph.replay()
    torch.cuda.synchronize()
    assert_outputs_equal(outputs, ref.per_token_cast_to_fp8_with_transpose(x))


def test_runs_on_the_current_non_default_stream():
    x = random_input((4096, 7168), torch.bfloat16, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = dx.quant.per_token_cast_to_fp8(x)
        got_block = dx.quant.per_block_cast_to_fp8(x)
    stream.synchronize()
    assert_outputs_equal(got, ref.per_token_cast_to_fp8(x))
    assert_outputs_equal(got_block, ref.per_block_cast_to_fp8(x))


def test_compiled_graph_runs_the_kernels():
    x = random_input((256, 7168), torch.bfloat16, "cuda")
    compiled = torch.compile(lambda t: dx.quant.per_token_cast_to_fp8_with_transpose(t, True), fullgraph=True)
    assert_outputs_equal(compiled(x), ref.per_token_cast_to_fp8_with_transpose(x, True))
