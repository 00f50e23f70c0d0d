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


@pytest.mark.parametrize("shape", ((1, 16), (200, 272), (130, 128), (3, 300, 400), (4096, 7168), (7168, 7168)))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("pow2", (False, True))
def test_per_block_cast_bitwise(kernel_device, shape, dtype, pow2):
    emulation_too_large(kernel_device, math.prod(shape))
    w = random_input(shape, dtype, kernel_device, nan_row=min(5, shape[-2] - 1))
    assert_outputs_equal(dx.quant.per_block_cast_to_fp8(w, pow2), ref.per_block_cast_to_fp8(w, pow2))


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
