"""Traffic model of expert-parallel dispatch/combine across nodes, on the CPU: DeepSeek-V3's
routing (256 experts, top-8, 8 groups, top-4 groups) on 8 nodes x 8 GPUs, 4 experts per GPU.

    python bench/ep_traffic.py [--quick] [--json PATH]

For every token (its source GPU spread evenly over the 64), counted from its routing:
- flat (one all_to_all over all GPUs): one InfiniBand copy per GPU on another node holding one of
  its experts;
- hierarchical (dx.ep.Buffer with ranks_per_node=8): one copy per other node holding one of its
  experts, forwarded over NVLink there.
Bytes per copy: dispatch moves FP8 rows with their scales (7168 + 56 x 4 bytes), combine bf16
partials (7168 x 2 bytes). dx.ep's combine returns one partial per (token, GPU), as flat does, to
stay bitwise equal to it; "node-reduced" is what summing inside the node first would send.

Routings: a gate trained briefly here (DeepSeekMoE with V3's routing, hidden 64, next-byte
prediction on the demo's corpus, bias balancing on), the same gate untrained (random
affinities), and top-8 of 256 uniformly at random without the group limit (what today's flat
routing may do).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import deepseek_ext as dx
from deepseek_ext.demo.corpus import Corpus, load_corpus_bytes
from report import OURS, make_row

EXPERTS, TOPK, GROUPS, TOPK_GROUPS = 256, 8, 8, 4
NODES, GPUS_PER_NODE, HIDDEN = 8, 8, 7168
DISPATCH_ROW = HIDDEN + 4 * (HIDDEN // 128)  # FP8 x and its 1x128 scales
COMBINE_ROW = 2 * HIDDEN  # a bf16 partial
CONTEXT, MODEL_HIDDEN = 4, 64  # the trained gate's byte model


def ib_copies(topk_idx: torch.Tensor, src_rank: torch.Tensor, num_experts: int, num_ranks: int,
              ranks_per_node: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (GPUs on other nodes it reaches, other nodes it reaches); -1 slots go nowhere."""
    num_tokens, nodes = topk_idx.shape[0], num_ranks // ranks_per_node
    rank = torch.where(topk_idx >= 0, topk_idx // (num_experts // num_ranks), num_ranks)
    reached = torch.zeros(num_tokens, num_ranks + 1, dtype=torch.bool).scatter_(1, rank, True)[:, :num_ranks]
    remote = torch.arange(nodes)[None, :] != (src_rank // ranks_per_node)[:, None]  # [T, nodes]
    by_node = reached.view(num_tokens, nodes, ranks_per_node)
    flat = (by_node & remote[:, :, None]).sum((1, 2))
    hierarchical = (by_node.any(2) & remote).sum(1)
    return flat, hierarchical


class _ByteModel(nn.Module):
    """The last CONTEXT bytes -> next byte, through one DeepSeekMoE layer with V3's routing."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(CONTEXT * 256, MODEL_HIDDEN)
        self.moe = dx.nn.DeepSeekMoE(MODEL_HIDDEN, 16, EXPERTS, TOPK, n_shared=1, n_groups=GROUPS,
                                     topk_groups=TOPK_GROUPS, fp8=False)
        self.head = nn.Linear(MODEL_HIDDEN, 256)

    def hidden(self, context: torch.Tensor) -> torch.Tensor:
        return self.embed(context + 256 * torch.arange(CONTEXT)).sum(1)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        h = self.hidden(context)
        return self.head(h + self.moe(h))


def _windows(data: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return data[starts[:, None] + torch.arange(CONTEXT)], data[starts + CONTEXT]


def trained_routing(steps: int, num_tokens: int) -> tuple[torch.Tensor, dict]:
    """Trains the byte model `steps` steps of 512 positions, then routes `num_tokens` held-out ones."""
    torch.manual_seed(0)
    corpus = Corpus(load_corpus_bytes())
    model = _ByteModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        context, target = _windows(corpus.train, torch.randint(0, len(corpus.train) - CONTEXT, (512,), generator=gen))
        loss = F.cross_entropy(model(context), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.moe.gate.update_bias()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        context, _ = _windows(corpus.held_out, torch.arange(min(num_tokens, len(corpus.held_out) - CONTEXT)))
        idx = model.moe.gate(model.hidden(context)).topk_idx
    load = torch.bincount(idx.flatten(), minlength=EXPERTS).float()
    return idx, {"steps": steps, "loss first": losses[0], "loss last 10": sum(losses[-10:]) / 10,
                 "max/mean expert load": float(load.max() / load.mean())}


def untrained_routing(num_tokens: int) -> torch.Tensor:
    torch.manual_seed(1)
    gate = dx.nn.MoEGate(MODEL_HIDDEN, EXPERTS, TOPK, GROUPS, TOPK_GROUPS, num_nodes=NODES)
    with torch.no_grad():
        return gate(torch.randn(num_tokens, MODEL_HIDDEN)).topk_idx


def uniform_routing(num_tokens: int) -> torch.Tensor:
    return torch.rand(num_tokens, EXPERTS, generator=torch.Generator().manual_seed(2)).topk(TOPK, dim=1).indices


def traffic(topk_idx: torch.Tensor) -> dict:
    """IB copies and bytes per token (means over the tokens), tokens spread evenly over the GPUs."""
    num_ranks = NODES * GPUS_PER_NODE
    src_rank = torch.arange(topk_idx.shape[0]) * num_ranks // topk_idx.shape[0]
    flat, hierarchical = ib_copies(topk_idx, src_rank, EXPERTS, num_ranks, GPUS_PER_NODE)
    flat_mean, hier_mean = flat.float().mean().item(), hierarchical.float().mean().item()
    return {"tokens": topk_idx.shape[0], "flat copies": flat_mean, "flat max": int(flat.max()),
            "hierarchical copies": hier_mean, "hierarchical max": int(hierarchical.max()),
            "dispatch bytes flat": flat_mean * DISPATCH_ROW, "dispatch bytes hierarchical": hier_mean * DISPATCH_ROW,
            "dispatch ratio": hier_mean / flat_mean, "combine bytes flat and dx.ep": flat_mean * COMBINE_ROW,
            "combine bytes node-reduced": hier_mean * COMBINE_ROW}


def model(quick: bool) -> dict:
    num_tokens = 2048 if quick else 4096
    trained, training = trained_routing(40 if quick else 200, num_tokens)
    return {"trained gate": {**traffic(trained), "training": training},
            "untrained gate (random affinities)": traffic(untrained_routing(num_tokens)),
            "uniform top-8, no group limit": traffic(uniform_routing(num_tokens))}


def format_table(results: dict) -> str:
    lines = ["| routing | IB copies/token flat (max) | hierarchical (max) | ratio | dispatch IB KB/token flat -> "
             "hierarchical | combine IB KB/token flat = dx.ep -> node-reduced |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['flat copies']:.2f} ({r['flat max']}) | {r['hierarchical copies']:.2f} "
                     f"({r['hierarchical max']}) | {r['dispatch ratio']:.2f} | {r['dispatch bytes flat'] / 1e3:.1f} -> "
                     f"{r['dispatch bytes hierarchical'] / 1e3:.1f} | {r['combine bytes flat and dx.ep'] / 1e3:.1f} -> "
                     f"{r['combine bytes node-reduced'] / 1e3:.1f} |")
    return "\n".join(lines)


def rows(results: dict) -> list[dict]:
    """Bench rows (bench/report.py): IB bytes per token, hierarchical as ours, flat as the baseline."""
    shape = f"V3 routing, {NODES} nodes x {GPUS_PER_NODE} GPUs"
    out = []
    for name, r in results.items():
        op = f"dispatch IB bytes/token ({name})"
        out += [make_row("ep", op, shape, OURS, 0.0, r["dispatch bytes hierarchical"], "IB bytes/token"),
                make_row("ep", op, shape, "flat all_to_all", 0.0, r["dispatch bytes flat"], "IB bytes/token")]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a shorter training, fewer tokens")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    results = model(args.quick)
    print(format_table(results))
    print(f"trained gate: {json.dumps(results['trained gate']['training'])}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
