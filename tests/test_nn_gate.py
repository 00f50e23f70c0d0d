"""MoEGate against a per-token re-implementation of the routing rule; bias balancing; balance loss."""
import itertools

import pytest
import torch

import deepseek_ext as dx


def _route_one_token(scores, bias, k, n_groups, topk_groups, route_scale):
    """The rule written out for one token, with Python lists: groups by the sum of their two best
    biased scores, then the k best biased scores among the kept groups' experts."""
    biased = [float(s) + float(b) for s, b in zip(scores, bias)]
    size = len(biased) // n_groups
    group_score = [sum(sorted(biased[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(n_groups)]
    kept = sorted(range(n_groups), key=lambda g: -group_score[g])[:topk_groups]
    candidates = [e for g in kept for e in range(g * size, (g + 1) * size)]
    chosen = sorted(candidates, key=lambda e: -biased[e])[:k]
    total = sum(float(scores[e]) for e in chosen)
    return chosen, [float(scores[e]) / total * route_scale for e in chosen]


@pytest.mark.parametrize("experts,k,groups,topk_groups", [(16, 4, 4, 2), (12, 3, 1, 1), (16, 2, 8, 3), (32, 8, 8, 4)])
def test_routing_matches_the_rule(experts, k, groups, topk_groups):
    gate = dx.nn.MoEGate(48, experts, k, groups, topk_groups, route_scale=2.5)
    with torch.no_grad():
        gate.bias.normal_(std=0.05)
    x = torch.randn(2, 19, 48)
    routing = gate(x)
    scores = torch.sigmoid(x.reshape(-1, 48) @ gate.weight.T).detach()
    for t in range(scores.shape[0]):
        chosen, weights = _route_one_token(scores[t], gate.bias, k, groups, topk_groups, 2.5)
        got = routing.topk_idx[t].tolist()
        assert sorted(got) == sorted(chosen)
        by_expert = dict(zip(got, routing.topk_weights[t].tolist()))
        assert [by_expert[e] for e in chosen] == pytest.approx(weights, rel=1e-5)


def test_weights_get_gradients_and_bias_does_not():
    gate = dx.nn.MoEGate(32, 8, 2, 2, 1)
    x = torch.randn(10, 32, requires_grad=True)
    gate(x).topk_weights.square().sum().backward()
    assert gate.weight.grad is not None and x.grad is not None and gate.weight.grad.abs().sum() > 0
    assert "bias" not in dict(gate.named_parameters())


def _skewed_router_loads(use_bias: bool, steps: int = 300) -> tuple[float, float]:
    """A fixed router whose affinities favour experts 0..2, fresh tokens every step, DeepSeek's
    gamma = 0.001. Returns max/mean load of the first step and averaged over the last 20."""
    torch.manual_seed(1)
    gate = dx.nn.MoEGate(32, 16, 2, 4, 2, bias_update_speed=1e-3, use_bias=use_bias)
    with torch.no_grad():
        gate.weight.normal_(std=0.2)
        gate.weight[:3] += 0.2
    ratios = []
    for _ in range(steps):
        gate(torch.randn(512, 32) + 0.5)
        load = gate.update_bias()
        ratios.append(float(load.max() / load.mean()))
    return ratios[0], sum(ratios[-20:]) / 20


def test_bias_balancing_reduces_the_max_load():
    first, last = _skewed_router_loads(use_bias=True)
    assert first > 4.0 and last < 1.4
    first_nb, last_nb = _skewed_router_loads(use_bias=False)
    assert first_nb == pytest.approx(first) and last_nb > 4.0


def test_update_bias_sign_rule():
    gate = dx.nn.MoEGate(16, 4, 1, bias_update_speed=0.01)
    gate.load.copy_(torch.tensor([5.0, 1.0, 3.0, 3.0]))
    gate.update_bias()
    torch.testing.assert_close(gate.bias, torch.tensor([-0.01, 0.01, 0.0, 0.0]))
    assert gate.load.sum() == 0


def test_sequence_balance_loss_matches_its_definition():
    gate = dx.nn.MoEGate(24, 8, 2, balance_loss_alpha=0.1)
    x = torch.randn(3, 10, 24)
    routing = gate(x)
    scores = torch.sigmoid(x @ gate.weight.T).detach()  # [B, S, E]
    idx = routing.topk_idx.view(3, 10, 2)
    expected = 0.0
    for b, i in itertools.product(range(3), range(8)):
        f = 8 / (2 * 10) * sum(int(i in idx[b, t].tolist()) for t in range(10))
        p = sum(float(scores[b, t, i] / scores[b, t].sum()) for t in range(10)) / 10
        expected += f * p / 3
    assert routing.balance_loss.item() == pytest.approx(0.1 * expected, rel=1e-5)
    gate.eval()
    assert gate(x).balance_loss is None


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="num_experts .* divisible by n_groups"):
        dx.nn.MoEGate(16, 10, 2, n_groups=4)
    with pytest.raises(ValueError, match="topk_groups must be in"):
        dx.nn.MoEGate(16, 8, 2, n_groups=2, topk_groups=3)
    with pytest.raises(ValueError, match="topk must be in"):
        dx.nn.MoEGate(16, 8, 5, n_groups=4, topk_groups=2)
    with pytest.raises(ValueError, match="at least 2 experts"):
        dx.nn.MoEGate(16, 8, 2, n_groups=8, topk_groups=2)
