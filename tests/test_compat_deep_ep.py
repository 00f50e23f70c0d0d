"""deepseek_ext.compat.deep_ep: DeepEP-style layout/dispatch/combine round trips on gloo (2 and 4
forked ranks) give dx.ep.Buffer's results; bad input raises errors that name the argument."""
import pytest
import torch
import torch.distributed as dist

import deepseek_ext as dx
from deepseek_ext.compat import deep_ep
from deepseek_ext.reference import ep as ref
from gloo_ranks import run_ranks

HIDDEN = 256
NVL_BYTES = 1 << 20  # 2048 bf16 tokens of HIDDEN over 2 ranks, 1024 over 4
ALIGNMENT = 4


def every_rank_inputs(num_ranks, num_experts, topk=3):
    """Every rank's tokens, routing (distinct experts, some -1) and weights, from one seed."""
    torch.manual_seed(11 + num_ranks)
    inputs = []
    for tokens in [37, 0, 64, 5][:num_ranks]:
        idx = torch.rand(tokens, num_experts).argsort(dim=1)[:, :topk]
        idx[torch.rand(tokens, topk) < 0.2] = -1
        inputs.append((torch.randn(tokens, HIDDEN).bfloat16(), idx, torch.rand(tokens, topk) + 1e-3))
    return inputs


def check_layout(buffer, topk_idx, num_experts):
    per_rank, per_rdma_rank, per_expert, in_rank, event = buffer.get_dispatch_layout(topk_idx, num_experts)
    want = ref.get_dispatch_layout(topk_idx, num_experts, buffer.group_size)
    assert per_rdma_rank is None and isinstance(event, deep_ep.EventOverlap)
    assert per_rank.dtype == per_expert.dtype == torch.int32 and in_rank.dtype == torch.bool
    assert torch.equal(per_rank, want.num_tokens_per_rank.int())
    assert torch.equal(per_expert, want.num_tokens_per_expert.int())
    assert torch.equal(in_rank, want.is_token_in_rank)
    return per_rank, per_expert, in_rank


def check_round_trip(buffer, engine, x, topk_idx, topk_weights, num_experts, async_finish):
    per_rank, per_expert, in_rank = check_layout(buffer, topk_idx, num_experts)
    recv_x, recv_idx, recv_w, counts, handle, event = buffer.dispatch(
        x, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank, num_tokens_per_expert=per_expert,
        topk_idx=topk_idx, topk_weights=topk_weights, expert_alignment=ALIGNMENT, async_finish=async_finish)
    event.current_stream_wait()
    want = engine.dispatch(x, topk_idx, topk_weights)
    assert torch.equal(recv_x, want.x) and torch.equal(recv_idx, want.topk_idx)
    assert torch.equal(recv_w, want.topk_weights)
    assert counts == [-(-n // ALIGNMENT) * ALIGNMENT for n in want.num_tokens_per_expert]

    y = (recv_x.float() * torch.linspace(0.5, 2, HIDDEN)).bfloat16()  # a stand-in for the experts
    with buffer.combine(y, handle, topk_weights=recv_w, async_finish=async_finish)[2]:
        pass  # DeepEP's overlap idiom: leaving the block waits for the combine
    combined, combined_w, _ = buffer.combine(y, handle, topk_weights=recv_w)
    assert torch.equal(combined, engine.combine(y, want.handle))
    assert torch.equal(combined_w, torch.where(topk_idx >= 0, topk_weights, 0.0))  # DeepEP's weight round trip
    unit = buffer.combine(recv_x, handle)[0].float()  # DeepEP's own check: x times the ranks it reached
    torch.testing.assert_close(unit, x.float() * in_rank.sum(1, keepdim=True), rtol=1e-2, atol=1e-2)
    return handle


def worker(rank, num_ranks, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=num_ranks)
    try:
        num_experts = 4 * num_ranks
        buffer = deep_ep.Buffer(dist.group.WORLD, NVL_BYTES, explicitly_destroy=True)
        engine = dx.ep.Buffer(dist.group.WORLD, HIDDEN, num_experts, NVL_BYTES // (num_ranks * HIDDEN * 2))
        inputs = every_rank_inputs(num_ranks, num_experts)
        x, topk_idx, topk_weights = inputs[rank]
        for async_finish in (False, True):
            handle = check_round_trip(buffer, engine, x, topk_idx, topk_weights, num_experts, async_finish)

        # cached mode: other tokens along the same routes; only recv_x comes back
        x2 = torch.randn(x.shape).bfloat16()
        recv_x2, *rest = buffer.dispatch(x2, handle=handle)
        assert rest[:4] == [None] * 4 and torch.equal(recv_x2, engine.dispatch(x2, topk_idx, topk_weights).x)

        # FP8 tokens with DeepGEMM-style row-major scales; layout tensors made by the caller
        q, s = dx.quant.per_token_cast_to_fp8(x)
        in_rank = ref.get_dispatch_layout(topk_idx, num_experts, num_ranks).is_token_in_rank.clone()
        per_expert = torch.zeros(num_experts, dtype=torch.int32)
        (recv_q, recv_s), *_ = buffer.dispatch((q, s.contiguous()), is_token_in_rank=in_rank,
                                               num_tokens_per_expert=per_expert, topk_idx=topk_idx,
                                               topk_weights=topk_weights)
        want = engine.dispatch((q, s), topk_idx, topk_weights)
        assert torch.equal(recv_q.view(torch.uint8), want.x.view(torch.uint8)) and torch.equal(recv_s, want.x_scales)
        check_errors(buffer, handle, x, topk_idx, topk_weights, num_experts, rank)
        buffer.destroy()
    finally:
        dist.destroy_process_group()


def check_errors(buffer, handle, x, topk_idx, topk_weights, num_experts, rank):
    layout = buffer.get_dispatch_layout(topk_idx, num_experts)
    routed = dict(num_tokens_per_rank=layout[0], is_token_in_rank=layout[3], num_tokens_per_expert=layout[2],
                  topk_idx=topk_idx, topk_weights=topk_weights)
    with pytest.raises(NotImplementedError, match="num_worst_tokens"):
        buffer.dispatch(x, num_worst_tokens=1024, **routed)
    with pytest.raises(NotImplementedError, match="without topk_idx"):
        buffer.dispatch(x, num_tokens_per_expert=layout[2])
    with pytest.raises(ValueError, match="takes no topk_idx"):
        buffer.dispatch(x, handle=handle, topk_idx=topk_idx)
    with pytest.raises(TypeError, match="x must have dtype"):
        buffer.dispatch(x.half(), **routed)
    with pytest.raises(NotImplementedError, match="bias"):
        buffer.combine(torch.zeros(handle.num_recv, HIDDEN).bfloat16(), handle, bias=x)
    with pytest.raises(ValueError, match=rf"y must have shape \({handle.num_recv}, {HIDDEN}\)"):
        buffer.combine(torch.zeros(handle.num_recv + 1, HIDDEN).bfloat16(), handle)  # checked on every rank
    with pytest.raises(TypeError, match="handle must be the handle returned by dispatch"):
        buffer.combine(x, tuple(range(6)))
    with pytest.raises(ValueError, match="topk_idx holds expert ids outside"):
        buffer.get_dispatch_layout(torch.full((2, 3), num_experts), num_experts)
    # rank 0's bad routing raises on every rank together (dx.ep's agreement), never a hang
    with pytest.raises(ValueError, match="topk_idx holds expert ids outside" if rank == 0 else None):
        buffer.dispatch(x, num_tokens_per_expert=layout[2], topk_idx=topk_idx + num_experts * (rank == 0),
                        topk_weights=topk_weights)


@pytest.mark.parametrize("num_ranks", [2, 4])
def test_deep_ep_style_round_trip_matches_dx_ep(num_ranks, tmp_path):
    run_ranks(worker, num_ranks, num_ranks, str(tmp_path / "pg"))


def test_buffer_arguments_are_checked():
    with pytest.raises(NotImplementedError, match="low_latency_mode"):
        deep_ep.Buffer(None, 0, 1 << 20, low_latency_mode=True)
    with pytest.raises(ValueError, match="group must be a torch.distributed process group"):
        deep_ep.Buffer(None, 1 << 20)
    with pytest.raises(NotImplementedError, match="mpi4py"):
        deep_ep.Buffer(None, 1 << 20, comm=object())
    previous = deep_ep.Buffer.num_sms
    try:
        deep_ep.Buffer.set_num_sms(24)
        assert deep_ep.Buffer.num_sms == 24
        with pytest.raises(ValueError, match="positive even number"):
            deep_ep.Buffer.set_num_sms(23)
        with pytest.raises(TypeError, match="new_num_sms must be an int"):
            deep_ep.Buffer.set_num_sms(24.0)
    finally:
        deep_ep.Buffer.num_sms = previous
    assert deep_ep.Buffer.capture().event is None or torch.cuda.is_available()
