"""dx.quant on the CPU (the reference path) against the DESIGN.md numerics written out
independently here with numpy: per-group loops, amax floor 1e-4, s = amax / 448 in fp32,
pow2 rounding up, and a round-to-nearest-even e4m3 encoder built from the format's definition."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.ops import _eager, _launch
from deepseek_ext.ops import quant as ops_quant
from deepseek_ext.reference import quant as ref

E4M3 = torch.float8_e4m3fn


# --- the formula, independently ----------------------------------------------------------------

def _e4m3_positive_table() -> tuple[np.ndarray, np.ndarray]:
    """All finite non-negative e4m3fn values (bias 7, subnormals at exponent 0, S.1111.111 is
    NaN) with their byte codes, ascending."""
    values, codes = [], []
    for code in range(0x7f):
        exponent, mantissa = code >> 3, code & 7
        value = mantissa / 8 * 2.0 ** -6 if exponent == 0 else (1 + mantissa / 8) * 2.0 ** (exponent - 7)
        values.append(value)
        codes.append(code)
    return np.array(values), np.array(codes, dtype=np.uint8)


_E4M3_VALUES, _E4M3_CODES = _e4m3_positive_table()


def e4m3_bytes(v: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even e4m3 bytes of already clamped float32 values (NaN -> 0x7f)."""
    a = np.abs(v.astype(np.float64))
    nan = np.isnan(a)
    a = np.where(nan, 0.0, a)
    hi = np.clip(np.searchsorted(_E4M3_VALUES, a), 1, len(_E4M3_VALUES) - 1)
    lo = hi - 1
    d_lo, d_hi = a - _E4M3_VALUES[lo], _E4M3_VALUES[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (_E4M3_CODES[hi] % 2 == 0))
    code = np.where(pick_hi, _E4M3_CODES[hi], _E4M3_CODES[lo])
    code = np.where(np.signbit(v), code | 0x80, code).astype(np.uint8)
    return np.where(nan, np.uint8(0x7f), code)


def formula_scale(amax: float, pow2: bool) -> np.float32:
    a = np.float32(amax)
    if a < np.float32(1e-4):
        a = np.float32(1e-4)
    s = np.float32(a / np.float32(448.0))
    if pow2 and np.isfinite(s):
        s = np.float32(2.0 ** math.ceil(math.log2(float(s))))
    return s


def formula_quantize(group: np.ndarray, s: np.float32) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        v = (group.astype(np.float32) / s).astype(np.float32)
    v = np.where(np.isnan(v), v, np.clip(v, -448.0, 448.0)).astype(np.float32)
    return e4m3_bytes(v)


def formula_group_amax(group: np.ndarray) -> float:
    a = np.abs(group.astype(np.float32))
    return float("nan") if np.isnan(a).any() else float(a.max(initial=0.0))


def formula_rows(x: np.ndarray, pow2: bool) -> tuple[np.ndarray, np.ndarray]:
    """1x128 along the last dim of a 2-D float32 array: (q bytes [M, K], s [M, ceil(K/128)])."""
    m, k = x.shape
    groups = -(-k // 128)
    q = np.zeros((m, k), dtype=np.uint8)
    s = np.zeros((m, groups), dtype=np.float32)
    for r in range(m):
        for g in range(groups):
            cols = slice(128 * g, min(128 * (g + 1), k))
            s[r, g] = formula_scale(formula_group_amax(x[r, cols]), pow2)
            q[r, cols] = formula_quantize(x[r, cols], s[r, g])
    return q, s


def formula_blocks(w: np.ndarray, pow2: bool) -> tuple[np.ndarray, np.ndarray]:
    """128x128 blocks of a 2-D float32 array."""
    n, k = w.shape
    nb, kb = -(-n // 128), -(-k // 128)
    q = np.zeros((n, k), dtype=np.uint8)
    s = np.zeros((nb, kb), dtype=np.float32)
    for i in range(nb):
        for j in range(kb):
            block = (slice(128 * i, min(128 * (i + 1), n)), slice(128 * j, min(128 * (j + 1), k)))
            s[i, j] = formula_scale(formula_group_amax(w[block]), pow2)
            q[block] = formula_quantize(w[block], s[i, j])
    return q, s


# --- helpers ---------------------------------------------------------------------------------

def random_input(shape, dtype, seed=0) -> torch.Tensor:
    """Normal values with a different magnitude per row (so scales differ), incl. huge and tiny rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    rows = x.reshape(-1, shape[-1])
    magnitudes = torch.tensor([1.0, 1e30, 1e-30, 3e-6, 250.0, 1e-3, 7.0])
    rows *= magnitudes[torch.arange(rows.shape[0]) % len(magnitudes)].unsqueeze(-1)
    return x.to(dtype)


def as_np(x: torch.Tensor) -> np.ndarray:
    return x.float().numpy()


def assert_q_equal(q: torch.Tensor, expected: np.ndarray) -> None:
    assert q.dtype == E4M3
    got = q.contiguous().view(torch.uint8).numpy()
    nan_got = q.float().isnan().numpy()
    nan_expected = expected & 0x7f == 0x7f
    np.testing.assert_array_equal(nan_got, nan_expected)
    np.testing.assert_array_equal(np.where(nan_got, 0, got), np.where(nan_expected, 0, expected))


def assert_scales_equal(s: torch.Tensor, expected: np.ndarray) -> None:
    assert s.dtype == torch.float32
    np.testing.assert_array_equal(s.numpy(), expected)  # NaN == NaN for assert_array_equal


def assert_m_major(s: torch.Tensor, m: int, groups: int) -> None:
    padded = -(-m // 4) * 4
    assert s.shape[-2:] == (m, groups)
    assert s.stride(-2) == 1 and s.stride(-1) == padded
    if s.dim() == 3:
        assert s.stride(0) == groups * padded


DTYPES = (torch.bfloat16, torch.float32)


# --- per_token_cast_to_fp8 -------------------------------------------------------------------

CAST_CASES = [("per_token_cast_to_fp8", shape) for shape in ((1, 16), (3, 272), (7, 384), (20, 144))]
CAST_CASES += [("per_block_cast_to_fp8", shape) for shape in ((1, 16), (200, 272), (130, 128))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pow2", (False, True))
@pytest.mark.parametrize("op, shape", CAST_CASES)
def test_cast_matches_formula(dtype, pow2, op, shape):
    x = random_input(shape, dtype)
    q, s = getattr(dx.quant, op)(x, pow2_scale=pow2)
    per_token = op == "per_token_cast_to_fp8"
    q_expected, s_expected = (formula_rows if per_token else formula_blocks)(as_np(x), pow2)
    assert_q_equal(q, q_expected)
    assert_scales_equal(s, s_expected)
    if per_token:
        assert_m_major(s, shape[0], s_expected.shape[1])
    else:
        assert s.is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_token_batched_scales_are_m_major_per_batch(dtype):
    x = random_input((3, 5, 272), dtype)
    q, s = dx.quant.per_token_cast_to_fp8(x)
    assert s.shape == (3, 5, 3)
    assert_m_major(s, 5, 3)
    for b in range(3):
        q_expected, s_expected = formula_rows(as_np(x[b]), False)
        assert_q_equal(q[b], q_expected)
        assert_scales_equal(s[b], s_expected)


@pytest.mark.parametrize("bad", (float("nan"), float("inf"), float("-inf")))
def test_non_finite_poisons_only_its_group(bad):
    x = random_input((4, 384), torch.float32)
    x[2, 130] = bad
    q, s = dx.quant.per_token_cast_to_fp8(x)
    q_expected, s_expected = formula_rows(as_np(x), False)
    assert_q_equal(q, q_expected)
    assert_scales_equal(s, s_expected)
    poisoned = torch.zeros_like(s, dtype=torch.bool)
    poisoned[2, 1] = True
    assert not torch.isfinite(s[2, 1])
    assert torch.isfinite(s[~poisoned]).all()
    group_nan = q[2, 128:256].float().isnan()
    if math.isnan(bad):  # s is NaN: every element of the group becomes NaN
        assert group_nan.all()
    else:  # s is Inf: finite / Inf = 0, Inf / Inf = NaN
        assert group_nan.nonzero().flatten().tolist() == [2]
        assert (q[2, 128:256].float()[~group_nan] == 0).all()
    assert not q[[0, 1, 3]].float().isnan().any() and not q[2, :128].float().isnan().any()


def test_partial_group_pads_with_zeros_and_all_zero_group_uses_floor():
    x = torch.zeros(2, 144)
    x[0, 130] = -3.0  # the partial last group holds 16 elements: amax comes from them alone
    q, s = dx.quant.per_token_cast_to_fp8(x)
    assert s[0, 1].item() == np.float32(3.0) / np.float32(448.0)
    assert s[0, 0].item() == np.float32(1e-4) / np.float32(448.0)
    assert q[0, 130].float().item() == -448.0


def test_per_token_empty_inputs():
    q, s = dx.quant.per_token_cast_to_fp8(torch.randn(0, 256))
    assert q.shape == (0, 256) and s.shape == (0, 2)
    q, s = dx.quant.per_token_cast_to_fp8(torch.randn(4, 0))
    assert q.shape == (4, 0) and s.shape == (4, 0)


def test_per_token_row_strided_input_is_handled():
    base = random_input((6, 512), torch.bfloat16)
    x = base[:, 128:400]  # rows 1024 bytes apart, 272 elements each
    q, s = dx.quant.per_token_cast_to_fp8(x)
    q_c, s_c = dx.quant.per_token_cast_to_fp8(x.contiguous())
    assert torch.equal(q.view(torch.uint8), q_c.view(torch.uint8)) and torch.equal(s, s_c)


# --- per_block_cast_to_fp8 -------------------------------------------------------------------

def test_per_block_batched_and_nan_block():
    w = random_input((2, 136, 256), torch.float32)
    w[1, 5, 200] = float("nan")
    q, s = dx.quant.per_block_cast_to_fp8(w)
    assert s.shape == (2, 2, 2)
    for b in range(2):
        q_expected, s_expected = formula_blocks(as_np(w[b]), False)
        assert_q_equal(q[b], q_expected)
        assert_scales_equal(s[b], s_expected)
    assert s[1, 0, 1].isnan() and torch.isfinite(s.flatten()[[0, 1, 2, 3, 4, 6, 7]]).all()


def test_per_block_empty():
    q, s = dx.quant.per_block_cast_to_fp8(torch.randn(0, 32))
    assert q.shape == (0, 32) and s.shape == (0, 1)


# --- per_token_cast_to_fp8_with_transpose ----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pow2", (False, True))
@pytest.mark.parametrize("shape", ((16, 16), (144, 272), (48, 400)))
def test_with_transpose_matches_formula(dtype, pow2, shape):
    x = random_input(shape, dtype)
    x[min(5, shape[0] - 1), 3] = float("nan")
    q, s, qt, st = dx.quant.per_token_cast_to_fp8_with_transpose(x, pow2_scale=pow2)
    q_expected, s_expected = formula_rows(as_np(x), pow2)
    qt_expected, st_expected = formula_rows(as_np(x).T.copy(), pow2)
    assert_q_equal(q, q_expected)
    assert_scales_equal(s, s_expected)
    assert_q_equal(qt, qt_expected)
    assert_scales_equal(st, st_expected)
    assert qt.shape == (shape[1], shape[0]) and qt.is_contiguous()
    assert_m_major(s, shape[0], s_expected.shape[1])
    assert_m_major(st, shape[1], st_expected.shape[1])


def test_with_transpose_empty():
    q, s, qt, st = dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(0, 32))
    assert q.shape == (0, 32) and qt.shape == (32, 0) and st.shape == (32, 0)


# --- transpose_block_fp8 ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", ((16, 16), (272, 144), (2, 144, 400)))
def test_transpose_block_is_exact(shape):
    q, s = dx.quant.per_block_cast_to_fp8(random_input(shape, torch.bfloat16))
    qt, st = dx.quant.transpose_block_fp8(q, s)
    assert torch.equal(qt.view(torch.uint8), q.view(torch.uint8).transpose(-1, -2))
    assert torch.equal(st, s.transpose(-1, -2))
    assert qt.is_contiguous() and st.is_contiguous()
    assert qt.data_ptr() != q.data_ptr() and st.data_ptr() != s.data_ptr()


def test_transpose_block_empty():
    qt, st = dx.quant.transpose_block_fp8(torch.empty(0, 32, dtype=E4M3), torch.empty(0, 1))
    assert qt.shape == (32, 0) and st.shape == (1, 0)


# --- swiglu_cast_to_fp8 ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((1, 32), (5, 544), (2, 3, 288)))
def test_swiglu_cast_close_to_float64_formula(dtype, shape):
    gate_up = (torch.randn(shape) * 3).to(dtype)
    q, s = dx.quant.swiglu_cast_to_fp8(gate_up)
    g, u = gate_up.double().chunk(2, dim=-1)
    y = (g / (1 + torch.exp(-g)) * u).float()  # silu written out, in float64
    y2 = y.reshape(-1, y.shape[-1]).numpy()
    q_expected, s_expected = formula_rows(y2, False)
    s2 = s.reshape(-1, s.shape[-1])
    np.testing.assert_allclose(s2.numpy(), s_expected, rtol=1e-6)
    deq = (q.double().reshape(y2.shape) * s2.double().repeat_interleave(128, -1)[:, : y2.shape[1]]).numpy()
    deq_expected = _E4M3_VALUES[q_expected & 0x7f] * np.where(q_expected & 0x80, -1, 1)
    deq_expected = deq_expected * np.repeat(s_expected, 128, -1)[:, : y2.shape[1]]
    # fp32 silu vs float64 silu may move a value across an e4m3 rounding boundary: one step at most
    np.testing.assert_allclose(deq, deq_expected, rtol=2 ** -3, atol=float(s_expected.max()) * 2 ** -9)
    assert (q.reshape(y2.shape).view(torch.uint8).numpy() == q_expected).mean() > 0.95


def test_swiglu_cast_is_per_token_cast_of_fp32_swiglu():
    gate_up = torch.randn(9, 2 * 272, dtype=torch.bfloat16)
    q, s = dx.quant.swiglu_cast_to_fp8(gate_up, pow2_scale=True)
    g, u = gate_up.float().chunk(2, dim=-1)
    q2, s2 = dx.quant.per_token_cast_to_fp8(torch.nn.functional.silu(g) * u, pow2_scale=True)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
    assert_m_major(s, 9, 3)


def test_swiglu_empty():
    q, s = dx.quant.swiglu_cast_to_fp8(torch.randn(0, 64))
    assert q.shape == (0, 32) and s.shape == (0, 1)


# --- dequantize ------------------------------------------------------------------------------

@pytest.mark.parametrize("out_dtype", (torch.float32, torch.bfloat16))
def test_dequantize_per_token_and_per_block(out_dtype):
    x = random_input((200, 272), torch.float32)
    for cast, rows_per_scale in ((dx.quant.per_token_cast_to_fp8, 1), (dx.quant.per_block_cast_to_fp8, 128)):
        q, s = cast(x)
        out = dx.quant.dequantize(q, s, out_dtype=out_dtype)
        expanded = np.repeat(np.repeat(s.numpy(), rows_per_scale, 0)[:200], 128, 1)[:, :272]
        expected = (q.float().numpy() * expanded).astype(np.float32)
        expected = torch.from_numpy(expected).to(out_dtype)
        assert out.dtype == out_dtype
        assert torch.equal(out, expected)
        assert torch.equal(dx.quant.dequantize(q, s, block=(rows_per_scale, 128), out_dtype=out_dtype), out)


@pytest.mark.parametrize("cast", ("per_token_cast_to_fp8", "per_block_cast_to_fp8"))
def test_dequantize_of_quantize_is_close(cast):
    x = random_input((3, 130, 400), torch.float32)
    q, s = getattr(dx.quant, cast)(x)
    out = dx.quant.dequantize(q, s)
    rows_per_scale = 1 if cast == "per_token_cast_to_fp8" else 128
    scale = s.repeat_interleave(rows_per_scale, -2)[..., :130, :].repeat_interleave(128, -1)[..., :400]
    # e4m3: 3 mantissa bits (relative error <= 2^-4), subnormal step 2^-9 (absolute, times s)
    assert ((out - x).abs() <= x.abs() * 2 ** -4 + scale * 2 ** -10).all()


def test_dequantize_empty():
    q, s = dx.quant.per_token_cast_to_fp8(torch.randn(0, 256))
    assert dx.quant.dequantize(q, s).shape == (0, 256)


# --- validation ------------------------------------------------------------------------------

def _fp8(*shape):
    return torch.randn(*shape).to(E4M3)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(4, 256).half()), TypeError, r"x must have dtype in \(bfloat16, float32\), got float16"),
    (lambda: dx.quant.per_token_cast_to_fp8([1.0]), TypeError, "x must be a torch.Tensor"),
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(256)), ValueError, "x must have at least 2 dims"),
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(4, 40)), ValueError, r"x.shape\[-1\] must be a multiple of 16, got 40"),
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(256, 4).T), ValueError, "x must be contiguous along its last dim"),
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(4, 302)[:, :16]), ValueError, "x's rows must start 16 bytes apart"),
    # [B, 1, K]: the rows are the B batch entries, 20 elements (40 bytes) apart
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(100).bfloat16().as_strided((4, 1, 16), (20, 20, 1))), ValueError, "x's rows must start 16 bytes apart"),
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(3, 4, 32).transpose(0, 1)), ValueError, "x's leading dims must be collapsible"),
    (lambda: dx.quant.per_token_cast_to_fp8(torch.randn(4, 260)[:, 2:258]), ValueError, "x must start at a 16-byte aligned address"),
    (lambda: dx.quant.per_block_cast_to_fp8(torch.randn(4, 40)), ValueError, r"w.shape\[-1\] must be a multiple of 16, got 40"),
    (lambda: dx.quant.per_block_cast_to_fp8(torch.randn(4, 32, dtype=torch.float64)), TypeError, "w must have dtype in"),
    (lambda: dx.quant.per_block_cast_to_fp8(torch.randn(32, 4).T), ValueError, "w must be contiguous along its last dim"),
    (lambda: dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(2, 16, 32)), ValueError, r"x must be 2-D \[M, K\]"),
    (lambda: dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(24, 32)), ValueError, r"x.shape\[0\] \(M: rows of the transposed copy\) must be a multiple of 16, got 24"),
    (lambda: dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(16, 24)), ValueError, r"x.shape\[-1\] must be a multiple of 16, got 24"),
    (lambda: dx.quant.swiglu_cast_to_fp8(torch.randn(4, 48)), ValueError, r"gate_up.shape\[-1\] \(2 x intermediate size\) must be a multiple of 32, got 48"),
    (lambda: dx.quant.swiglu_cast_to_fp8(torch.randn(4, 64, dtype=torch.float16)), TypeError, "gate_up must have dtype in"),
    (lambda: dx.quant.transpose_block_fp8(torch.randn(32, 32), torch.ones(1, 1)), TypeError, r"q must have dtype in \(float8_e4m3fn\)"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(32, 32), torch.ones(1, 1, dtype=torch.float64)), TypeError, "s must have dtype in"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(32, 32), torch.ones(1)), ValueError, "s must be 2-D"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(24, 32), torch.ones(1, 1)), ValueError, r"q.shape\[-2\] must be a multiple of 16, got 24"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(32, 40), torch.ones(1, 1)), ValueError, r"q.shape\[-1\] must be a multiple of 16, got 40"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(32, 144), torch.ones(1, 1)), ValueError, r"s must have shape \(1, 2\), got \(1, 1\)"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(32, 32).T, torch.ones(1, 1)), ValueError, "q must be contiguous"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(144, 144), torch.ones(2, 2).T), ValueError, "s must be contiguous"),
    (lambda: dx.quant.dequantize(torch.randn(4, 32), torch.ones(4, 1)), TypeError, r"q must have dtype in \(float8_e4m3fn\)"),
    (lambda: dx.quant.dequantize(_fp8(4, 32), torch.ones(4, 1).double()), TypeError, "s must have dtype in"),
    (lambda: dx.quant.dequantize(_fp8(4, 32), torch.ones(1, 4, 1)), ValueError, "s must be 2-D"),
    (lambda: dx.quant.dequantize(_fp8(4, 40), torch.ones(4, 1)), ValueError, r"q.shape\[-1\] must be a multiple of 16, got 40"),
    (lambda: dx.quant.dequantize(_fp8(32, 4).T, torch.ones(4, 1)), ValueError, "q must be contiguous"),
    (lambda: dx.quant.dequantize(_fp8(4, 32), torch.ones(4, 1), block=(1, 64)), ValueError, r"block must be \(1, 128\) or \(128, 128\), got \(1, 64\)"),
    (lambda: dx.quant.dequantize(_fp8(4, 32), torch.ones(4, 1), block=(128, 128)), ValueError, r"s must have shape \(1, 1\), got \(4, 1\)"),
    (lambda: dx.quant.dequantize(_fp8(4, 272), torch.ones(4, 2)), ValueError, r"s must have shape \(4, 3\), got \(4, 2\)"),
    (lambda: dx.quant.dequantize(_fp8(4, 32), torch.ones(4, 1), out_dtype=torch.float16), TypeError, "out_dtype must be torch.float32 or torch.bfloat16"),
    (lambda: dx.quant.dequantize(_fp8(4, 32), torch.ones(4, 1, device="meta")), ValueError, "s is on meta but q is on cpu"),
    (lambda: dx.quant.transpose_block_fp8(_fp8(32, 32), torch.ones(1, 1, device="meta")), ValueError, "s is on meta but q is on cpu"),
    (lambda: dx.quant.dequantize(_fp8(2, 2, 4, 32), torch.ones(2, 2, 4, 2)[:, :, :, :1].transpose(0, 1)), ValueError, "s's leading dims must be collapsible"),
])
def test_bad_inputs_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_dequantize_accepts_strided_m_major_scales():
    x = random_input((2, 5, 272), torch.float32)
    q, s = dx.quant.per_token_cast_to_fp8(x)
    assert not s.is_contiguous()
    assert torch.equal(dx.quant.dequantize(q, s), dx.quant.dequantize(q, s.contiguous()))


# --- torch.library: opcheck and torch.compile ------------------------------------------------

def _op_cases():
    x = random_input((32, 272), torch.float32)
    gate_up = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    qb, sb = dx.quant.per_block_cast_to_fp8(x)
    qt, st = dx.quant.per_token_cast_to_fp8(x)
    return {
        "per_token_cast_to_fp8": (dx.quant.per_token_cast_to_fp8, (x, True)),
        "per_block_cast_to_fp8": (dx.quant.per_block_cast_to_fp8, (x, False)),
        "per_token_cast_to_fp8_with_transpose": (dx.quant.per_token_cast_to_fp8_with_transpose, (x, False)),
        "transpose_block_fp8": (dx.quant.transpose_block_fp8, (qb, sb)),
        "swiglu_cast_to_fp8": (dx.quant.swiglu_cast_to_fp8, (gate_up, False)),
        "dequantize": (lambda q, s: dx.quant.dequantize(q, s, out_dtype=torch.bfloat16), (qt, st)),
    }


_OP_ARGS = {"dequantize": lambda q, s: (q, s, 1, torch.bfloat16)}
# opcheck's schema test multiplies the inputs, which torch does not implement for float8 tensors
_FP8_INPUT_OPS = {"transpose_block_fp8", "dequantize"}
_NO_SCHEMA_TEST = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("name", list(_op_cases()))
def test_opcheck(name):
    _, args = _op_cases()[name]
    op_args = _OP_ARGS.get(name, lambda *a: a)(*args)
    utils = _NO_SCHEMA_TEST if name in _FP8_INPUT_OPS else None
    torch.library.opcheck(getattr(torch.ops.deepseek_ext, name).default, op_args,
                          **({"test_utils": utils} if utils else {}))


@pytest.mark.parametrize("name", list(_op_cases()))
def test_compile_fullgraph_matches_eager(name):
    fn, args = _op_cases()[name]
    eager = fn(*args)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    eager = eager if isinstance(eager, tuple) else (eager,)
    compiled = compiled if isinstance(compiled, tuple) else (compiled,)
    for a, b in zip(eager, compiled, strict=True):
        assert a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
        a, b = (t.view(torch.uint8) if t.dtype == E4M3 else t for t in (a, b))
        assert torch.equal(a, b)


# --- the kernel path's launcher arguments (no GPU here: checked against the binding source) ----

@pytest.mark.parametrize("op, name", [(dx.quant.per_token_cast_to_fp8, "x"), (dx.quant.swiglu_cast_to_fp8, "gate_up"),
                                      (dx.quant.per_block_cast_to_fp8, "w"),
                                      (dx.quant.per_token_cast_to_fp8_with_transpose, "x")])
def test_kernel_path_names_a_misaligned_input(monkeypatch, op, name):
    monkeypatch.setattr(ops_quant, "uses_kernels", lambda t: True)
    monkeypatch.setattr(_eager, "enabled", False)  # every call planned anew: no plan of another test's
    monkeypatch.setattr(_launch, "launcher", lambda launcher_name, device: lambda *args: None)
    misaligned = torch.randn(32, 132)[:, 2:130]  # rows 16-byte aligned, the start 8 bytes past
    with pytest.raises(ValueError, match=f"{name} must start at a 16-byte aligned address"):
        op(misaligned)


def test_kernel_path_passes_what_the_bindings_declare(monkeypatch):
    calls = {}
    monkeypatch.setattr(ops_quant, "uses_kernels", lambda t: True)
    monkeypatch.setattr(_eager, "enabled", False)  # every call planned anew: no plan of another test's
    monkeypatch.setattr(_launch, "launcher", lambda name, device: lambda *args: calls.setdefault(name, args))
    x = torch.randn(2, 48, 272)
    dx.quant.per_token_cast_to_fp8(x)
    dx.quant.swiglu_cast_to_fp8(torch.randn(2, 48, 64))
    dx.quant.per_block_cast_to_fp8(x)
    dx.quant.per_token_cast_to_fp8_with_transpose(x[0])
    q = torch.zeros(2, 48, 272, dtype=E4M3)
    dx.quant.transpose_block_fp8(q, torch.ones(2, 1, 3))
    dx.quant.dequantize(q, ref.per_token_cast_to_fp8(x)[1], out_dtype=torch.bfloat16)
    source = (Path(__file__).resolve().parents[1] / "csrc" / "bind" / "quant.cpp").read_text()
    named = {}
    for name, args in calls.items():
        params = re.search(r'"%s",\s*\[\]\(([^)]*)\)' % name, source).group(1).split(",")
        names = [p.split()[-1] for p in params]
        assert names[-1] == "stream" and len(names) == len(args) + 1, name  # the launcher adds the stream
        named[name] = dict(zip(names, args))
    assert len(named) == 6
    assert {k: named["per_token_cast_to_fp8"][k] for k in ("ld_x", "rows", "cols", "rows_per_batch", "padded_rows")} == \
        {"ld_x": 272, "rows": 96, "cols": 272, "rows_per_batch": 48, "padded_rows": 48}
    assert named["swiglu_cast_to_fp8"]["inter"] == 32 and named["swiglu_cast_to_fp8"]["rows"] == 96
    assert (named["per_block_cast_to_fp8"]["num_rows"], named["per_block_cast_to_fp8"]["rows_per_batch"]) == (96, 48)
    assert (named["cast_with_transpose"]["s_padded_rows"], named["cast_with_transpose"]["st_padded_rows"]) == (48, 272)
    assert (named["transpose_block_fp8"]["batch"], named["transpose_block_fp8"]["rows"]) == (2, 48)
    assert {k: named["dequantize"][k] for k in ("out_dtype", "block_rows", "s_batch", "s_row", "s_col")} == \
        {"out_dtype": _launch.DTYPE_CODE[torch.bfloat16], "block_rows": 1, "s_batch": 3 * 48, "s_row": 1, "s_col": 48}


# --- bad-input repros (empty tensors with zero strides; argument types) ----------------------

def _zero_stride_empty(shape, dtype):
    """What torch.from_numpy gives for an empty broadcast array: every stride 0."""
    return torch.empty(0, dtype=dtype).as_strided(shape, (0,) * len(shape))


@pytest.mark.parametrize("shape", [(0, 128), (3, 0, 128), (0, 3, 32)])
@pytest.mark.parametrize("op, k_div", [(dx.quant.per_token_cast_to_fp8, 1), (dx.quant.per_block_cast_to_fp8, 1),
                                       (dx.quant.swiglu_cast_to_fp8, 2)])
def test_zero_stride_empty_inputs_give_empty_outputs(shape, op, k_div):
    x = _zero_stride_empty(shape, torch.float32)
    q, s = op(x)
    expected_q, expected_s = op(torch.zeros(shape))
    assert q.shape == expected_q.shape and s.shape == expected_s.shape and q.numel() == 0


def test_zero_stride_empty_with_transpose():
    q, s, qt, st = dx.quant.per_token_cast_to_fp8_with_transpose(_zero_stride_empty((0, 128), torch.bfloat16))
    assert (q.shape, s.shape, qt.shape, st.shape) == ((0, 128), (0, 1), (128, 0), (128, 0))


def test_zero_stride_empty_dequantize_and_transpose():
    q = _zero_stride_empty((2, 0, 128), torch.float8_e4m3fn)
    s = _zero_stride_empty((2, 0, 1), torch.float32)
    assert dx.quant.dequantize(q, s, block=(128, 128)).shape == (2, 0, 128)
    qt, st = dx.quant.transpose_block_fp8(q, s)
    assert qt.shape == (2, 128, 0) and st.shape == (2, 1, 0)


@pytest.mark.parametrize("op", [dx.quant.per_token_cast_to_fp8, dx.quant.per_block_cast_to_fp8,
                                dx.quant.swiglu_cast_to_fp8, dx.quant.per_token_cast_to_fp8_with_transpose])
@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_pow2_scale_must_be_a_bool(op, bad):
    with pytest.raises(TypeError, match="pow2_scale must be a bool"):
        op(torch.zeros(16, 128), pow2_scale=bad)


@pytest.mark.parametrize("bad, exc", [(128, TypeError), ("1x128", TypeError), ((1, 64), ValueError)])
def test_dequantize_block_type_is_named(bad, exc):
    q, s = dx.quant.per_token_cast_to_fp8(torch.zeros(4, 128))
    with pytest.raises(exc, match="block must be"):
        dx.quant.dequantize(q, s, block=bad)


def test_dequantize_out_dtype_type_is_named():
    q, s = dx.quant.per_token_cast_to_fp8(torch.zeros(4, 128))
    with pytest.raises(TypeError, match="out_dtype must be"):
        dx.quant.dequantize(q, s, out_dtype="float32")
