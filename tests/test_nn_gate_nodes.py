"""MoEGate's node-limited routing (num_nodes, node_of_group) and route(), DeepSeek-V3's tuple order."""
import pytest
import torch

import deepseek_ext as dx

EXPERTS, TOPK, GROUPS, TOPK_GROUPS, HIDDEN = 256, 8, 8, 4, 64  # DeepSeek-V3's routing


def _nodes_per_token(topk_idx: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Distinct nodes per token, experts split contiguously over the nodes."""
    node = topk_idx // (EXPERTS // num_nodes)
    hit = torch.zeros(topk_idx.shape[0], num_nodes, dtype=torch.bool).scatter_(1, node, True)
    return hit.sum(1)


def _gate(n_groups, topk_groups, num_nodes=None):
    gate = dx.nn.MoEGate(HIDDEN, EXPERTS, TOPK, n_groups, topk_groups, num_nodes=num_nodes)
    with torch.no_grad():
        gate.bias.normal_(std=0.05)
    return gate


@pytest.mark.parametrize("num_nodes", [8, 4, 2])
def test_no_token_reaches_more_nodes_than_topk_groups(num_nodes):
    gate = _gate(GROUPS, TOPK_GROUPS, num_nodes)
    assert gate.node_of_group == tuple(g * num_nodes // GROUPS for g in range(GROUPS))
    x = torch.randn(4096, HIDDEN)
    idx = gate(x).topk_idx
    nodes = _nodes_per_token(idx, num_nodes)
    assert int(nodes.max()) == min(TOPK_GROUPS, num_nodes)  # the bound holds and is reached
    # every expert's node is the node_of_group of its group
    groups = idx // (EXPERTS // GROUPS)
    assert torch.equal(torch.tensor(gate.node_of_group)[groups], idx // (EXPERTS // num_nodes))


def test_without_groups_tokens_reach_more_nodes():
    """The bound comes from the group limit: the same experts routed without it spread wider."""
    idx = _gate(1, 1)(torch.randn(4096, HIDDEN)).topk_idx
    assert int(_nodes_per_token(idx, 8).max()) > TOPK_GROUPS


@pytest.mark.parametrize("num_nodes", [16, 3, 0, True, 2.0])
def test_num_nodes_must_give_each_node_whole_groups(num_nodes):
    with pytest.raises(ValueError, match=rf"num_nodes must be a positive int dividing n_groups=8 .*got {num_nodes!r}"):
        dx.nn.MoEGate(HIDDEN, EXPERTS, TOPK, GROUPS, TOPK_GROUPS, num_nodes=num_nodes)


def test_without_num_nodes_there_is_no_map():
    assert dx.nn.MoEGate(HIDDEN, 16, 2, 4, 2).node_of_group is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_returns_weights_then_indices(dtype):
    gate = _gate(GROUPS, TOPK_GROUPS)
    gate.eval()
    x = torch.randn(3, 7, HIDDEN).to(dtype)
    weights, indices = gate.route(x)
    routing = gate(x)
    assert indices.dtype == torch.int64 and torch.equal(indices, routing.topk_idx)
    assert weights.dtype == dtype and torch.equal(weights, routing.topk_weights.to(dtype))
