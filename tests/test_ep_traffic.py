"""The traffic model of bench/ep_traffic.py against counts written out per token, its V3 figures'
bounds, and the byte accounting behind dx.ep.Buffer.stats()."""
import sys
from pathlib import Path

import pytest
import torch

from deepseek_ext.ep.topology import Topology
from deepseek_ext.ep.traffic import bytes_by_link

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import ep_traffic  # noqa: E402


@pytest.mark.parametrize("ranks,per_node,experts", [(16, 4, 32), (8, 2, 8), (6, 3, 12)])
def test_ib_copies_match_a_count_per_token(ranks, per_node, experts):
    gen = torch.Generator().manual_seed(ranks)
    idx = torch.rand(300, experts, generator=gen).argsort(1)[:, :4]
    idx[torch.rand(300, 4, generator=gen) < 0.3] = -1
    src = torch.randint(0, ranks, (300,), generator=gen)
    flat, hierarchical = ep_traffic.ib_copies(idx, src, experts, ranks, per_node)
    for t in range(300):
        gpus = {e // (experts // ranks) for e in idx[t].tolist() if e >= 0}
        remote = {g for g in gpus if g // per_node != int(src[t]) // per_node}
        assert int(flat[t]) == len(remote)
        assert int(hierarchical[t]) == len({g // per_node for g in remote})


def test_v3_routing_crosses_at_most_4_nodes():
    for idx in (ep_traffic.untrained_routing(1024), ep_traffic.trained_routing(2, 256)[0]):
        r = ep_traffic.traffic(idx)
        assert r["hierarchical max"] <= 4 < r["flat max"] <= 8
        assert r["dispatch ratio"] < 0.7
        assert r["dispatch bytes hierarchical"] == pytest.approx(r["hierarchical copies"] * 7392)
    uniform = ep_traffic.traffic(ep_traffic.uniform_routing(1024))
    assert uniform["hierarchical max"] > 4  # without the group limit nothing bounds the nodes


def test_table_and_bench_rows():
    results = {"x": ep_traffic.traffic(ep_traffic.untrained_routing(64))}
    assert "| x | " in ep_traffic.format_table(results)
    ours, flat = ep_traffic.rows(results)
    assert ours["impl"] == "deepseek_ext" and flat["impl"] == "flat all_to_all"
    assert ours["value"] < flat["value"] and ours["unit"] == "IB bytes/token"


def test_bytes_by_link():
    topology = Topology(num_ranks=6, ranks_per_node=2, rank=3)  # node 1 = ranks 2, 3
    assert bytes_by_link([1, 2, 3, 4, 5, 6], topology, 10) == ((1 + 2 + 5 + 6) * 10, 3 * 10)
    assert bytes_by_link([], topology, 10) == (0, 0)
