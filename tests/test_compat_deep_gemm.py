"""deepseek_ext.compat.deep_gemm: DeepGEMM-style calls with DeepGEMM-layout scales give dx.gemm's
results bit for bit; bad input raises errors that name the argument."""
import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.compat import deep_gemm

M, N, K = 200, 272, 400  # partial last 128-blocks along every dim


def bf16(*shape):
    return torch.randn(*shape, dtype=torch.bfloat16)


def row_major(s):
    """Scales as DeepGEMM's casts return them: plain row-major."""
    out = s.contiguous()
    assert out.stride(-1) == 1
    return out


def test_fp8_gemm_nt_with_row_major_scales_matches_dx_gemm():
    torch.manual_seed(0)
    aq, sa = dx.quant.per_token_cast_to_fp8(bf16(M, K))
    bq, sb = dx.quant.per_block_cast_to_fp8(bf16(N, K))
    d = torch.empty(M, N, dtype=torch.bfloat16)
    deep_gemm.fp8_gemm_nt((aq, row_major(sa)), (bq, sb), d)
    assert torch.equal(d, dx.gemm.fp8_gemm_nt(aq, sa, bq, sb))
    # DeepGEMM also takes the transposed-contiguous 128x128 scales of b, and per-operand recipes
    d.zero_()
    deep_gemm.fp8_gemm_nt((aq, row_major(sa)), (bq, sb.T.contiguous().T), d, recipe_a=(1, 128), recipe_b=(128, 128))
    assert torch.equal(d, dx.gemm.fp8_gemm_nt(aq, sa, bq, sb))


def test_fp8_gemm_nt_accumulates_into_d_with_1x128_b_scales():
    torch.manual_seed(1)
    aq, sa = dx.quant.per_token_cast_to_fp8(bf16(M, K))
    bq, sb = dx.quant.per_token_cast_to_fp8(bf16(N, K))  # Wgrad-style: 1x128 scales on b
    c = torch.randn(M, N) * 32
    d = c.clone()
    deep_gemm.fp8_gemm_nt((aq, row_major(sa)), (bq, row_major(sb)), d, c=d, recipe=(1, 1, 128))
    assert torch.equal(d, dx.gemm.fp8_gemm_nt(aq, sa, bq, sb, out_dtype=torch.float32, c=c))


def test_transform_sf_into_required_layout_is_the_gemm_layout_once():
    torch.manual_seed(2)
    rows = 201  # not a multiple of 4: the layout pads the columns
    _, sa = dx.quant.per_token_cast_to_fp8(bf16(rows, K))
    moved = deep_gemm.transform_sf_into_required_layout(row_major(sa), rows, K, recipe=(1, 128, 128), is_sfa=True)
    assert torch.equal(moved, sa)
    assert moved.stride() == (1, deep_gemm.get_tma_aligned_size(rows, 4))
    assert deep_gemm.transform_sf_into_required_layout(moved, rows, K, recipe_ab=(1, 128)) is moved
    _, sb = dx.quant.per_block_cast_to_fp8(bf16(N, K))
    assert deep_gemm.transform_sf_into_required_layout(sb, N, K, recipe=(1, 128, 128)) is sb
    assert deep_gemm.get_tma_aligned_size(201, 4) == 204 and deep_gemm.get_tma_aligned_size(5, 2) == 8
    assert deep_gemm.get_mk_alignment_for_contiguous_layout() == dx.gemm.M_ALIGNMENT == 128
    assert deep_gemm.get_m_alignment_for_contiguous_layout() == deep_gemm.get_k_alignment_for_contiguous_layout() == 128


def grouped_inputs(sizes, n=N, k=K):
    """A contiguous grouped layout: group g's sizes[g] rows, padded to 128 with -1."""
    layout = torch.cat([torch.cat([torch.full((s,), g), torch.full((-s % 128,), -1)]) for g, s in enumerate(sizes)])
    x = bf16(layout.numel(), k) * (layout >= 0)[:, None]
    bq, sb = dx.quant.per_block_cast_to_fp8(bf16(len(sizes), n, k))
    return x, layout.to(torch.int32), bq, sb


def test_m_grouped_contiguous_matches_dx_gemm():
    torch.manual_seed(3)
    x, layout, bq, sb = grouped_inputs([70, 128, 3])
    aq, sa = dx.quant.per_token_cast_to_fp8(x)
    d = torch.full((x.shape[0], N), float("nan"), dtype=torch.bfloat16)
    deep_gemm.m_grouped_fp8_gemm_nt_contiguous((aq, row_major(sa)), (bq, sb), d, layout)
    assert torch.equal(d, dx.gemm.m_grouped_fp8_gemm_nt_contiguous(aq, sa, bq, sb, layout))


def test_m_grouped_masked_matches_dx_gemm():
    torch.manual_seed(4)
    groups, m_max = 3, 96
    aq, sa = dx.quant.per_token_cast_to_fp8(bf16(groups, m_max, K))
    bq, sb = dx.quant.per_block_cast_to_fp8(bf16(groups, N, K))
    masked_m = torch.tensor([96, 0, 41], dtype=torch.int32)
    d = torch.full((groups, m_max, N), float("nan"), dtype=torch.bfloat16)
    deep_gemm.m_grouped_fp8_gemm_nt_masked((aq, row_major(sa)), (bq, sb), d, masked_m, expected_m=64)
    rows = torch.arange(d.shape[1])[None, :] < masked_m[:, None]
    assert torch.equal(d[rows], dx.gemm.m_grouped_fp8_gemm_nt_masked(aq, sa, bq, sb, masked_m, 64)[rows])
    assert d[~rows].isnan().all()  # rows >= masked_m keep what d held


def test_k_grouped_tn_with_per_channel_operands_matches_dx_gemm():
    torch.manual_seed(5)
    ks, m, n = [256, 0, 128], 48, 80
    a, b = bf16(sum(ks), m), bf16(sum(ks), n)
    a_fp8 = deep_gemm.per_channel_cast_to_fp8(a, use_ue8m0=False)
    b_fp8 = deep_gemm.per_channel_cast_to_fp8(b, use_ue8m0=False)
    assert a_fp8[0].shape == (sum(ks), m) and a_fp8[1].shape == (sum(ks) // 128, m) and a_fp8[1].is_contiguous()
    c = torch.randn(len(ks), m, n)
    d = c.clone()
    deep_gemm.k_grouped_fp8_gemm_tn_contiguous(a_fp8, b_fp8, d, ks, torch.tensor(ks, dtype=torch.int32), c=d)
    aq, sa = dx.quant.per_token_cast_to_fp8(a.T.contiguous())
    bq, sb = dx.quant.per_token_cast_to_fp8(b.T.contiguous())
    assert torch.equal(d, dx.gemm.k_grouped_fp8_gemm_tn_contiguous(aq, sa, bq, sb, ks, c))
    exact = torch.stack([c[0] + a[:256].float().T @ b[:256].float(), c[1], c[2] + a[256:].float().T @ b[256:].float()])
    assert float(deep_gemm.calc_diff(d, exact)) < 1e-3


def test_casts_follow_dx_quant_and_ue8m0_means_power_of_two_scales():
    torch.manual_seed(6)
    x = bf16(33, 272)
    q, s = deep_gemm.per_token_cast_to_fp8(x, use_ue8m0=True)
    want_q, want_s = dx.quant.per_token_cast_to_fp8(x, pow2_scale=True)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(s, want_s)
    assert torch.equal(torch.frexp(s).mantissa, torch.full_like(s, 0.5))  # every scale a power of two
    q, s = deep_gemm.per_block_cast_to_fp8(x, use_ue8m0=False)
    want_q, want_s = dx.quant.per_block_cast_to_fp8(x)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(s, want_s)
    diff = deep_gemm.calc_diff(x.float(), x.float() + 0.01)
    assert isinstance(diff, torch.Tensor) and diff.dtype == torch.float64 and 0 < float(diff) < 1e-3


def test_bad_input_is_named():
    torch.manual_seed(7)
    aq, sa = dx.quant.per_token_cast_to_fp8(bf16(32, 256))
    bq, sb = dx.quant.per_block_cast_to_fp8(bf16(48, 256))
    d = torch.empty(32, 48, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="packed UE8M0"):
        deep_gemm.fp8_gemm_nt((aq, sa.view(torch.int32)), (bq, sb), d)
    with pytest.raises(TypeError, match="a must be a \\(tensor, scales\\) pair"):
        deep_gemm.fp8_gemm_nt(aq, (bq, sb), d)
    with pytest.raises(ValueError, match=r"a\[1\] must have shape \(32, 2\)"):
        deep_gemm.fp8_gemm_nt((aq, sa[:, :1]), (bq, sb), d)
    with pytest.raises(ValueError, match=r"d must have shape \(32, 48\)"):
        deep_gemm.fp8_gemm_nt((aq, sa), (bq, sb), d[:, :16])
    with pytest.raises(TypeError, match="d must have dtype"):
        deep_gemm.fp8_gemm_nt((aq, sa), (bq, sb), d.half())
    with pytest.raises(TypeError, match="d must be float32 when c is given"):
        deep_gemm.fp8_gemm_nt((aq, sa), (bq, sb), d, c=torch.zeros(32, 48))
    with pytest.raises(NotImplementedError, match="gran_k=32"):
        deep_gemm.fp8_gemm_nt((aq, sa), (bq, sb), d, recipe=(1, 128, 32))
    with pytest.raises(ValueError, match="recipe must be one of"):
        deep_gemm.fp8_gemm_nt((aq, sa), (bq, sb), d, recipe=(128, 128, 128))
    with pytest.raises(NotImplementedError, match="use_psum_layout"):
        deep_gemm.m_grouped_fp8_gemm_nt_contiguous((aq, sa), (bq[None], sb[None]), d,
                                                   torch.zeros(32, dtype=torch.int32), use_psum_layout=True)
    with pytest.raises(NotImplementedError, match="128x128 scales for b"):
        deep_gemm.m_grouped_fp8_gemm_nt_masked((aq[None], sa[None]), (bq[None], sb[None]), d[None],
                                               torch.ones(1, dtype=torch.int32), 1, recipe=(1, 1, 128))
    with pytest.raises(NotImplementedError, match="use_packed_ue8m0"):
        deep_gemm.per_token_cast_to_fp8(bf16(4, 128), use_ue8m0=True, use_packed_ue8m0=True)
    with pytest.raises(TypeError, match="use_ue8m0 must be a bool"):
        deep_gemm.per_block_cast_to_fp8(bf16(4, 128), use_ue8m0=None)
    with pytest.raises(ValueError, match="x.shape\\[0\\] must be a multiple of 128"):
        deep_gemm.per_channel_cast_to_fp8(bf16(100, 128), use_ue8m0=False)
    with pytest.raises(ValueError, match="exactly one of recipe"):
        deep_gemm.transform_sf_into_required_layout(sa, 32, 256)
