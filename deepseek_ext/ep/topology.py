"""Which ranks of an expert-parallel group share a node.

Ranks are numbered node-major: group rank r sits on node r // ranks_per_node at local index
r % ranks_per_node (torchrun's numbering). `resolve_topology` takes an explicit ranks_per_node
(one machine may simulate several nodes) or derives it: from LOCAL_WORLD_SIZE when every rank has
it (torchrun sets it), else from the hostnames. Every rank of the group must agree.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    num_ranks: int
    ranks_per_node: int
    rank: int  # this process's rank in the group

    @property
    def num_nodes(self) -> int:
        return self.num_ranks // self.ranks_per_node

    @property
    def node(self) -> int:
        return self.node_of(self.rank)

    @property
    def local_index(self) -> int:
        return self.rank % self.ranks_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node


def check_ranks_per_node(ranks_per_node, num_ranks: int) -> None:
    if isinstance(ranks_per_node, bool) or not isinstance(ranks_per_node, int):
        raise TypeError(f"ranks_per_node must be an int or None, got {type(ranks_per_node).__name__}")
    if ranks_per_node < 1 or num_ranks % ranks_per_node:
        raise ValueError(f"ranks_per_node must be >= 1 and divide the group's {num_ranks} ranks, got {ranks_per_node}")


def _node_keys(everyone: list[tuple]) -> list:
    """Per group rank, what identifies its node: global rank // LOCAL_WORLD_SIZE when every rank
    has that variable, else the hostname."""
    sizes = [local_world for _, local_world, _, _ in everyone]
    if all(s is not None for s in sizes):
        return [global_rank // int(s) for _, s, _, global_rank in everyone]
    return [host for _, _, host, _ in everyone]


def _ranks_per_node_of(keys: list) -> int:
    """The size of the runs of equal keys, which must be equal and one run per key."""
    runs = [1]
    for before, key in zip(keys, keys[1:]):
        if key == before:
            runs[-1] += 1
        else:
            runs.append(1)
    if len(set(runs)) != 1 or len(runs) != len(set(keys)):
        raise ValueError("the ranks of each node must be contiguous in the group and every node must hold "
                         f"as many ranks (node of each group rank: {keys}); pass ranks_per_node explicitly")
    return runs[0]


def resolve_topology(group, ranks_per_node: int | None) -> Topology:
    """Collective over `group`: the ranks agree on ranks_per_node (explicit or derived)."""
    num_ranks, rank = dist.get_world_size(group), dist.get_rank(group)
    if ranks_per_node is not None:
        check_ranks_per_node(ranks_per_node, num_ranks)
    mine = (ranks_per_node, os.environ.get("LOCAL_WORLD_SIZE"), socket.gethostname(), dist.get_global_rank(group, rank))
    everyone = [None] * num_ranks
    dist.all_gather_object(everyone, mine, group=group)
    asked = [explicit for explicit, _, _, _ in everyone]
    if len(set(asked)) != 1:
        raise ValueError(f"ranks_per_node differs across ranks (per group rank: {asked}); pass the same value everywhere")
    if ranks_per_node is None:
        ranks_per_node = _ranks_per_node_of(_node_keys(everyone))
    return Topology(num_ranks, ranks_per_node, rank)
