"""Tests of the grouped FP8 GEMM kernels (m-grouped contiguous, m-grouped masked, k-grouped)
against float64 products of the dequantized FP8 operands, on an sm_90 GPU and under emulation
(DEEPSEEK_EXT_BACKEND=emulate, for the shapes small enough to emulate quickly). Outputs are
pre-filled with NaN where the kernel wrapper is called directly, so every element the contract
writes must be written (padding rows as exact zeros) and masked-out rows must stay untouched."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.ops import _gemm_kernels
from deepseek_ext.reference.metrics import calc_diff
from deepseek_ext.reference.quant import GROUP, per_block_cast_to_fp8, per_token_cast_to_fp8_with_transpose

from conftest import emulation_too_large

pytestmark = pytest.mark.gpu

_TOLERANCE = {torch.bfloat16: 1e-5, torch.float32: 1e-6}

# Emulated launches above this many multiply-adds (rows x N x K the launch covers) are skipped.
_EMULATION_LIMIT = 1 << 29


def _random(*shape: int, device: str) -> torch.Tensor:
    """Normal values with per-row magnitudes spread over decades, so the scales differ."""
    x = torch.randn(*shape, device=device)
    return (x * torch.exp(torch.randn(*shape[:-1], 1, device=device))).to(torch.bfloat16)


def _rows64(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Dequantized 1x128-scaled [..., M, K] in float64."""
    return q.double() * s.double().repeat_interleave(GROUP, dim=-1)[..., : q.shape[-1]]


def _blocks64(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Dequantized 128x128-scaled [..., N, K] in float64."""
    scale = s.double().repeat_interleave(GROUP, dim=-1)[..., : q.shape[-1]]
    return q.double() * scale.repeat_interleave(GROUP, dim=-2)[..., : q.shape[-2], :]


def _weights(groups: int, n: int, k: int, device: str):
    return per_block_cast_to_fp8(_random(groups, n, k, device=device))


def _poisoned(*shape, dtype, device: str):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


# --- m-grouped, contiguous -------------------------------------------------------------------

def _contiguous_layout(group_sizes, padding_blocks_after=(), *, device: str):
    """m_indices for group segments padded to 128 (plus whole padding blocks after the groups
    listed in padding_blocks_after)."""
    parts = []
    for g, size in enumerate(group_sizes):
        padded = -(-size // 128) * 128 + (128 if g in padding_blocks_after else 0)
        part = torch.full((padded,), -1, dtype=torch.int32)
        part[:size] = g
        parts.append(part)
    m_indices = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)
    return m_indices.to(device)


def _contiguous64(a, sa, b, sb, m_indices):
    a64, b64 = _rows64(a, sa), _blocks64(b, sb)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64, device=a.device)
    for g in range(b.shape[0]):
        rows = (m_indices == g).nonzero().squeeze(1)
        out[rows] = a64[rows] @ b64[g].T
    return out


# Group layouts with empty groups, one-row groups, padding blocks, and N and K tails (every tile
# shape the heuristic can pick runs in tests/test_gemm_variants.py).
CONTIGUOUS = [([0, 1, 130, 57], (), 144, 272), ([300], (), 528, 1040), ([0, 300, 0], (0, 1), 144, 272),
              ([1, 500, 300, 129], (1,), 1040, 144),
              ([1, 1, 1], (2,), 2112, 7168), ([1000, 513, 0, 77, 640, 1, 256, 129], (3,), 4096, 7168),
              ([4096], (), 7168, 2048)]


@pytest.mark.parametrize("group_sizes, padding_blocks_after, n, k", CONTIGUOUS)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_contiguous_matches_float64_and_zeroes_padding(kernel_device, group_sizes, padding_blocks_after, n, k,
                                                       out_dtype):
    m_indices = _contiguous_layout(group_sizes, padding_blocks_after, device=kernel_device)
    emulation_too_large(kernel_device, m_indices.numel() * n * k, _EMULATION_LIMIT)
    # padding rows hold data too
    a, sa = dx.quant.per_token_cast_to_fp8(_random(m_indices.numel(), k, device=kernel_device))
    b, sb = _weights(len(group_sizes), n, k, kernel_device)
    out = _poisoned(m_indices.numel(), n, dtype=out_dtype, device=kernel_device)
    _gemm_kernels.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, out)
    assert not out.isnan().any()
    assert (out[m_indices < 0] == 0).all()
    assert calc_diff(out, _contiguous64(a, sa, b, sb, m_indices)) < _TOLERANCE[out_dtype]
    public = dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, out_dtype)
    assert torch.equal(public, out)


@pytest.mark.parametrize("tokens, num_experts, topk, hidden, n", [(512, 8, 2, 1024, 576), (200, 8, 2, 256, 144)])
def test_permute_then_contiguous_matches_float64(kernel_device, tokens, num_experts, topk, hidden, n):
    """The layout permute_to_grouped produces is what the contiguous kernel consumes."""
    # at most tokens * topk rows, plus up to 127 padding rows per expert
    emulation_too_large(kernel_device, (tokens * topk + num_experts * 127) * n * hidden, _EMULATION_LIMIT)
    idx = torch.rand(tokens, num_experts, device=kernel_device).argsort(dim=1)[:, :topk]
    q, s = dx.quant.per_token_cast_to_fp8(_random(tokens, hidden, device=kernel_device))
    rows, scales, m_indices, _ = dx.gemm.permute_to_grouped(q, s, idx, num_experts)
    b, sb = _weights(num_experts, n, hidden, kernel_device)
    out = dx.gemm.m_grouped_fp8_gemm_nt_contiguous(rows, scales, b, sb, m_indices)
    assert calc_diff(out, _contiguous64(rows, scales, b, sb, m_indices)) < _TOLERANCE[torch.bfloat16]
    assert (out[m_indices < 0] == 0).all()


# --- m-grouped, masked -----------------------------------------------------------------------

def _masked_rows(masked_m: torch.Tensor, m_max: int) -> torch.Tensor:
    """[G, Mmax] True where a row is below its group's masked_m (the rows the GEMM computes)."""
    return torch.arange(m_max, device=masked_m.device)[None, :] < masked_m[:, None]


def _masked64(a, sa, b, sb, masked_m):
    """The computed rows of every group, stacked: [sum(masked_m), N] in float64."""
    return (_rows64(a, sa) @ _blocks64(b, sb).transpose(1, 2))[_masked_rows(masked_m, a.shape[1])]


MASKED = [(4, 200, [0, 200, 1, 130], 64, 144, 272), (3, 40, [40, 0, 7], 16, 528, 1040),
          (4, 256, [256, 100, 0, 255], 256, 1040, 144),
          (3, 1000, [5, 999, 0], 8, 2112, 1040), (32, 256, None, 128, 4096, 2048), (2, 128, [128, 64], 1000, 16, 16)]


@pytest.mark.parametrize("groups, m_max, masked, expected_m, n, k", MASKED)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_masked_matches_float64_and_leaves_masked_rows_unwritten(kernel_device, groups, m_max, masked, expected_m,
                                                                  n, k, out_dtype):
    emulation_too_large(kernel_device, groups * m_max * n * k, _EMULATION_LIMIT)
    masked_m = (torch.randint(96, 161, (groups,)) if masked is None else torch.tensor(masked)).clamp(max=m_max)
    masked_m = masked_m.int().to(kernel_device)
    a, sa = dx.quant.per_token_cast_to_fp8(_random(groups, m_max, k, device=kernel_device))
    b, sb = _weights(groups, n, k, kernel_device)
    out = _poisoned(groups, m_max, n, dtype=out_dtype, device=kernel_device)
    _gemm_kernels.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, expected_m, out)
    rows = _masked_rows(masked_m, m_max)
    assert out[~rows].isnan().all()  # never written
    assert not out[rows].isnan().any()
    if rows.any():
        assert calc_diff(out[rows], _masked64(a, sa, b, sb, masked_m)) < _TOLERANCE[out_dtype]
    public = dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, expected_m, out_dtype)
    assert torch.equal(public[rows], out[rows])


# Emulated too (about 6 s): the expected_m hint, which changes the tile shape the heuristic picks,
# leaves the results unchanged.
def test_masked_expected_m_does_not_change_results(kernel_device):
    groups, m_max, n, k = 6, 384, 272, 1040
    masked_m = torch.tensor([0, 384, 5, 129, 256, 300], dtype=torch.int32, device=kernel_device)
    a, sa = dx.quant.per_token_cast_to_fp8(_random(groups, m_max, k, device=kernel_device))
    b, sb = _weights(groups, n, k, kernel_device)
    rows = _masked_rows(masked_m, m_max)
    results = [dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, e, torch.float32)[rows]
               for e in (1, 200, 384)]
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_masked_cuda_graph_replay_reads_device_counts():
    groups, m_max, n, k = 8, 256, 1024, 2048
    masked_m = torch.tensor([128] * groups, dtype=torch.int32, device="cuda")
    a, sa = dx.quant.per_token_cast_to_fp8(_random(groups, m_max, k, device="cuda"))
    b, sb = _weights(groups, n, k, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, 128)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, 128)
    for counts in ([0, 1, 255, 256, 128, 3, 200, 64], [256] * groups):
        masked_m.copy_(torch.tensor(counts, dtype=torch.int32))
        a2, sa2 = dx.quant.per_token_cast_to_fp8(_random(groups, m_max, k, device="cuda"))
        a.copy_(a2), sa.copy_(sa2)
        graph.replay()
        torch.cuda.synchronize()
        rows = _masked_rows(masked_m, m_max)
        assert torch.equal(out[rows], dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, 128)[rows])
        assert calc_diff(out[rows], _masked64(a, sa, b, sb, masked_m)) < _TOLERANCE[torch.bfloat16]


# --- k-grouped -------------------------------------------------------------------------------

def _k_grouped_operands(group_sizes, n, k, device: str):
    t = sum(group_sizes)
    _, _, a, sa = per_token_cast_to_fp8_with_transpose(_random(t, n, device=device))
    _, _, b, sb = per_token_cast_to_fp8_with_transpose(_random(t, k, device=device))
    return a, sa, b, sb


def _k_grouped64(a, sa, b, sb, group_sizes, c=None):
    a64, b64 = _rows64(a, sa), _rows64(b, sb)
    outs, start = [], 0
    for size in group_sizes:
        outs.append(a64[:, start:start + size] @ b64[:, start:start + size].T)
        start += size
    out = torch.stack(outs)
    return out if c is None else out + c.double()


K_GROUPED = [([128, 0, 256, 128], 48, 80), ([512], 144, 272), ([0, 0, 128], 528, 1040),
             ([1024, 128, 0, 896, 256, 384, 128, 1280], 2112, 1040), ([2048, 2048], 4096, 7168)]


@pytest.mark.parametrize("group_sizes, n, k", K_GROUPED)
@pytest.mark.parametrize("with_c", [False, True], ids=["plain", "c"])
def test_k_grouped_matches_float64(kernel_device, group_sizes, n, k, with_c):
    emulation_too_large(kernel_device, sum(group_sizes) * n * k, _EMULATION_LIMIT)
    a, sa, b, sb = _k_grouped_operands(group_sizes, n, k, kernel_device)
    expected = _k_grouped64(a, sa, b, sb, group_sizes)
    c = (torch.randn(len(group_sizes), n, k, device=kernel_device) * expected.abs().mean()).float() if with_c else None
    offsets = [0, *torch.tensor(group_sizes).cumsum(0).tolist()]
    out = _poisoned(len(group_sizes), n, k, dtype=torch.float32, device=kernel_device)
    _gemm_kernels.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, offsets, out, c)
    assert not out.isnan().any()
    for g, size in enumerate(group_sizes):
        if size == 0:
            assert torch.equal(out[g], c[g] if with_c else torch.zeros_like(out[g]))
    if c is not None:
        expected = expected + c.double()
    assert calc_diff(out, expected) < _TOLERANCE[torch.float32]
    assert torch.equal(dx.gemm.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, group_sizes, c), out)


# Whatever tile shape each SM count picks, each element's sum is the same: bitwise identical results.
@pytest.mark.parametrize("n, k", [(4096, 1040), (1040, 144)])
def test_grouped_results_do_not_depend_on_num_sms(kernel_device, monkeypatch, n, k):
    from deepseek_ext import _backend
    monkeypatch.setattr(_backend, "_num_sms", _backend._num_sms)  # restored after the test
    m_indices = _contiguous_layout([300, 0, 5, 700], device=kernel_device)
    emulation_too_large(kernel_device, m_indices.numel() * n * k, _EMULATION_LIMIT)
    a, sa = dx.quant.per_token_cast_to_fp8(_random(m_indices.numel(), k, device=kernel_device))
    b, sb = _weights(4, n, k, kernel_device)
    full = dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, torch.float32)
    for num_sms in (20, 1):
        dx.set_num_sms(num_sms)
        assert torch.equal(dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, torch.float32), full)


def test_grouped_launchers_reject_bad_arguments(kernel_device):
    from deepseek_ext.ops import _launch
    a, sa = dx.quant.per_token_cast_to_fp8(_random(256, 256, device=kernel_device))
    b, sb = _weights(2, 144, 256, kernel_device)
    out = torch.empty(256, 144, dtype=torch.bfloat16, device=kernel_device)
    m_indices = torch.zeros(256, dtype=torch.int32, device=kernel_device)
    args = [a.data_ptr(), sa.data_ptr(), sa.stride(-1), b.data_ptr(), sb.data_ptr(), m_indices.data_ptr(),
            out.data_ptr(), _launch.DTYPE_CODE[out.dtype], 256, 144, 256, 2, None, dx.get_num_sms()]
    for index, bad in ((8, 200), (5, 0), (9, 120), (13, 0)):  # M % 128, no m_indices, N % 16, no SMs
        with pytest.raises(RuntimeError, match="m_grouped_fp8_gemm_nt_contiguous failed: invalid argument"):
            _launch.call("m_grouped_fp8_gemm_nt_contiguous", *args[:index], bad, *args[index + 1:], device=a.device)
    with pytest.raises(RuntimeError, match="m_grouped_fp8_gemm_nt_masked failed: invalid argument"):
        _launch.call("m_grouped_fp8_gemm_nt_masked", a.data_ptr(), sa.data_ptr(), sa.stride(-1), b.data_ptr(),
                     sb.data_ptr(), m_indices.data_ptr(), out.data_ptr(), _launch.DTYPE_CODE[out.dtype], 2, 128,
                     144, 256, 0, None, dx.get_num_sms(), device=a.device)  # expected_m = 0
    with pytest.raises(RuntimeError, match="k_grouped_fp8_gemm_tn_contiguous failed: invalid argument"):
        _launch.call("k_grouped_fp8_gemm_tn_contiguous", a.data_ptr(), sa.data_ptr(), sa.stride(-1), a.data_ptr(),
                     sa.data_ptr(), sa.stride(-1), m_indices.data_ptr(), out.data_ptr(), 0, 1, 256, 256, 208,
                     None, dx.get_num_sms(), device=a.device)  # T = 208: not whole 128-wide K blocks


# --- index values checked where the kernels read them ------------------------------------------

def _bad_index_calls(device: str, block_m: int):
    """(call, the message its launch fails with) for bad m_indices and masked_m values."""
    from deepseek_ext.ops._gemm_kernels import GemmConfig, forced_config
    # Rows 0..99 group 0, 128..257 group 1, then padding; block 384..511 all padding.
    good = _contiguous_layout([100, 130], padding_blocks_after=(1,), device=device)
    a, sa = dx.quant.per_token_cast_to_fp8(_random(good.numel(), 256, device=device))
    b, sb = _weights(3, 48, 256, device)
    rows = torch.arange(good.numel(), device=device)
    contiguous = [
        (torch.where(rows == 130, 3, good), r"m_indices\[130\] = 3 is outside \[-1, 2\]"),
        (torch.where(rows == 128, 7, good), r"m_indices\[128\] = 7 is outside \[-1, 2\]"),  # a block's first row
        (torch.where(rows == 0, -2, good), r"m_indices\[0\] = -2 is outside \[-1, 2\]"),
        (torch.where(rows == 120, 1, good),  # a second group inside block 0's padding
         r"m_indices\[120\] = 1, but its 128-row block starts at row 0 with 0"),
        (torch.where(rows == 400, 2, good),  # a group after the padding that starts block 3
         r"m_indices\[400\] = 2, but its 128-row block starts at row 384 with -1"),
        (torch.where(rows == 110, 0, good),  # block 0's group again after its padding
         r"m_indices\[110\] = 0 follows -1 padding in its 128-row block"),
    ]
    masked_a, masked_sa = dx.quant.per_token_cast_to_fp8(_random(3, 128, 256, device=device))
    masked = [([5, 129, 0], r"masked_m\[1\] = 129 is outside \[0, 128\]"),
              ([5, 0, -1], r"masked_m\[2\] = -1 is outside \[0, 128\]")]

    def forced(call):
        def run():
            with forced_config(GemmConfig(block_m, 48)):
                return call()
        return run

    calls = [(forced(lambda m=m: dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m.int())), message)
             for m, message in contiguous]
    calls += [(forced(lambda m=m: dx.gemm.m_grouped_fp8_gemm_nt_masked(
        masked_a, masked_sa, b, sb, torch.tensor(m, dtype=torch.int32, device=device), 64)), message)
        for m, message in masked]
    good_call = forced(lambda: dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, good))
    return calls, good_call


@pytest.mark.parametrize("block_m", [64, 128])
def test_kernels_fail_on_bad_index_values_naming_the_row(kernel_device, block_m):
    """The host reads no index values on the kernel path: the kernels check each where they read
    it and the launch fails naming it (emulated here; a GPU trap ends the CUDA context, so the GPU
    form runs each call in a process of its own)."""
    if kernel_device == "cuda":
        if block_m == 64:
            pytest.skip("one BLOCK_M on the GPU: each case costs a process")
        for i in (0, 3, 6):  # out of range, a second group in a block, masked_m past Mmax
            script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
                      f"import test_grouped_gemm_gpu as t; calls, _ = t._bad_index_calls('cuda', {block_m}); "
                      f"calls[{i}][0](); torch.cuda.synchronize()")
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
            assert result.returncode != 0
            assert re.search(_bad_index_calls("cpu", block_m)[0][i][1], result.stdout + result.stderr), result.stderr
        return
    calls, good_call = _bad_index_calls("cpu", block_m)
    for call, message in calls:
        with pytest.raises(RuntimeError, match=r"m_grouped_fp8_gemm_nt_\w+ failed: .*" + message):
            call()
    expected = good_call()  # the emulator runs on after failed launches
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPSEEK_EXT_BACKEND", "reference")
        assert calc_diff(expected, good_call()) < 1e-5
