"""deepseek_ext.ops.ep on the CPU: the dispatch layout (reference path) against a direct count,
every validation error of the expert-parallel inputs, and the dispatch kernel's receive index
math (ep/recv_index.cuh, compiled for the host) against the reference's expanded layout."""
import subprocess

import pytest
import torch

from deepseek_ext.ops import ep as ops
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import per_token_cast_to_fp8
from host_build import build_host_driver


def random_routing(num_tokens, num_experts, topk):
    idx = torch.rand(num_tokens, num_experts).argsort(dim=1)[:, :topk]
    idx[torch.rand(num_tokens, topk) < 0.25] = -1
    return idx


def direct_layout(idx, num_experts, num_ranks):
    local = num_experts // num_ranks
    t, k = idx.shape
    per_rank, per_expert = [0] * num_ranks, [0] * num_experts
    in_rank = [[False] * num_ranks for _ in range(t)]
    slot_in_rank = [[-1] * num_ranks for _ in range(t)]
    slot_in_expert = [[-1] * k for _ in range(t)]
    for token, experts in enumerate(idx.tolist()):
        for r in sorted({e // local for e in experts if e >= 0}):
            in_rank[token][r] = True
            slot_in_rank[token][r] = per_rank[r]
            per_rank[r] += 1
        for j, e in enumerate(experts):
            if e >= 0:
                slot_in_expert[token][j] = per_expert[e]
                per_expert[e] += 1
    return per_rank, per_expert, in_rank, slot_in_rank, slot_in_expert


@pytest.mark.parametrize("num_tokens,num_experts,num_ranks,topk", [(37, 12, 4, 3), (1, 8, 8, 2), (0, 6, 3, 2),
                                                                   (50, 16, 2, 8)])
@pytest.mark.parametrize("variant", ["int64", "int32", "noncontiguous"])
def test_dispatch_layout_matches_direct_count(num_tokens, num_experts, num_ranks, topk, variant):
    idx = random_routing(num_tokens, num_experts, topk)
    given = idx
    if variant == "int32":
        given = idx.to(torch.int32)
    elif variant == "noncontiguous":
        wide = torch.full((num_tokens, 2 * topk), 99)
        wide[:, ::2] = idx
        given = wide[:, ::2]
    outs = ops.dispatch_layout(given, num_experts, num_ranks)
    want = direct_layout(idx, num_experts, num_ranks)
    assert [o.dtype for o in outs] == [torch.int64, torch.int64, torch.bool, torch.int32, torch.int32]
    assert outs[0].tolist() == want[0] and outs[1].tolist() == want[1]
    assert outs[2].reshape(num_tokens, num_ranks).tolist() == (want[2] if num_tokens else [])
    assert outs[3].reshape(num_tokens, num_ranks).tolist() == (want[3] if num_tokens else [])
    assert outs[4].reshape(num_tokens, topk).tolist() == (want[4] if num_tokens else [])


def test_dispatch_layout_errors():
    with pytest.raises(ValueError, match=r"num_experts \(10\) must be divisible by the number of ranks \(4\)"):
        ops.dispatch_layout(torch.zeros(2, 2, dtype=torch.long), 10, 4)
    with pytest.raises(TypeError, match=r"topk_idx must have dtype in \(int64, int32\), got float32"):
        ops.dispatch_layout(torch.zeros(2, 2), 8, 4)
    with pytest.raises(ValueError, match=r"topk_idx must be 2-D, got shape \(4,\)"):
        ops.dispatch_layout(torch.zeros(4, dtype=torch.long), 8, 4)
    with pytest.raises(ValueError, match="topk_idx may have at most 32 columns, got 33"):
        ops.dispatch_layout(torch.zeros(2, 33, dtype=torch.long), 64, 4)


def test_routing_errors():
    idx = torch.zeros(3, 2, dtype=torch.long)
    w = torch.rand(3, 2)
    ops.check_routing(idx, w, 3)
    with pytest.raises(ValueError, match="topk_idx must have 3 rows"):
        ops.check_routing(idx[:2], w[:2], 3)
    with pytest.raises(ValueError, match=r"topk_weights must have shape \(3, 2\), got \(3, 1\)"):
        ops.check_routing(idx, w[:, :1], 3)
    with pytest.raises(TypeError, match="topk_weights must have dtype in"):
        ops.check_routing(idx, w.to(torch.int32), 3)
    with pytest.raises(TypeError, match="topk_idx must be a torch.Tensor, got list"):
        ops.check_routing([[0, 1]], w, 3)


@pytest.mark.parametrize("bad", [-2, 8, 100])
def test_expert_ids_out_of_range(bad):
    idx = torch.tensor([[0, 1], [2, bad]])
    with pytest.raises(ValueError, match=r"topk_idx holds expert ids outside \[-1, 8\)"):
        ops.check_expert_ids(idx, 8)
    ops.check_expert_ids(torch.tensor([[-1, 7]]), 8)
    ops.check_expert_ids(torch.zeros(0, 2, dtype=torch.long), 8)


def test_activation_errors():
    x = torch.randn(5, 256).bfloat16()
    q, s = per_token_cast_to_fp8(x)
    assert ops.split_activation(x, 256, 8)[1] is None
    assert ops.split_activation((q, s), 256, 8)[1] is s
    with pytest.raises(ValueError, match="x must have hidden size 128 \\(the Buffer's\\), got 256"):
        ops.split_activation(x, 128, 8)
    with pytest.raises(ValueError, match="x has 5 tokens but the Buffer holds at most max_tokens_per_rank=4"):
        ops.split_activation(x, 256, 4)
    with pytest.raises(TypeError, match=r"x must have dtype in \(bfloat16, float32\), got int32"):
        ops.split_activation(x.to(torch.int32), 256, 8)
    with pytest.raises(TypeError, match="x must be a tensor or a \\(q, s\\) pair, got a tuple of 3"):
        ops.split_activation((q, s, s), 256, 8)
    with pytest.raises(TypeError, match=r"x\[0\] \(q\) must have dtype in \(float8_e4m3fn\)"):
        ops.split_activation((x, s), 256, 8)
    with pytest.raises(ValueError, match=r"x\[1\] \(s\) must have shape \(5, 2\), got \(5, 1\)"):
        ops.split_activation((q, s[:, :1]), 256, 8)
    with pytest.raises(ValueError, match=r"x\[0\] \(q\) must have hidden size 512"):
        ops.split_activation((q, s), 512, 8)


def test_alignment_and_y_errors():
    ops.check_alignment(128)
    with pytest.raises(ValueError, match="expert_alignment must be >= 1, got 0"):
        ops.check_alignment(0)
    with pytest.raises(TypeError, match="expert_alignment must be an int, got float"):
        ops.check_alignment(1.5)
    with pytest.raises(TypeError, match="expert_alignment must be an int, got bool"):
        ops.check_alignment(True)
    y = torch.randn(4, 64).bfloat16()
    ops.check_y(y, 4, 64)
    with pytest.raises(ValueError, match=r"y must have shape \(5, 64\), got \(4, 64\)"):
        ops.check_y(y, 5, 64)
    with pytest.raises(TypeError, match="y must have dtype in"):
        ops.check_y(y.to(torch.float16), 4, 64)


# --- the dispatch kernel's receive index math, compiled for the host -------------------------



@pytest.fixture(scope="module")
def recv_index_exe(tmp_path_factory):
    return build_host_driver("ep_index_math.cu", tmp_path_factory.mktemp("ep_index"))


@pytest.mark.parametrize("alignment", [1, 4, 128])
def test_receive_rows_match_the_reference_layout(recv_index_exe, alignment):
    """From the counts each source pushes and each token's positions on its source (what the
    kernel uses), every received (token, local expert) lands on the reference's expanded row."""
    num_ranks, num_experts, topk, dst = 4, 16, 3, 2
    local = num_experts // num_ranks
    tokens = [23, 0, 31, 9]
    xs = [torch.randn(t, 16).bfloat16() for t in tokens]
    idxs = [random_routing(t, num_experts, topk) for t in tokens]
    ws = [torch.rand(t, topk) for t in tokens]
    want = ref.dispatch(xs, idxs, ws, num_experts, expert_alignment=alignment)[dst]
    lines, queries, expected = [f"{num_ranks} {local} {alignment}"], [], []
    received = 0
    for src, idx in enumerate(idxs):
        per_rank, per_expert, in_rank, _, slot_in_expert = direct_layout(idx, num_experts, num_ranks)
        lines.append(" ".join(map(str, [per_rank[dst], idx.shape[0], *per_expert[dst * local:(dst + 1) * local]])))
        for t, experts in enumerate(idx.tolist()):
            if not in_rank[t][dst]:
                continue
            for j, e in enumerate(experts):
                if e >= 0 and e // local == dst:
                    queries.append(f"{src} {e - dst * local} {slot_in_expert[t][j]}")
                    if alignment > 1:
                        rows = ((want.handle.row_token == received) & (want.m_indices == e - dst * local)).nonzero()
                        expected.append(int(rows.squeeze()))
            received += 1
    out = subprocess.run([str(recv_index_exe)], input="\n".join(lines + queries) + "\n", capture_output=True,
                         text=True, check=True, timeout=60).stdout.split("\n")
    tok_off = list(map(int, out[0].split()))
    exp_base = list(map(int, out[1].split()))
    assert tok_off[-1] == want.handle.src_rank.numel() == received
    assert tok_off[:-1] == [int((want.handle.src_rank < s).sum()) for s in range(num_ranks)]
    assert [b - a for a, b in zip(exp_base, exp_base[1:])] == list(want.num_tokens_per_expert)
    if alignment > 1:
        assert list(map(int, out[2:2 + len(queries)])) == expected
