"""Reference FP8 GEMMs against a float64 product of the dequantized operands (DESIGN.md contract)."""
import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.reference import gemm as ref
from deepseek_ext.reference.metrics import calc_diff
from deepseek_ext.reference.quant import per_block_cast_to_fp8, per_token_cast_to_fp8_with_transpose

LIMIT = {torch.bfloat16: 1e-5, torch.float32: 1e-6}  # vs float64 on the same FP8 operands
UNQUANTIZED_LIMIT = 1e-3  # vs float64 on the unquantized inputs


def dequant_rows(q, s):
    """float64 q * s, one scale per 128 consecutive elements of the last dim."""
    return q.double() * s.double().repeat_interleave(128, -1)[..., : q.shape[-1]]


def dequant_blocks(q, s):
    """float64 q * s, one scale per 128x128 block of the last two dims."""
    rows, cols = q.shape[-2:]
    return q.double() * s.double().repeat_interleave(128, -2).repeat_interleave(128, -1)[..., :rows, :cols]


def random_matrix(*shape, dtype=torch.bfloat16):
    """randn with a magnitude that differs per 128x128 block, so a scale applied to the wrong
    block or row shows up in the error (each 1x128 and 128x128 group keeps one magnitude)."""
    rows, cols = shape[-2:]
    block_gain = 2.0 ** torch.randint(-4, 5, (*shape[:-2], -(-rows // 128), -(-cols // 128))).float()
    gain = block_gain.repeat_interleave(128, -2).repeat_interleave(128, -1)[..., :rows, :cols]
    return (torch.randn(*shape) * gain).to(dtype)


def test_calc_diff_formula():
    ref_values = torch.tensor([1.0, -2.0, 3.0])
    assert calc_diff(ref_values, ref_values) == 0.0
    assert calc_diff(-ref_values, ref_values) == pytest.approx(2.0)
    assert calc_diff(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(1.0)
    assert calc_diff(2 * ref_values, ref_values) == pytest.approx(1 - 2 * 2 / 5)
    assert calc_diff(torch.zeros(3), torch.zeros(3)) == 0.0
    assert calc_diff(torch.empty(0), torch.empty(0)) == 0.0


@pytest.mark.parametrize("m", [1, 7, 64, 200])
@pytest.mark.parametrize("n, k", [(144, 272), (48, 80), (256, 384)])
@pytest.mark.parametrize("b_scaling", ["128x128", "1x128"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fp8_gemm_nt_matches_float64(m, n, k, b_scaling, out_dtype):
    x, w = random_matrix(m, k), random_matrix(n, k)
    a, sa = dx.quant.per_token_cast_to_fp8(x)
    if b_scaling == "128x128":
        b, sb = per_block_cast_to_fp8(w)
        b64 = dequant_blocks(b, sb)
    else:
        b, sb = dx.quant.per_token_cast_to_fp8(w)
        b64 = dequant_rows(b, sb)
    out = ref.fp8_gemm_nt(a, sa, b, sb, out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    assert calc_diff(out, dequant_rows(a, sa) @ b64.T) < LIMIT[out_dtype]


@pytest.mark.parametrize("b_scaling", ["128x128", "1x128"])
def test_fp8_gemm_nt_close_to_unquantized_product(b_scaling):
    x, w = torch.randn(200, 400).bfloat16(), torch.randn(272, 400).bfloat16()
    a, sa = dx.quant.per_token_cast_to_fp8(x)
    b, sb = per_block_cast_to_fp8(w) if b_scaling == "128x128" else dx.quant.per_token_cast_to_fp8(w)
    assert calc_diff(ref.fp8_gemm_nt(a, sa, b, sb), x.double() @ w.double().T) < UNQUANTIZED_LIMIT


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fp8_gemm_nt_accumulates_into_c(out_dtype):
    x, w = random_matrix(7, 272), random_matrix(144, 272)
    a, sa = dx.quant.per_token_cast_to_fp8(x)
    b, sb = per_block_cast_to_fp8(w)
    c = torch.randn(7, 144) * 100
    out = ref.fp8_gemm_nt(a, sa, b, sb, out_dtype, c=c)
    expected = c.double() + dequant_rows(a, sa) @ dequant_blocks(b, sb).T
    assert calc_diff(out, expected) < LIMIT[out_dtype]
    assert torch.equal(out, (c + ref.fp8_gemm_nt(a, sa, b, sb, torch.float32)).to(out_dtype))


def test_fp8_gemm_nt_empty_m_gives_empty_output():
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(0, 272))
    b, sb = per_block_cast_to_fp8(torch.randn(144, 272))
    assert ref.fp8_gemm_nt(a, sa, b, sb).shape == (0, 144)


def test_fp8_gemm_nt_rejects_unknown_b_scale_shape():
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(8, 272))
    b, _ = per_block_cast_to_fp8(torch.randn(144, 272))
    with pytest.raises(ValueError, match=r"sb.shape\[0\] must be N=144 \(1x128 scales\) or ceil\(N/128\)=2"):
        ref.fp8_gemm_nt(a, sa, b, torch.ones(3, 3))


def contiguous_layout(group_sizes, k):
    """Expert-contiguous rows, each group's segment padded to M_ALIGNMENT with random (not zero)
    rows that the GEMM must ignore; returns x, m_indices."""
    segments, indices = [], []
    for g, size in enumerate(group_sizes):
        padded = -(-size // ref.M_ALIGNMENT) * ref.M_ALIGNMENT
        segments.append(random_matrix(padded, k))
        indices.append(torch.tensor([g] * size + [-1] * (padded - size), dtype=torch.int32))
    x = torch.cat(segments) if segments else torch.zeros(0, k, dtype=torch.bfloat16)
    m_indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int32)
    return x, m_indices


@pytest.mark.parametrize("group_sizes", [[0, 1, 130, 57], [300], [0, 300, 0], [1, 1, 1], [0, 0]])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_m_grouped_contiguous_matches_per_row_float64(group_sizes, out_dtype):
    n, k = 144, 272
    x, m_indices = contiguous_layout(group_sizes, k)
    a, sa = dx.quant.per_token_cast_to_fp8(x)
    b, sb = per_block_cast_to_fp8(random_matrix(len(group_sizes), n, k))
    out = ref.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, out_dtype)
    assert out.shape == (x.shape[0], n) and out.dtype == out_dtype
    padding = m_indices < 0
    assert torch.all(out[padding] == 0)
    a64, b64 = dequant_rows(a, sa), dequant_blocks(b, sb)
    rows = (~padding).nonzero().squeeze(1).tolist()
    if rows:
        expected = torch.stack([b64[m_indices[i]] @ a64[i] for i in rows])
        assert calc_diff(out[rows], expected) < LIMIT[out_dtype]


@pytest.mark.parametrize("masked_m", [[0, 40, 7], [1, 1, 1], [40, 0, 0]])
def test_m_grouped_masked_computes_only_the_first_rows(masked_m):
    g, m_max, n, k = 3, 40, 48, 208
    a, sa = dx.quant.per_token_cast_to_fp8(random_matrix(g, m_max, k))
    b, sb = per_block_cast_to_fp8(random_matrix(g, n, k))
    masked = torch.tensor(masked_m, dtype=torch.int32)
    out = ref.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked, expected_m=16)
    assert out.shape == (g, m_max, n)
    a64, b64 = dequant_rows(a, sa), dequant_blocks(b, sb)
    again = ref.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked, expected_m=1)
    for group, rows in enumerate(masked_m):  # rows past masked_m are unspecified: never compared
        if rows:
            assert calc_diff(out[group, :rows], a64[group, :rows] @ b64[group].T) < LIMIT[torch.bfloat16]
            assert torch.equal(out[group, :rows], again[group, :rows])


def k_grouped_operands(group_sizes, n, k):
    t = sum(group_sizes)
    dy, x = random_matrix(t, n).T.contiguous().T, torch.randn(t, k).bfloat16()
    _, _, a, sa = per_token_cast_to_fp8_with_transpose(dy)
    _, _, b, sb = per_token_cast_to_fp8_with_transpose(x)
    return dy, x, a, sa, b, sb


@pytest.mark.parametrize("group_sizes", [[128, 0, 256, 128], [512], [0, 0, 128]])
def test_k_grouped_matches_float64_and_dense_per_group(group_sizes):
    n, k = 48, 80
    dy, x, a, sa, b, sb = k_grouped_operands(group_sizes, n, k)
    c = torch.randn(len(group_sizes), n, k)
    out = ref.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, group_sizes)
    out_c = ref.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, torch.tensor(group_sizes), c=c)
    assert out.shape == (len(group_sizes), n, k) and out.dtype == torch.float32
    a64, b64 = dequant_rows(a, sa), dequant_rows(b, sb)
    start = 0
    for g, size in enumerate(group_sizes):
        seg, blocks = slice(start, start + size), slice(start // 128, (start + size) // 128)
        start += size
        if size == 0:
            assert torch.all(out[g] == 0) and torch.equal(out_c[g], c[g])
            continue
        assert calc_diff(out[g], a64[:, seg] @ b64[:, seg].T) < LIMIT[torch.float32]
        assert calc_diff(out[g], dy[seg].double().T @ x[seg].double()) < UNQUANTIZED_LIMIT
        dense = ref.fp8_gemm_nt(a[:, seg].contiguous(), sa[:, blocks], b[:, seg].contiguous(), sb[:, blocks],
                                torch.float32)
        assert torch.equal(out[g], dense)
        assert torch.equal(out_c[g], c[g] + dense)
