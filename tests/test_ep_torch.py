"""dx.ep.Buffer, torch backend (gloo, CPU): 2 and 4 spawned ranks against the single-process
reference over all ranks (every process builds every rank's inputs from one seed)."""
import os

import pytest
import torch
import torch.distributed as dist

import deepseek_ext as dx
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import per_token_cast_to_fp8
from gloo_ranks import run_ranks

HIDDEN = 256
MAX_TOKENS = 64


def routing(num_tokens, num_experts, topk, empty_slot_fraction=0.2):
    """Distinct experts per token, some slots -1; weights in (0, 1]."""
    idx = torch.rand(num_tokens, num_experts).argsort(dim=1)[:, :topk]
    idx[torch.rand(num_tokens, topk) < empty_slot_fraction] = -1
    return idx, torch.rand(num_tokens, topk) + 1e-3


def all_ranks(tokens, num_experts, topk, skew=False):
    torch.manual_seed(sum(tokens) + 7 * topk)  # the same inputs on every rank, whatever ran before
    xs, idxs, ws = [], [], []
    for t in tokens:
        idx, w = routing(t, num_experts, topk)
        if skew:  # every token to expert 5 only
            idx[:] = -1
            idx[:, 1] = 5
        xs.append(torch.randn(t, HIDDEN).bfloat16())
        idxs.append(idx)
        ws.append(w)
    return xs, idxs, ws


def cases(num_ranks):
    e = 4 * num_ranks
    return {
        "random": dict(tokens=[37, 20, 64, 5][:num_ranks], num_experts=e, topk=4),
        "zero tokens on rank 1": dict(tokens=[30, 0, 17, 9][:num_ranks], num_experts=e, topk=2),
        "all to one expert": dict(tokens=[24] * num_ranks, num_experts=e, topk=3, skew=True),
        "no tokens anywhere": dict(tokens=[0] * num_ranks, num_experts=e, topk=2),
    }


def assert_same_result(got, want, fp8):
    bits = (lambda t: t.view(torch.uint8)) if fp8 else (lambda t: t)
    assert torch.equal(bits(got.x), bits(want.x))
    if fp8:
        assert torch.equal(got.x_scales, want.x_scales)
        assert got.x_scales.shape[0] < 2 or got.x_scales.stride(-2) == 1
    else:
        assert got.x_scales is None
    assert got.topk_idx.dtype == want.topk_idx.dtype and torch.equal(got.topk_idx, want.topk_idx)
    assert torch.equal(got.topk_weights, want.topk_weights)
    assert list(got.num_tokens_per_expert) == list(want.num_tokens_per_expert)
    assert torch.equal(got.handle.src_rank, want.handle.src_rank)
    assert torch.equal(got.handle.src_token, want.handle.src_token)
    assert got.handle.num_src_tokens == want.handle.num_src_tokens
    if want.m_indices is None:
        assert got.m_indices is None and got.handle.row_token is None
    else:
        assert torch.equal(got.m_indices, want.m_indices)
        assert torch.equal(got.handle.row_token, want.handle.row_token)
        assert torch.equal(got.handle.row_weight, want.handle.row_weight)


def expert_outputs(result, rank, num_experts, num_ranks):
    """A stand-in for the experts: each row scaled by a per-expert gain (NaN on padding rows,
    which combine must never read)."""
    gain = torch.linspace(0.5, 2.0, num_experts)
    local = num_experts // num_ranks
    if result.m_indices is not None:
        e = result.m_indices.long()
        y = (result.x.float() * gain[(e + rank * local).clamp(min=0)][:, None]).bfloat16()
        y[e < 0] = float("nan")
        return y
    first = (result.topk_idx.clamp(min=0) + rank * local)
    w = torch.where(result.topk_idx >= 0, result.topk_weights * gain[first], 0.0).sum(1)
    return (result.x.float() * w[:, None]).float()  # fp32 y: combine rounds it to bf16


def check_dispatch_and_combine(buffer, rank, num_ranks, spec, fp8, alignment, noncontiguous=False):
    xs, idxs, ws = all_ranks(spec["tokens"], spec["num_experts"], spec["topk"], spec.get("skew", False))
    inputs = [per_token_cast_to_fp8(x) for x in xs] if fp8 else xs
    want = ref.dispatch(inputs, idxs, ws, spec["num_experts"], expert_alignment=alignment)
    mine = inputs[rank]
    if noncontiguous and not fp8:
        wide = torch.randn(mine.shape[0], 2 * HIDDEN).bfloat16()
        wide[:, ::2] = mine
        mine = wide[:, ::2]
        assert not mine.is_contiguous()
    idx = idxs[rank].to(torch.int32) if noncontiguous else idxs[rank]
    got = buffer.dispatch(mine, idx, ws[rank], expert_alignment=alignment)
    if noncontiguous:
        want[rank].topk_idx = want[rank].topk_idx.to(torch.int32)
    assert_same_result(got, want[rank], fp8)
    if fp8:
        return
    ys = [expert_outputs(w, r, spec["num_experts"], num_ranks) for r, w in enumerate(want)]
    out = buffer.combine(expert_outputs(got, rank, spec["num_experts"], num_ranks), got.handle)
    expected = ref.combine(ys, [w.handle for w in want])[rank]
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def check_layout(buffer, rank, spec):
    _, idxs, _ = all_ranks(spec["tokens"], spec["num_experts"], spec["topk"])
    layout = buffer.get_dispatch_layout(idxs[rank])
    want = ref.get_dispatch_layout(idxs[rank], spec["num_experts"], buffer.num_ranks)
    for got_t, want_t in zip(layout[:3], want):
        assert torch.equal(got_t, want_t)
    for t, experts in enumerate(idxs[rank].tolist()):
        for j, e in enumerate(experts):
            before = sum(e >= 0 and e in row for row in idxs[rank][:t].tolist())
            assert layout.slot_in_expert[t, j] == (before if e >= 0 else -1)


def check_gradients(buffer, rank, num_ranks, spec, alignment):
    """dispatch's backward == combine of the gradient, combine's backward == dispatch of the
    gradient; both against autograd through the reference over all ranks."""
    xs, idxs, ws = all_ranks(spec["tokens"], spec["num_experts"], spec["topk"])
    grads = [torch.randn(r.x.shape) for r in ref.dispatch(xs, idxs, ws, spec["num_experts"], alignment)]
    grads_w = [torch.randn(r.topk_weights.shape)
               for r in ref.dispatch(xs, idxs, ws, spec["num_experts"])]
    x = xs[rank].clone().requires_grad_()
    w = ws[rank].clone().requires_grad_()
    got = buffer.dispatch(x, idxs[rank], w, expert_alignment=alignment)
    ((got.x.float() * grads[rank]).sum() + (got.topk_weights * grads_w[rank]).sum()).backward()
    with torch.no_grad():
        unit = got.handle if alignment == 1 else type(got.handle)(**{
            **got.handle.__dict__, "row_weight": (got.handle.row_token >= 0).float()})
        assert torch.equal(x.grad, buffer.combine(grads[rank].bfloat16(), unit))

    leaves = [xi.double().requires_grad_() for xi in xs]
    w_leaves = [wi.clone().requires_grad_() for wi in ws]
    ref_results = ref.dispatch(xs, idxs, ws, spec["num_experts"], alignment)
    token_major = ref.dispatch(leaves, idxs, w_leaves, spec["num_experts"])
    rows_x = [tm.x if r.m_indices is None else  # expanded rows gathered from the token-major rows
              torch.where(r.handle.row_token[:, None] >= 0, tm.x[r.handle.row_token.clamp(min=0)], 0.0)
              for tm, r in zip(token_major, ref_results)]
    sum((rx * g.bfloat16().double()).sum() for rx, g in zip(rows_x, grads)).backward()
    torch.testing.assert_close(x.grad.double(), leaves[rank].grad, rtol=2e-2, atol=5e-2)  # bf16 partials
    ref_w = ref.dispatch(xs, idxs, w_leaves, spec["num_experts"])
    for leaf in w_leaves:
        leaf.grad = None
    sum((r.topk_weights * g).sum() for r, g in zip(ref_w, grads_w)).backward()
    assert torch.equal(w.grad, w_leaves[rank].grad)

    ys = [torch.randn(r.x.shape).bfloat16().requires_grad_() for r in ref_results]  # every rank's, before
    gos = [torch.randn(xi.shape) for xi in xs]  # any rank-dependent draw
    y, go = ys[rank].detach().clone().requires_grad_(), gos[rank]
    (buffer.combine(y, got.handle).float() * go).sum().backward()
    with torch.no_grad():
        again = buffer.dispatch(go.bfloat16(), idxs[rank], ws[rank]).x
        if alignment > 1:
            row_token, row_weight = got.handle.row_token, got.handle.row_weight
            again = torch.where(row_token[:, None] >= 0, again[row_token.clamp(min=0)].float() * row_weight[:, None], 0)
        assert torch.equal(y.grad, again.bfloat16())
    outs = ref.combine(ys, [r.handle for r in ref_results])
    sum((o.float() * g).sum() for o, g in zip(outs, gos)).backward()
    torch.testing.assert_close(y.grad.float(), ys[rank].grad.float(), rtol=1e-2, atol=1e-2)


def check_errors(buffer, num_experts):
    x = torch.randn(3, HIDDEN).bfloat16()
    idx, w = routing(3, num_experts, 2, empty_slot_fraction=0.0)
    with pytest.raises(ValueError, match="at most max_tokens_per_rank=64"):
        buffer.dispatch(torch.randn(65, HIDDEN).bfloat16(), *routing(65, num_experts, 2))
    with pytest.raises(ValueError, match="x must have hidden size 256"):
        buffer.dispatch(torch.randn(3, 128).bfloat16(), idx, w)
    bad = idx.clone()
    bad[1, 0] = num_experts
    with pytest.raises(ValueError, match=rf"topk_idx holds expert ids outside \[-1, {num_experts}\)"):
        buffer.dispatch(x, bad, w)
    with pytest.raises(ValueError, match="topk_idx must have 3 rows"):
        buffer.dispatch(x, idx[:2], w[:2])


def worker(rank, num_ranks, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=num_ranks)
    try:
        buffer = dx.ep.Buffer(None, HIDDEN, 4 * num_ranks, MAX_TOKENS, backend="auto")
        assert buffer.backend == "torch"  # CPU: no ipc
        # 2 ranks: every combination; 4 ranks: a subset (keeps 4 processes on 2 cores quick)
        combos = [(False, 1), (False, 128), (True, 1), (True, 128)] if num_ranks == 2 else [(False, 128), (True, 1)]
        for spec in cases(num_ranks).values():
            check_layout(buffer, rank, spec)
            for fp8, alignment in combos:
                check_dispatch_and_combine(buffer, rank, num_ranks, spec, fp8, alignment)
        spec = cases(num_ranks)["random"]
        check_dispatch_and_combine(buffer, rank, num_ranks, spec, False, 1, noncontiguous=True)
        for alignment in (1, 128) if num_ranks == 2 else (128,):
            check_gradients(buffer, rank, num_ranks, spec, alignment)
        check_errors(buffer, 4 * num_ranks)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_ranks", [2, 4])
def test_torch_backend_matches_reference(num_ranks, tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_ranks(worker, num_ranks, num_ranks, str(tmp_path / "pg"))


def test_buffer_arguments_are_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        dx.ep.buffer._pick_backend(None, "nvlink")
    with pytest.raises(TypeError, match="hidden must be an int"):
        dx.ep.Buffer(None, 7.5, 8, 16)
    with pytest.raises(ValueError, match="max_tokens_per_rank must be >= 1"):
        dx.ep.Buffer(None, 256, 8, 0)
