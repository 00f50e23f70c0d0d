"""DeepSeekMoE over 2 and 4 gloo ranks (dx.ep.Buffer, torch backend) == the single-process MoE:
outputs, input and gate gradients per rank, expert weight gradients summed over all ranks' tokens."""
import pytest
import torch
import torch.distributed as dist

import deepseek_ext as dx
from deepseek_ext.gemm import calc_diff
from gloo_ranks import run_ranks

HIDDEN, INTER, EXPERTS, TOPK, TOKENS = 128, 64, 8, 2, 24


def _moe(fp8, ep_group=None):
    torch.manual_seed(11)  # every rank and the reference build the same full set of weights
    return dx.nn.DeepSeekMoE(HIDDEN, INTER, EXPERTS, TOPK, n_shared=1, n_groups=4, topk_groups=2, fp8=fp8,
                             ep_group=ep_group, max_tokens_per_rank=64)


def _rank_inputs(rank):
    gen = torch.Generator().manual_seed(100 + rank)
    tokens = TOKENS + 3 * rank  # ranks hold different token counts
    x = torch.randn(tokens, HIDDEN, generator=gen).bfloat16()
    return x, torch.randn(tokens, HIDDEN, generator=gen).bfloat16()


def _run(moe, x, grad):
    x = x.clone().requires_grad_(True)
    y = moe(x)
    y.backward(grad)
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in moe.named_parameters()}


def _check_rank(rank, num_ranks, fp8):
    full = _moe(fp8)
    ep = _moe(fp8, dist.group.WORLD)
    ep.load_state_dict({k: v for k, v in full.state_dict().items() if k not in ("w13", "w2")}, strict=False)
    ep.load_local_experts(full.w13, full.w2)
    x, grad = _rank_inputs(rank)
    y, gx, grads = _run(ep, x, grad)
    y_ref, gx_ref, grads_ref = _run(full, x, grad)
    bound = 1e-4  # bf16 partials summed over ranks vs one fp32 sum: a few bf16 ulps
    assert calc_diff(y, y_ref) < bound and calc_diff(gx, gx_ref) < bound
    for name in grads:
        if name not in ("w13", "w2"):
            assert calc_diff(grads[name], grads_ref[name]) < bound, name
    # expert weights see every rank's tokens, received in rank order: one batch of all of them
    # (the FP8 Wgrad operands are quantized along tokens, so the batch matters)
    full.zero_grad()
    inputs = [_rank_inputs(r) for r in range(num_ranks)]
    full(torch.cat([xr for xr, _ in inputs])).backward(torch.cat([gr for _, gr in inputs]))
    local = slice(ep.first_local_expert, ep.first_local_expert + ep.num_local_experts)
    assert calc_diff(grads["w13"], full.w13.grad[local]) < bound
    assert calc_diff(grads["w2"], full.w2.grad[local]) < bound
    loads = ep.gate.load.clone()
    dist.all_reduce(loads)
    assert int(loads.sum()) == TOPK * sum(TOKENS + 3 * r for r in range(num_ranks))  # nothing dropped


def _check_gate_bias_uses_the_group_load(rank, num_ranks):
    gate = dx.nn.MoEGate(16, 4, 1, bias_update_speed=0.01, dp_group=dist.group.WORLD)
    gate.load.copy_(torch.tensor([4.0, 0.0, 2.0, 2.0]) if rank == 0 else torch.tensor([0.0, 2.0, 2.0, 0.0]))
    load = gate.update_bias()  # summed over the ranks; every rank moves its bias the same way
    expected_load = torch.tensor([4.0, 2.0 * (num_ranks - 1), 2.0 * num_ranks, 2.0])
    torch.testing.assert_close(load, expected_load)
    torch.testing.assert_close(gate.bias, 0.01 * torch.sign(expected_load.mean() - expected_load))


def _check_errors(num_ranks):
    odd = 2 * num_ranks + 1
    with pytest.raises(ValueError, match=rf"num_experts \({odd}\) must be divisible by the EP group size"):
        dx.nn.DeepSeekMoE(HIDDEN, INTER, odd, TOPK, ep_group=dist.group.WORLD)
    moe = dx.nn.DeepSeekMoE(HIDDEN, INTER, EXPERTS, TOPK, ep_group=dist.group.WORLD, max_tokens_per_rank=4)
    with pytest.raises(ValueError, match="5 tokens on this rank exceed max_tokens_per_rank=4"):
        moe(torch.randn(5, HIDDEN))


def _worker(rank, num_ranks, init_file, fp8_modes):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=num_ranks)
    torch.set_num_threads(1)
    try:
        _check_gate_bias_uses_the_group_load(rank, num_ranks)
        _check_errors(num_ranks)
        for fp8 in fp8_modes:
            _check_rank(rank, num_ranks, fp8)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_ranks,fp8_modes", [(2, (True, False)), (4, (True,))])
def test_ep_moe_matches_single_process(num_ranks, fp8_modes, tmp_path):
    run_ranks(_worker, num_ranks, num_ranks, str(tmp_path / "pg"), fp8_modes)
