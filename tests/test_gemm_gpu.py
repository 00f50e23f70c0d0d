"""Tests of the hand-written FP8 GEMM kernel (dx.gemm.fp8_gemm_nt) against a float64 product of the
dequantized FP8 operands: on an sm_90 GPU, and under emulation (the kernel's device code run on the
host, DEEPSEEK_EXT_BACKEND=emulate) for the shapes small enough to emulate quickly."""
from __future__ import annotations

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.ops import _gemm_kernels, _launch
from deepseek_ext.reference.metrics import calc_diff
from deepseek_ext.reference.quant import GROUP, per_block_cast_to_fp8

from conftest import emulation_too_large

pytestmark = pytest.mark.gpu

_TOLERANCE = {torch.bfloat16: 1e-5, torch.float32: 1e-6}

# Emulated launches above this many multiply-adds (M*N*K) are skipped: the emulator runs the
# kernel single-threaded at a few ns per multiply-add.
_EMULATION_LIMIT = 1 << 29

# M, N and K tails (1000 % 128, 1040 % 128, 272 % 128 > 0) in one wave of tiles.
_WIDE = (1000, 1040, 272)


def _random(rows: int, cols: int, device: str) -> torch.Tensor:
    """Normal values with per-row magnitudes spread over decades, so the scales differ."""
    x = torch.randn(rows, cols, device=device)
    return (x * torch.exp(torch.randn(rows, 1, device=device))).to(torch.bfloat16)


def _operands(m: int, n: int, k: int, b_per_row: bool, device: str):
    a, sa = dx.quant.per_token_cast_to_fp8(_random(m, k, device))
    w = _random(n, k, device)
    b, sb = dx.quant.per_token_cast_to_fp8(w) if b_per_row else per_block_cast_to_fp8(w)
    return a, sa, b, sb


def _dequantize64(q: torch.Tensor, s: torch.Tensor, rows_per_scale: int) -> torch.Tensor:
    scale = s.double().repeat_interleave(GROUP, dim=1)[:, : q.shape[1]]
    scale = scale.repeat_interleave(rows_per_scale, dim=0)[: q.shape[0]]
    return q.double() * scale


def _reference64(a, sa, b, sb, c=None) -> torch.Tensor:
    b_per_row = sb.shape[0] == b.shape[0]
    out = _dequantize64(a, sa, 1) @ _dequantize64(b, sb, 1 if b_per_row else GROUP).T
    return out if c is None else out + c.double()


SHAPES = [(1, 16, 16), (7, 144, 272), (64, 128, 128), (128, 528, 1040), _WIDE, (200, 2112, 7168),
          (4096, 4096, 7168), (4096, 7168, 2048), (8192, 1040, 512)]


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("b_per_row", [False, True], ids=["sb128x128", "sb1x128"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fp8_gemm_nt_matches_float64(kernel_device, m, n, k, b_per_row, out_dtype):
    emulation_too_large(kernel_device, m * n * k, _EMULATION_LIMIT)
    a, sa, b, sb = _operands(m, n, k, b_per_row, kernel_device)
    out = dx.gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype=out_dtype)
    assert out.shape == (m, n) and out.dtype == out_dtype
    assert torch.isfinite(out).all()
    assert calc_diff(out, _reference64(a, sa, b, sb)) < _TOLERANCE[out_dtype]


@pytest.mark.parametrize("m,n,k", [(7, 144, 272), _WIDE, (200, 2112, 7168), (4096, 528, 1040)])
@pytest.mark.parametrize("b_per_row", [False, True], ids=["sb128x128", "sb1x128"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fp8_gemm_nt_accumulates_c(kernel_device, m, n, k, b_per_row, out_dtype):
    emulation_too_large(kernel_device, m * n * k, _EMULATION_LIMIT)
    a, sa, b, sb = _operands(m, n, k, b_per_row, kernel_device)
    ref = _reference64(a, sa, b, sb)
    c = (torch.randn(m, n, device=kernel_device) * ref.abs().mean()).float()
    out = dx.gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype=out_dtype, c=c)
    assert calc_diff(out, ref + c.double()) < _TOLERANCE[out_dtype]


def test_fp8_gemm_nt_m_8192_square(kernel_device):
    emulation_too_large(kernel_device, 8192 ** 3, _EMULATION_LIMIT)
    a, sa, b, sb = _operands(8192, 8192, 8192, False, kernel_device)
    out = dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    assert calc_diff(out, _reference64(a, sa, b, sb)) < _TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("m,n,k", [(1, 16, 16), (200, 144, 272), (333, 2112, 1040)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("with_c", [False, True], ids=["plain", "c"])
def test_kernel_writes_every_output_element(kernel_device, m, n, k, out_dtype, with_c):
    emulation_too_large(kernel_device, m * n * k, _EMULATION_LIMIT)
    a, sa, b, sb = _operands(m, n, k, False, kernel_device)
    c = torch.randn(m, n, device=kernel_device) if with_c else None
    out = torch.full((m, n), float("nan"), dtype=out_dtype, device=kernel_device)
    _gemm_kernels.fp8_gemm_nt(a, sa, b, sb, out, c)
    assert torch.isfinite(out).all()
    assert calc_diff(out, _reference64(a, sa, b, sb, c)) < _TOLERANCE[out_dtype]


@pytest.fixture
def restore_num_sms():
    from deepseek_ext import _backend
    saved = _backend._num_sms
    yield
    _backend._num_sms = saved


# The launcher picks the tile shape from (M, N, K, num_sms); each element's sum runs over the same
# K blocks in the same order whatever the shape, so the results must be bitwise identical.
@pytest.mark.parametrize("m,n,k,sm_counts", [(4096, 2112, 1040, (20, 112, 1)), (*_WIDE, (20, 112, 1)),
                                             (128, 528, 1040, (20, 112))],
                         ids=["wide_tiles", "wide_tiles_small", "narrow_tiles"])
@pytest.mark.parametrize("b_per_row", [False, True], ids=["sb128x128", "sb1x128"])
def test_num_sms_does_not_change_results(kernel_device, restore_num_sms, m, n, k, sm_counts, b_per_row):
    emulation_too_large(kernel_device, m * n * k, _EMULATION_LIMIT)
    a, sa, b, sb = _operands(m, n, k, b_per_row, kernel_device)
    c = torch.randn(m, n, device=kernel_device)
    full = dx.gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype=torch.float32, c=c)
    for num_sms in sm_counts:
        dx.set_num_sms(num_sms)
        assert torch.equal(dx.gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype=torch.float32, c=c), full)


def test_cuda_graph_replay_reads_new_inputs():
    m, n, k = 256, 528, 1040
    a, sa, b, sb = _operands(m, n, k, False, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dx.gemm.fp8_gemm_nt(a, sa, b, sb)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    a2, sa2, b2, sb2 = _operands(m, n, k, False, "cuda")
    a.copy_(a2), sa.copy_(sa2), b.copy_(b2), sb.copy_(sb2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, dx.gemm.fp8_gemm_nt(a, sa, b, sb))
    assert calc_diff(out, _reference64(a, sa, b, sb)) < _TOLERANCE[torch.bfloat16]


def _raw_call(a, sa, b, sb, out, /, **overrides):
    (m, k), n = a.shape, b.shape[0]
    args = dict(a=a.data_ptr(), lda=k, sa=sa.data_ptr(), ld_sa=sa.stride(-1), b=b.data_ptr(), ldb=k,
                sb=sb.data_ptr(), ld_sb=sb.shape[1], sb_per_row=False, d=out.data_ptr(),
                d_dtype=_launch.DTYPE_CODE[out.dtype], c=0, m=m, n=n, k=k, config=None, num_sms=dx.get_num_sms())
    args.update(overrides)
    _launch.call("fp8_gemm_nt", *args.values(), device=a.device)


@pytest.mark.parametrize("override", [
    dict(n=120), dict(k=200), dict(k=0), dict(num_sms=0), dict(ld_sa=130), dict(lda=100),
    dict(d_dtype=_launch.DTYPE_CODE[torch.float8_e4m3fn]), dict(m=-1)])
def test_launcher_rejects_bad_arguments(kernel_device, override):
    a, sa, b, sb = _operands(128, 128, 256, False, kernel_device)
    out = torch.empty(128, 128, dtype=torch.bfloat16, device=kernel_device)
    with pytest.raises(RuntimeError, match="fp8_gemm_nt failed: invalid argument"):
        _raw_call(a, sa, b, sb, out, **override)


def test_launcher_rejects_misaligned_pointers(kernel_device):
    a, sa, b, sb = _operands(128, 128, 256, False, kernel_device)
    out = torch.empty(128, 128, dtype=torch.bfloat16, device=kernel_device)
    for name in ("a", "b", "d"):
        ptr = {"a": a, "b": b, "d": out}[name].data_ptr() + 8
        with pytest.raises(RuntimeError, match="fp8_gemm_nt failed: invalid argument"):
            _raw_call(a, sa, b, sb, out, **{name: ptr})
