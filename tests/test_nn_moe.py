"""DeepSeekMoE against a per-token fp64 reference (outputs and every gradient), the grouped layout."""
import pytest
import torch
import torch.nn.functional as F

import deepseek_ext as dx
from deepseek_ext.gemm import calc_diff
from deepseek_ext.nn.grouped_layout import grouped_layout

HIDDEN, INTER, EXPERTS, TOPK = 128, 64, 8, 2


def _moe(fp8: bool, **kw):
    torch.manual_seed(3)
    return dx.nn.DeepSeekMoE(HIDDEN, INTER, EXPERTS, TOPK, n_shared=1, n_groups=4, topk_groups=2,
                             route_scale=1.5, fp8=fp8, **kw)


def _reference(moe, x, topk_idx):
    """fp64, one token at a time: shared(x) + sum_j w_j * expert_{e_j}(x) with the gate's weights
    recomputed from its affinities for the given experts. Returns output and gradients."""
    params = {n: p.detach().double().requires_grad_(True) for n, p in moe.named_parameters()}
    xs = x.detach().double().requires_grad_(True)
    scores = torch.sigmoid(xs @ params["gate.weight"].T)
    outs = []
    for t in range(xs.shape[0]):
        w = scores[t, topk_idx[t]]
        w = w / w.sum() * moe.gate.route_scale
        out = F.linear(F.silu(F.linear(xs[t], params["shared_experts.w13.weight"][:INTER]))
                       * F.linear(xs[t], params["shared_experts.w13.weight"][INTER:]),
                       params["shared_experts.w2.weight"])
        for j, e in enumerate(topk_idx[t].tolist()):
            g, u = (params["w13"][e] @ xs[t]).chunk(2)
            out = out + w[j] * (params["w2"][e] @ (F.silu(g) * u))
        outs.append(out)
    y = torch.stack(outs)
    return y, xs, params


def _check(moe, x, bound_out, bound_grad):
    y = moe(x)
    grad = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad.to(y.dtype))
    routing_idx = dx.nn.MoEGate.forward(moe.gate, x).topk_idx  # same routing (bias unchanged)
    y_ref, x_ref, params = _reference(moe, x, routing_idx)
    y_ref.backward(grad)
    assert calc_diff(y.detach(), y_ref.detach()) < bound_out
    assert calc_diff(x.grad, x_ref.grad) < bound_grad
    for name, p in moe.named_parameters():
        assert calc_diff(p.grad, params[name].grad) < bound_grad, name


def test_bf16_free_path_is_exact_in_fp64():
    moe = _moe(fp8=False).double()
    x = torch.randn(37, HIDDEN, dtype=torch.float64, requires_grad=True)
    _check(moe, x, 1e-14, 1e-13)


def test_bf16_path_against_fp64():
    moe = _moe(fp8=False)
    x = torch.randn(90, HIDDEN).bfloat16().requires_grad_(True)
    _check(moe, x, 1e-4, 1e-4)


def test_fp8_path_against_fp64():
    moe = _moe(fp8=True)
    x = torch.randn(150, HIDDEN).bfloat16().requires_grad_(True)
    _check(moe, x, 2e-3, 5e-3)


def test_output_shape_dtype_and_loads():
    moe = _moe(fp8=True)
    x = torch.randn(3, 11, HIDDEN, dtype=torch.bfloat16)
    y = moe(x)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert int(moe.gate.load.sum()) == 33 * TOPK  # no token dropped
    plain = _moe(fp8=False)(x.float())
    assert plain.dtype == torch.float32


def test_empty_input_gives_zero_weight_grads():
    moe = _moe(fp8=True)
    x = torch.randn(0, HIDDEN, requires_grad=True)
    y = moe(x)
    y.sum().backward()
    assert y.shape == (0, HIDDEN) and moe.w13.grad is not None and moe.w13.grad.abs().sum() == 0


def test_grouped_layout_rows():
    topk_idx = torch.tensor([[2, 0], [0, -1], [3, 2], [-1, -1], [2, 1]])
    layout = grouped_layout(topk_idx, 5, 4)
    assert layout.group_sizes == [4, 4, 4, 4, 0]
    # experts ascending, tokens ascending within an expert; padding rows: expert -1, token N
    assert layout.m_indices.tolist() == [0, 0, -1, -1, 1, -1, -1, -1, 2, 2, 2, -1, 3, -1, -1, -1]
    assert layout.row_token.tolist() == [0, 1, 5, 5, 4, 5, 5, 5, 0, 2, 4, 5, 2, 5, 5, 5]
    assert layout.inverse_map.tolist() == [[8, 0], [1, -1], [12, 9], [-1, -1], [10, 4]]


def test_grouped_layout_matches_permute_to_grouped():
    topk_idx = torch.stack([torch.randperm(16)[:4] for _ in range(50)])
    topk_idx[::7, 1] = -1
    x = torch.randn(50, 32, dtype=torch.bfloat16)
    rows, _, m_indices, inverse_map = dx.gemm.permute_to_grouped(x, None, topk_idx, 16, 128)
    layout = grouped_layout(topk_idx, 16, 128)
    assert torch.equal(layout.m_indices, m_indices) and torch.equal(layout.inverse_map, inverse_map.long())
    assert torch.equal(torch.nn.functional.pad(x, (0, 0, 0, 1))[layout.row_token], rows)


def test_bad_expert_split_is_named():
    with pytest.raises(ValueError, match="num_experts .* divisible by n_groups"):
        dx.nn.DeepSeekMoE(HIDDEN, INTER, 6, 2, n_groups=4)


def test_inference_path_equals_the_training_forward():
    moe = _moe(fp8=True)
    x = torch.randn(40, HIDDEN, dtype=torch.bfloat16)
    with torch.no_grad():
        inference = moe(x)
    assert torch.equal(inference, moe(x).detach())
