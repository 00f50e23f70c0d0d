"""Fuzz the public ops (dx.quant, the four dx.gemm GEMMs, the permute ops) on the reference path:
random shapes (0 and odd sizes included), dtypes, strides and argument types. Every call either
matches deepseek_ext.reference on a contiguous copy of its inputs, or raises ValueError/TypeError
whose message names an argument. Fixed, derandomized example budget."""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

import deepseek_ext as dx
from deepseek_ext.reference import gemm as ref_gemm, permute as ref_perm, quant as ref_quant

F8 = torch.float8_e4m3fn
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
ARG_NAMES = r"\b(x|w|gate_up|q|s|a|sa|b|sb|c|m_indices|masked_m|expected_m|group_sizes|out_dtype|block|" \
            r"pow2_scale|topk_idx|x_scales|num_experts|alignment|y|inverse_map|topk_weights)\b"

pytestmark = pytest.mark.usefixtures("reference_backend")


@pytest.fixture
def reference_backend(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "reference")


def _named(err: Exception) -> None:
    assert isinstance(err, (ValueError, TypeError)), repr(err)
    assert re.search(ARG_NAMES, str(err)), f"message names no argument: {err}"


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except (ValueError, TypeError) as err:
        _named(err)
        return None, err


def _same(got, want) -> None:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert g.shape == w.shape and g.dtype == w.dtype
        gb = g.view(torch.uint8) if g.dtype == F8 else g
        wb = w.view(torch.uint8) if w.dtype == F8 else w
        assert torch.equal(gb, wb) or torch.allclose(gb.float(), wb.float(), equal_nan=True)


sizes = st.sampled_from([0, 1, 3, 16, 17, 32, 130])
ks = st.sampled_from([0, 15, 16, 32, 48, 128, 144])
layouts = st.sampled_from(["contiguous", "transposed", "sliced", "zero_stride_empty"])
flags = st.one_of(st.booleans(), st.sampled_from(["yes", 1, None, 0.0]))


def _make(shape, dtype, layout, gen):
    if layout == "zero_stride_empty":
        shape = (0, *shape[1:])
        return torch.empty(0, dtype=dtype).as_strided(shape, (0,) * len(shape))
    t = (torch.randn(shape, generator=gen) * 4).to(dtype)
    if layout == "transposed" and len(shape) >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced" and shape[-1] > 1:
        wide = (torch.randn((*shape[:-1], shape[-1] + 16), generator=gen) * 4).to(dtype)
        return wide[..., 1:shape[-1] + 1]
    return t


@SETTINGS
@given(op=st.sampled_from(["per_token", "per_block", "swiglu", "with_transpose"]), batch=st.sampled_from([(), (2,), (0,)]),
       m=sizes, k=ks, dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int32]),
       layout=layouts, pow2=flags, seed=st.integers(0, 2**16))
def test_fuzz_casts(op, batch, m, k, dtype, layout, pow2, seed):
    gen = torch.Generator().manual_seed(seed)
    x = _make((*batch, m, k), dtype, layout, gen)
    fn = {"per_token": dx.quant.per_token_cast_to_fp8, "per_block": dx.quant.per_block_cast_to_fp8,
          "swiglu": dx.quant.swiglu_cast_to_fp8,
          "with_transpose": dx.quant.per_token_cast_to_fp8_with_transpose}[op]
    got, err = _call(fn, x, pow2_scale=pow2)
    if err is None:
        oracle = {"per_token": ref_quant.per_token_cast_to_fp8, "per_block": ref_quant.per_block_cast_to_fp8,
                  "swiglu": ref_quant.swiglu_cast_to_fp8,
                  "with_transpose": ref_quant.per_token_cast_to_fp8_with_transpose}[op]
        _same(got, oracle(x.contiguous(), pow2))
        if op in ("per_token", "per_block") and x.numel():  # independent check: dequantized close to x
            block = (1, 128) if op == "per_token" else (128, 128)
            back = ref_quant.dequantize(got[0], got[1], block)
            assert torch.allclose(back, x.float(), rtol=0.07, atol=1e-30)


blocks = st.one_of(st.none(), st.sampled_from([(1, 128), (128, 128), [1, 128], 128, (1, 64), "x"]))


@SETTINGS
@given(batch=st.sampled_from([(), (3,), (0,)]), m=sizes, k=ks, per_block=st.booleans(), block=blocks,
       out_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, "float32"]), transpose=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fuzz_dequantize_and_transpose(batch, m, k, per_block, block, out_dtype, transpose, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((*batch, m, k), generator=gen)
    cast = ref_quant.per_block_cast_to_fp8 if per_block else ref_quant.per_token_cast_to_fp8
    q, s = cast(x) if k % 16 == 0 else (x.to(F8), torch.ones((*batch, m, (k + 127) // 128)))
    if transpose:
        got, err = _call(dx.quant.transpose_block_fp8, q, s)
        if err is None:
            _same(got, (q.transpose(-1, -2).contiguous(), s.transpose(-1, -2).contiguous()))
        return
    got, err = _call(dx.quant.dequantize, q, s, block, out_dtype)
    if err is None:
        inferred = block if block is not None else ((1, 128) if s.shape[-2] == m else (128, 128))
        _same(got, ref_quant.dequantize(q, s, tuple(inferred), out_dtype))


def _fp8_operand(rows, k, gen, scales="token", batch=()):
    x = torch.randn((*batch, rows, k), generator=gen)
    if scales == "block":
        return ref_quant.per_block_cast_to_fp8(x)
    return ref_quant.per_token_cast_to_fp8(x)


@SETTINGS
@given(m=sizes, n=st.sampled_from([0, 16, 17, 144]), k=ks, block_b=st.booleans(), with_c=st.booleans(),
       out_dtype=st.sampled_from([torch.bfloat16, torch.float32, torch.int8]), seed=st.integers(0, 2**16))
def test_fuzz_fp8_gemm_nt(m, n, k, block_b, with_c, out_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if k % 16:
        a, sa, b, sb = torch.zeros(m, k, dtype=F8), torch.ones(m, 1), torch.zeros(n, k, dtype=F8), torch.ones(n, 1)
    else:
        (a, sa), (b, sb) = _fp8_operand(m, k, gen), _fp8_operand(n, k, gen, "block" if block_b else "token")
    c = torch.randn(m, n, generator=gen) if with_c else None
    got, err = _call(dx.gemm.fp8_gemm_nt, a, sa, b, sb, out_dtype, c)
    if err is None:
        _same(got, ref_gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype, c))
        if m and n:  # independent formula
            want = ref_quant.dequantize(a, sa, (1, 128)) @ ref_quant.dequantize(
                b, sb, (128, 128) if sb.shape[0] != n or n == 0 else (1, 128)).T
            want = want + (c if c is not None else 0)
            assert torch.allclose(got.float(), want, rtol=0.02, atol=0.05 * (k ** 0.5 + 1))


@SETTINGS
@given(groups=st.integers(0, 3), rows=st.sampled_from([0, 128, 256, 100]), n=st.sampled_from([16, 17]),
       k=st.sampled_from([0, 16, 128]), idx_dtype=st.sampled_from([torch.int32, torch.int64]), seed=st.integers(0, 2**16))
def test_fuzz_m_grouped_contiguous(groups, rows, n, k, idx_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    a, sa = _fp8_operand(rows, k, gen)
    b, sb = _fp8_operand(n * max(groups, 1), k, gen, "block")
    b = torch.zeros(groups, n, k, dtype=F8)
    sb = torch.ones(groups, (n + 127) // 128, (k + 127) // 128)
    blocks = torch.randint(-1, max(groups, 1), (max(rows // 128, 1),), generator=gen)
    m_indices = blocks.repeat_interleave(128)[:rows].to(idx_dtype)
    got, err = _call(dx.gemm.m_grouped_fp8_gemm_nt_contiguous, a, sa, b, sb, m_indices)
    if err is None:
        _same(got, ref_gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, torch.bfloat16))


@SETTINGS
@given(groups=st.integers(0, 3), m_max=sizes, k=st.sampled_from([0, 16, 128]), expected_m=st.sampled_from([1, 0, True, 2.0]),
       seed=st.integers(0, 2**16))
def test_fuzz_m_grouped_masked(groups, m_max, k, expected_m, seed):
    gen = torch.Generator().manual_seed(seed)
    a, sa = _fp8_operand(m_max, k, gen, batch=(groups,))
    b, sb = _fp8_operand(16, k, gen, "block", batch=(groups,))
    masked_m = torch.randint(0, m_max + 2, (groups,), generator=gen, dtype=torch.int32)
    got, err = _call(dx.gemm.m_grouped_fp8_gemm_nt_masked, a, sa, b, sb, masked_m, expected_m)
    if err is None:  # only the first masked_m[g] rows of each group are defined
        want = ref_gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, expected_m, torch.bfloat16)
        assert got.shape == want.shape and got.dtype == want.dtype
        rows = torch.arange(m_max)[None, :] < masked_m[:, None]
        _same(got[rows], want[rows])


@SETTINGS
@given(sizes_=st.lists(st.sampled_from([0, 128, 256, 64]), max_size=3), n=st.sampled_from([0, 16, 17]),
       as_tensor=st.booleans(), with_c=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz_k_grouped(sizes_, n, as_tensor, with_c, seed):
    gen = torch.Generator().manual_seed(seed)
    t = sum(sizes_)
    x = torch.randn(n, t, generator=gen)
    a, sa = ref_quant.per_token_cast_to_fp8(x) if t % 16 == 0 else (x.to(F8), torch.ones(n, 1))
    b, sb = ref_quant.per_token_cast_to_fp8(torch.randn(16, t, generator=gen)) if t % 16 == 0 else (None, None)
    if b is None:
        return
    group_sizes = torch.tensor(sizes_, dtype=torch.int64) if as_tensor else sizes_
    c = torch.randn(len(sizes_), n, 16, generator=gen) if with_c else None
    got, err = _call(dx.gemm.k_grouped_fp8_gemm_tn_contiguous, a, sa, b, sb, group_sizes, c)
    if err is None:
        _same(got, ref_gemm.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, list(sizes_), c))


@SETTINGS
@given(tokens=sizes, hidden=st.sampled_from([0, 8, 128, 136, 7]), topk=st.integers(0, 3), num_experts=st.sampled_from([1, 4, 0, True, 2**40]),
       alignment=st.sampled_from([1, 4, 128, 0, 2**31, "128"]), fp8=st.booleans(), layout=layouts, seed=st.integers(0, 2**16))
def test_fuzz_permute_round_trip(tokens, hidden, topk, num_experts, alignment, fp8, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    x = _make((tokens, hidden), torch.bfloat16, layout, gen)
    experts = num_experts if isinstance(num_experts, int) and not isinstance(num_experts, bool) and 0 < num_experts < 64 else 4
    idx = torch.randint(-1, experts, (x.shape[0], topk), generator=gen)
    if fp8 and hidden % 16 == 0:
        xq, xs = ref_quant.per_token_cast_to_fp8(x.float()) if x.numel() else (x.to(F8), torch.ones(x.shape[0], (hidden + 127) // 128))
    else:
        xq, xs = x, None
    got, err = _call(dx.gemm.permute_to_grouped, xq, xs, idx, num_experts, alignment)
    if err is not None:
        return
    want = ref_perm.permute_to_grouped(xq.contiguous(), xs, idx, num_experts, alignment)
    _same(got, want)
    out, _, m_indices, inverse_map = got
    weights = torch.rand(idx.shape, generator=gen)
    y = out.float() if out.dtype == F8 else out
    back, err = _call(dx.gemm.unpermute_from_grouped, y, inverse_map, weights)
    if err is None:
        _same(back, ref_perm.unpermute_from_grouped(y, inverse_map, weights))
        if xs is None and hidden:  # independent: the weighted sum of each token's routed copies
            want = (x.float()[:, None, :] * (weights * (idx >= 0))[..., None]).sum(1)
            assert torch.allclose(back.float(), want, rtol=0.02, atol=1e-2)
