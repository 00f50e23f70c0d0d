"""Reference expert-parallel dispatch/combine over simulated ranks, against computations
written independently here from the unsplit routing."""
import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.reference import ep
from deepseek_ext.reference.quant import per_block_cast_to_fp8

HIDDEN = 256


def random_routing(num_tokens, num_experts, topk, empty_slot_fraction=0.2):
    """Distinct experts per token, some slots -1; weights in (0, 1]."""
    idx = torch.rand(num_tokens, num_experts).argsort(dim=1)[:, :topk]
    idx[torch.rand(num_tokens, topk) < empty_slot_fraction] = -1
    return idx, torch.rand(num_tokens, topk) + 1e-3


def make_ranks(tokens_per_rank, num_experts, topk, **routing):
    xs, idxs, weights = [], [], []
    for tokens in tokens_per_rank:
        idx, w = random_routing(tokens, num_experts, topk, **routing)
        xs.append(torch.randn(tokens, HIDDEN).bfloat16())
        idxs.append(idx)
        weights.append(w)
    return xs, idxs, weights


def ranks_of_token(experts, num_experts, num_ranks):
    return sorted({e // (num_experts // num_ranks) for e in experts if e >= 0})


def expected_receive_order(idxs, num_experts, dst):
    """(source rank, source token) pairs a rank receives: source ranks ascending, tokens ascending."""
    return [(src, t) for src, idx in enumerate(idxs) for t, experts in enumerate(idx.tolist())
            if dst in ranks_of_token(experts, num_experts, len(idxs))]


def expert_gain(num_experts):
    return torch.linspace(0.5, 2.0, num_experts)  # expert e computes x * gain[e]


def direct_moe(xs, idxs, weights, num_experts):
    """Single-process MoE over the unsplit routing: sum_j w_j * gain[e_j] * x, in float64."""
    gain = expert_gain(num_experts).double()
    outputs = []
    for x, idx, w in zip(xs, idxs, weights):
        out = torch.zeros(x.shape, dtype=torch.float64)
        for t, experts in enumerate(idx.tolist()):
            for j, e in enumerate(experts):
                if e >= 0:
                    out[t] += w[t, j].double() * gain[e] * x[t].double()
        outputs.append(out)
    return outputs


ROUTINGS = {
    "random": dict(tokens_per_rank=[37, 20, 64, 5], num_experts=16, topk=4),
    "rank without tokens": dict(tokens_per_rank=[30, 0, 17], num_experts=6, topk=2),
    "one rank": dict(tokens_per_rank=[33], num_experts=4, topk=3),
}


def build(name, **routing):
    spec = ROUTINGS[name]
    xs, idxs, weights = make_ranks(spec["tokens_per_rank"], spec["num_experts"], spec["topk"], **routing)
    return xs, idxs, weights, spec["num_experts"]


def skewed(num_ranks=4, tokens=24, num_experts=8, topk=3):
    """Every token goes to expert 5 only (its other slots are -1)."""
    xs, idxs, weights = make_ranks([tokens] * num_ranks, num_experts, topk, empty_slot_fraction=0.0)
    for idx in idxs:
        idx[:] = -1
        idx[:, 1] = 5
    return xs, idxs, weights, num_experts


def all_cases():
    return [build(name) for name in ROUTINGS] + [skewed()]


CASE_IDS = list(ROUTINGS) + ["all to one expert"]


# --- layout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_dispatch_layout_counts(case):
    _, idxs, _, num_experts = all_cases()[case]
    num_ranks = len(idxs)
    for idx in idxs:
        per_rank, per_expert = [0] * num_ranks, [0] * num_experts
        in_rank = [[False] * num_ranks for _ in range(idx.shape[0])]
        for t, experts in enumerate(idx.tolist()):
            for e in experts:
                if e >= 0:
                    per_expert[e] += 1
            for r in ranks_of_token(experts, num_experts, num_ranks):
                per_rank[r] += 1
                in_rank[t][r] = True
        layout = ep.get_dispatch_layout(idx, num_experts, num_ranks)
        assert layout.num_tokens_per_rank.tolist() == per_rank
        assert layout.num_tokens_per_expert.tolist() == per_expert
        assert layout.is_token_in_rank.dtype == torch.bool
        assert layout.is_token_in_rank.tolist() == (in_rank if in_rank else [])


def test_experts_must_split_evenly():
    with pytest.raises(ValueError, match=r"num_experts \(10\) must be divisible by the number of ranks \(4\)"):
        ep.get_dispatch_layout(torch.zeros(1, 1, dtype=torch.long), 10, 4)
    xs, idxs, weights, num_experts = build("random")
    with pytest.raises(ValueError, match=r"expert_alignment must be >= 1, got 0"):
        ep.dispatch(xs, idxs, weights, num_experts, expert_alignment=0)


# --- token-major dispatch (expert_alignment=1) ------------------------------------------------

@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_dispatch_receives_each_token_once_per_rank_in_canonical_order(case):
    xs, idxs, weights, num_experts = all_cases()[case]
    local = num_experts // len(xs)
    results = ep.dispatch(xs, idxs, weights, num_experts)
    for dst, result in enumerate(results):
        order = expected_receive_order(idxs, num_experts, dst)
        assert list(zip(result.handle.src_rank.tolist(), result.handle.src_token.tolist())) == order
        assert result.x_scales is None and result.m_indices is None
        assert result.x.shape == (len(order), HIDDEN)
        counts = [0] * local
        for row, (src, t) in enumerate(order):
            assert torch.equal(result.x[row], xs[src][t])
            for j, e in enumerate(idxs[src][t].tolist()):
                here = e >= 0 and e // local == dst
                assert result.topk_idx[row, j] == (e - dst * local if here else -1)
                assert result.topk_weights[row, j] == (weights[src][t, j] if here else 0)
                if here:
                    counts[e - dst * local] += 1
        assert result.num_tokens_per_expert == counts


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_combine_of_received_x_counts_the_ranks_each_token_visited(case):
    xs, idxs, weights, num_experts = all_cases()[case]
    results = ep.dispatch(xs, idxs, weights, num_experts)
    outputs = ep.combine([r.x for r in results], [r.handle for r in results])
    for x, idx, out in zip(xs, idxs, outputs):
        visits = torch.tensor([len(ranks_of_token(e, num_experts, len(xs))) for e in idx.tolist()])
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, (x.float() * visits[:, None]).bfloat16())


def token_major_experts(result, rank, num_experts, num_ranks):
    """What a user does between dispatch and combine: y[row] = sum over local slots of
    w * gain[expert] * x, reduced per received token in fp32."""
    gain = expert_gain(num_experts)
    local = num_experts // num_ranks
    y = torch.zeros(result.x.shape, dtype=torch.float32)
    for j in range(result.topk_idx.shape[1]):
        here = result.topk_idx[:, j] >= 0
        slot_gain = gain[(result.topk_idx[:, j] + rank * local).clamp(min=0)]
        y += torch.where(here, result.topk_weights[:, j] * slot_gain, 0.0)[:, None] * result.x.float()
    return y.bfloat16()


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_combine_equals_single_process_moe(case):
    xs, idxs, weights, num_experts = all_cases()[case]
    results = ep.dispatch(xs, idxs, weights, num_experts)
    ys = [token_major_experts(r, rank, num_experts, len(xs)) for rank, r in enumerate(results)]
    outputs = ep.combine(ys, [r.handle for r in results])
    for out, expected in zip(outputs, direct_moe(xs, idxs, weights, num_experts)):
        assert out.shape == expected.shape
        torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=1e-2)
        assert dx.gemm.calc_diff(out, expected) < 1e-4


def test_dispatch_fp8_carries_scales_in_gemm_layout():
    _, idxs, weights, num_experts = build("random")
    pairs = [dx.quant.per_token_cast_to_fp8(torch.randn(idx.shape[0], HIDDEN)) for idx in idxs]
    for dst, result in enumerate(ep.dispatch(pairs, idxs, weights, num_experts)):
        order = expected_receive_order(idxs, num_experts, dst)
        assert result.x.dtype == torch.float8_e4m3fn and result.x_scales.shape == (len(order), 2)
        if len(order) > 1:
            assert result.x_scales.stride(-2) == 1  # M-major, as the grouped GEMM reads it
        for row, (src, t) in enumerate(order):
            assert torch.equal(result.x[row].view(torch.uint8), pairs[src][0][t].view(torch.uint8))
            assert torch.equal(result.x_scales[row], pairs[src][1][t])


# --- expert-contiguous dispatch (expert_alignment > 1) ----------------------------------------

def expected_expert_rows(result_token_major, local_experts, alignment):
    """Per local expert ascending: the received tokens holding it (ascending) and their slot
    weights, then -1 padding up to a multiple of alignment."""
    tokens, weights, experts = [], [], []
    for e in range(local_experts):
        count = 0
        for row, slots in enumerate(result_token_major.topk_idx.tolist()):
            if e in slots:
                tokens.append(row)
                weights.append(float(result_token_major.topk_weights[row, slots.index(e)]))
                experts.append(e)
                count += 1
        pad = -count % alignment
        tokens += [-1] * pad
        weights += [0.0] * pad
        experts += [-1] * pad
    return tokens, weights, experts


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_expert_aligned_layout(case, fp8):
    xs, idxs, weights, num_experts = all_cases()[case]
    local = num_experts // len(xs)
    inputs = [dx.quant.per_token_cast_to_fp8(x) for x in xs] if fp8 else xs
    token_major = ep.dispatch(inputs, idxs, weights, num_experts)
    aligned = ep.dispatch(inputs, idxs, weights, num_experts, expert_alignment=128)
    for plain, result in zip(token_major, aligned):
        tokens, row_weights, experts = expected_expert_rows(plain, local, 128)
        assert result.m_indices.dtype == torch.int32 and result.m_indices.tolist() == experts
        assert result.handle.row_token.tolist() == tokens
        assert result.handle.row_weight.tolist() == pytest.approx(row_weights, abs=0)
        assert [experts.count(e) for e in range(local)] == plain.num_tokens_per_expert
        padded_counts = [-(-n // 128) * 128 for n in plain.num_tokens_per_expert]
        assert result.num_tokens_per_expert == padded_counts and sum(padded_counts) == len(tokens)
        assert torch.equal(result.topk_idx, plain.topk_idx) and torch.equal(result.topk_weights, plain.topk_weights)
        token = torch.tensor(tokens, dtype=torch.long)
        real = token >= 0
        x_bits = result.x.view(torch.uint8) if fp8 else result.x
        plain_bits = plain.x.view(torch.uint8) if fp8 else plain.x
        assert torch.equal(x_bits[real], plain_bits[token[real]])
        assert not x_bits[~real].any()
        if fp8:
            assert torch.equal(result.x_scales[real], plain.x_scales[token[real]])
            assert not result.x_scales[~real].any()
            if result.x_scales.shape[0] > 1:
                assert result.x_scales.stride(-2) == 1


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_combine_over_expert_rows_equals_single_process_moe(case):
    xs, idxs, weights, num_experts = all_cases()[case]
    local = num_experts // len(xs)
    gain = expert_gain(num_experts)
    results = ep.dispatch(xs, idxs, weights, num_experts, expert_alignment=128)
    ys = []
    for rank, result in enumerate(results):
        expert = result.m_indices.long()
        y = (result.x.float() * gain[(expert + rank * local).clamp(min=0)][:, None]).bfloat16()
        y[expert < 0] = float("nan")  # padding rows must never be read
        ys.append(y)
    outputs = ep.combine(ys, [r.handle for r in results])
    for out, expected in zip(outputs, direct_moe(xs, idxs, weights, num_experts)):
        torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=1e-2)
        assert dx.gemm.calc_diff(out, expected) < 1e-4


def test_fp8_dispatch_feeds_the_grouped_gemm():
    """dispatch(FP8, alignment 128) -> m_grouped_fp8_gemm_nt_contiguous -> combine equals the
    MoE computed token by token on the dequantized inputs."""
    xs, idxs, weights, num_experts = build("random")
    n = 64
    w = torch.randn(num_experts, n, HIDDEN)
    wq, ws = per_block_cast_to_fp8(w)
    pairs = [dx.quant.per_token_cast_to_fp8(x) for x in xs]
    local = num_experts // len(xs)
    results = ep.dispatch(pairs, idxs, weights, num_experts, expert_alignment=dx.gemm.M_ALIGNMENT)
    ys = [dx.gemm.m_grouped_fp8_gemm_nt_contiguous(r.x, r.x_scales, wq[rank * local:(rank + 1) * local],
                                                   ws[rank * local:(rank + 1) * local], r.m_indices)
          for rank, r in enumerate(results)]
    outputs = ep.combine(ys, [r.handle for r in results])
    w64 = wq.double() * ws.double().repeat_interleave(128, 1).repeat_interleave(128, 2)[:, :n, :HIDDEN]
    for (q, s), idx, wt, out in zip(pairs, idxs, weights, outputs):
        x64 = q.double() * s.double().repeat_interleave(128, 1)
        expected = torch.zeros(q.shape[0], n, dtype=torch.float64)
        for t, experts in enumerate(idx.tolist()):
            for j, e in enumerate(experts):
                if e >= 0:
                    expected[t] += wt[t, j].double() * (w64[e] @ x64[t])
        assert out.shape == (q.shape[0], n)
        assert dx.gemm.calc_diff(out, expected) < 1e-4
