"""Every FP8 GEMM kernel variant the launchers' heuristic can pick (each BLOCK_M, each BLOCK_N,
with and without 2-CTA multicast of A or B, each GEMM kind, each output type and B-scale kind),
forced one at a time on shapes with M, N and K tails, against float64 products of the dequantized
operands: on an sm_90 GPU and under emulation."""
from __future__ import annotations

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext import _backend
from deepseek_ext.ops import _gemm_kernels
from deepseek_ext.ops._gemm_kernels import GemmConfig, forced_config
from deepseek_ext.reference.metrics import calc_diff
from deepseek_ext.reference.quant import GROUP, per_block_cast_to_fp8

pytestmark = pytest.mark.gpu

_TOLERANCE = {torch.bfloat16: 1e-5, torch.float32: 1e-6}
_OUT = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _variants(sb_per_row_kinds=(False, True), out_dtypes=("bf16", "fp32")):
    """The compiled variants (config.cuh `instantiated`, which the heuristic picks among) of the
    given kinds; none where no kernel module is built."""
    module = _backend._emu or _backend._C
    compiled = module.fp8_gemm_variants() if module is not None else []
    return [pytest.param(block_m, block_n, out, sb_per_row,
                         id=f"m{block_m}n{block_n}-{out}-sb{'1x128' if sb_per_row else '128x128'}")
            for out_bytes, sb_per_row, block_m, block_n in compiled
            for out in out_dtypes if _OUT[out].itemsize == out_bytes and sb_per_row in sb_per_row_kinds]


def _random(*shape: int, device: str) -> torch.Tensor:
    x = torch.randn(*shape, device=device)
    return (x * torch.exp(torch.randn(*shape[:-1], 1, device=device))).to(torch.bfloat16)


def _dequantize64(q: torch.Tensor, s: torch.Tensor, rows_per_scale: int) -> torch.Tensor:
    scale = s.double().repeat_interleave(GROUP, dim=-1)[..., : q.shape[-1]]
    return q.double() * scale.repeat_interleave(rows_per_scale, dim=-2)[..., : q.shape[-2], :]


@pytest.mark.parametrize("multicast", ["none", "A", "B"])
@pytest.mark.parametrize("block_m, block_n, out, sb_per_row", _variants())
def test_dense_variant_matches_float64(kernel_device, block_m, block_n, out, sb_per_row, multicast):
    # Tails everywhere; the shared dimension of a multicast pair has an even count of blocks, and a
    # pair's K blocks outnumber the ring's stages (8 at most), so both CTAs' releases gate reuse.
    m = block_m + 37
    n = (3 if multicast == "A" else 2) * block_n + 16
    k = 272 if multicast == "none" else 9 * 128 + 16
    a, sa = dx.quant.per_token_cast_to_fp8(_random(m, k, device=kernel_device))
    w = _random(n, k, device=kernel_device)
    b, sb = dx.quant.per_token_cast_to_fp8(w) if sb_per_row else per_block_cast_to_fp8(w)
    c = torch.randn(m, n, device=kernel_device)
    result = torch.full((m, n), float("nan"), dtype=_OUT[out], device=kernel_device)
    with forced_config(GemmConfig(block_m, block_n, multicast)):
        _gemm_kernels.fp8_gemm_nt(a, sa, b, sb, result, c)
    expected = _dequantize64(a, sa, 1) @ _dequantize64(b, sb, 1 if sb_per_row else GROUP).T + c.double()
    assert calc_diff(result, expected) < _TOLERANCE[_OUT[out]]


@pytest.mark.parametrize("block_m, block_n, out, sb_per_row", _variants(sb_per_row_kinds=(False,)))
def test_m_contiguous_variant_matches_float64(kernel_device, block_m, block_n, out, sb_per_row):
    sizes, n, k = [70, 0, 130], 2 * block_n + 16, 272
    m_indices = torch.cat([torch.tensor([g] * s + [-1] * (-s % 128), dtype=torch.int32)
                           for g, s in enumerate(sizes)]).to(kernel_device)
    a, sa = dx.quant.per_token_cast_to_fp8(_random(m_indices.numel(), k, device=kernel_device))
    b, sb = per_block_cast_to_fp8(_random(len(sizes), n, k, device=kernel_device))
    result = torch.full((m_indices.numel(), n), float("nan"), dtype=_OUT[out], device=kernel_device)
    with forced_config(GemmConfig(block_m, block_n)):
        _gemm_kernels.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, result)
    a64, b64 = _dequantize64(a, sa, 1), _dequantize64(b, sb, GROUP)
    expected = torch.zeros(m_indices.numel(), n, dtype=torch.float64, device=kernel_device)
    for g in range(len(sizes)):
        rows = m_indices == g
        expected[rows] = a64[rows] @ b64[g].T
    assert (result[m_indices < 0] == 0).all()
    assert calc_diff(result, expected) < _TOLERANCE[_OUT[out]]


@pytest.mark.parametrize("block_m, block_n, out, sb_per_row", _variants(sb_per_row_kinds=(False,)))
def test_m_masked_variant_writes_only_masked_rows(kernel_device, block_m, block_n, out, sb_per_row):
    m_max, n, k = 200, 2 * block_n + 16, 272
    masked_m = torch.tensor([0, 200, 1, block_m + 3], dtype=torch.int32, device=kernel_device)
    a, sa = dx.quant.per_token_cast_to_fp8(_random(4, m_max, k, device=kernel_device))
    b, sb = per_block_cast_to_fp8(_random(4, n, k, device=kernel_device))
    result = torch.full((4, m_max, n), float("nan"), dtype=_OUT[out], device=kernel_device)
    with forced_config(GemmConfig(block_m, block_n)):
        _gemm_kernels.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, 64, result)
    rows = torch.arange(m_max, device=kernel_device)[None, :] < masked_m[:, None]
    expected = (_dequantize64(a, sa, 1) @ _dequantize64(b, sb, GROUP).transpose(1, 2))[rows]
    assert result[~rows].isnan().all()  # rows >= masked_m are never written
    assert calc_diff(result[rows], expected) < _TOLERANCE[_OUT[out]]


@pytest.mark.parametrize("block_m, block_n, out, sb_per_row",
                         _variants(sb_per_row_kinds=(True,), out_dtypes=("fp32",)))
def test_k_grouped_variant_matches_float64(kernel_device, block_m, block_n, out, sb_per_row):
    sizes, n, k = [128, 0, 256], block_m + 37, 2 * block_n + 16
    t = sum(sizes)
    a, sa = dx.quant.per_token_cast_to_fp8(_random(t, n, device=kernel_device).T.contiguous())
    b, sb = dx.quant.per_token_cast_to_fp8(_random(t, k, device=kernel_device).T.contiguous())
    offsets = [0, 128, 128, 384]
    result = torch.full((len(sizes), n, k), float("nan"), dtype=torch.float32, device=kernel_device)
    with forced_config(GemmConfig(block_m, block_n)):
        _gemm_kernels.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, offsets, result, None)
    a64, b64 = _dequantize64(a, sa, 1), _dequantize64(b, sb, 1)
    expected = torch.stack([a64[:, s:e] @ b64[:, s:e].T for s, e in zip(offsets[:-1], offsets[1:])])
    assert calc_diff(result, expected) < _TOLERANCE[torch.float32]


def test_a_config_that_does_not_apply_is_rejected(kernel_device):
    a, sa = dx.quant.per_token_cast_to_fp8(_random(128, 256, device=kernel_device))
    b, sb = per_block_cast_to_fp8(_random(144, 256, device=kernel_device))
    out = torch.empty(128, 144, dtype=torch.bfloat16, device=kernel_device)
    for config in (GemmConfig(128, 200), GemmConfig(32, 64), GemmConfig(128, 64, "A")):  # 200 % 16; BLOCK_M 32; 3 N blocks
        with forced_config(config), pytest.raises(RuntimeError, match="no compiled FP8 GEMM variant"):
            _gemm_kernels.fp8_gemm_nt(a, sa, b, sb, out, None)
