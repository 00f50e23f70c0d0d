"""The ranks' agreement at the start of a pipeline step.

Before any point-to-point message, every rank of the pipeline's process group shares one
fixed-size descriptor of its call (its local checks passed or their error text, num_chunks,
grad mode, batch_dim, the batch size / per-sample shape / dtype of the inputs it feeds and the
labels it holds) in ONE all_gather. Every rank then runs the same checks on the same gathered
list, so a bad call raises the same ValueError on every rank instead of leaving the others
waiting on a receive that never comes.
"""
from __future__ import annotations

import json

import torch
import torch.distributed as dist

DESCRIPTOR_BYTES = 4096
_MAX_ERROR_CHARS = 1500


def describe_tensors(tensors, batch_dim: int) -> list | None:
    """[(batch, per-sample shape, dtype)] of a tuple of tensors; None when not given."""
    if tensors is None:
        return None
    out = []
    for t in tensors:
        shape = list(t.shape)
        batch = shape.pop(batch_dim) if len(shape) > batch_dim else None
        out.append([batch, shape, str(t.dtype).removeprefix("torch.")])
    return out


def _encode(descriptor: dict) -> bytes:
    data = json.dumps(descriptor).encode()
    if len(data) > DESCRIPTOR_BYTES and descriptor.get("error"):
        descriptor = dict(descriptor, error=descriptor["error"][:_MAX_ERROR_CHARS] + " ...")
        data = json.dumps(descriptor).encode()
    if len(data) > DESCRIPTOR_BYTES:  # too many tensors to describe: keep the counts only
        descriptor = dict(descriptor, inputs=None if descriptor["inputs"] is None else len(descriptor["inputs"]),
                          labels=None if descriptor["labels"] is None else len(descriptor["labels"]))
        data = json.dumps(descriptor).encode()
    return data


def gather_descriptors(descriptor: dict, group, num_ranks: int, device: torch.device) -> list[dict]:
    """Every rank's descriptor, in group-rank order (one all_gather of DESCRIPTOR_BYTES per rank)."""
    if num_ranks == 1:
        return [descriptor]
    data = _encode(descriptor)
    buffer = torch.zeros(DESCRIPTOR_BYTES + 4, dtype=torch.uint8)
    buffer[:4] = torch.tensor(list(len(data).to_bytes(4, "little")), dtype=torch.uint8)
    buffer[4:4 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    buffer = buffer.to(device)
    gathered = [torch.empty_like(buffer) for _ in range(num_ranks)]
    dist.all_gather(gathered, buffer, group=group)
    result = []
    for g in gathered:
        raw = bytes(g.cpu().tolist())
        size = int.from_bytes(raw[:4], "little")
        result.append(json.loads(raw[4:4 + size].decode()))
    return result


def _ranks(ranks) -> str:
    ranks = sorted(ranks)
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _disagreement(field: str, values: dict[int, object], what: str) -> str | None:
    """None when every rank gives the same value, else a message naming each value's ranks."""
    by_value: dict[str, list[int]] = {}
    for rank, value in values.items():
        by_value.setdefault(json.dumps(value), []).append(rank)
    if len(by_value) <= 1:
        return None
    parts = "; ".join(f"{v} on {_ranks(r)}" for v, r in by_value.items())
    return f"{field}: the ranks of the {what} disagree ({parts})"


def check_agreement(descriptors: list[dict], pipeline_name: str) -> str | None:
    """The first problem every rank sees in the gathered descriptors, or None.

    Route-level checks (inputs vs. labels) are made by check_routes once the schedule exists."""
    failed = [(r, d["error"]) for r, d in enumerate(descriptors) if not d["ok"]]
    if failed:
        by_text: dict[str, list[int]] = {}
        for rank, text in failed:
            by_text.setdefault(text, []).append(rank)
        return "; ".join(f"{text} [{pipeline_name} step: failed on {_ranks(r)}]" for text, r in by_text.items())
    what = f"{pipeline_name} step"
    for field, key in (("num_chunks", "num_chunks"), ("batch_dim", "batch_dim"),
                       ("grad mode (torch.is_grad_enabled())", "training")):
        problem = _disagreement(field, {r: d[key] for r, d in enumerate(descriptors)}, what)
        if problem:
            return problem
    return None


def _per_sample(described) -> list:
    return [[shape, dtype] for _, shape, dtype in described]


def check_routes(descriptors: list[dict], routes, pipeline_name: str) -> str | None:
    """Inputs vs. labels of every route, and the routes against each other (the same stage
    models run them all): the same per-sample shapes and dtypes."""
    starts = {}
    for route, positions in enumerate(routes):
        first, last = positions[0][0], positions[-1][0]
        inputs, labels = descriptors[first]["inputs"], descriptors[last]["labels"]
        if isinstance(inputs, list) and inputs:
            starts[route] = (first, inputs)
        if isinstance(inputs, list) and inputs and isinstance(labels, list):
            batch = inputs[0][0]
            for i, (label_batch, shape, dtype) in enumerate(labels):
                if label_batch != batch:
                    return (f"labels[{i}]: batch {label_batch} along batch_dim on rank {last} != the inputs' batch "
                            f"{batch} on rank {first} (route {route} of {pipeline_name}; shape {shape} per sample, "
                            f"{dtype})")
    if len(starts) > 1:
        problem = _disagreement("inputs (per-sample shapes and dtypes)",
                                {rank: _per_sample(inputs) for rank, inputs in starts.values()},
                                f"{pipeline_name} step (every route runs the same stages)")
        if problem:
            return problem
    ends = {}
    for route, positions in enumerate(routes):
        last = positions[-1][0]
        if isinstance(descriptors[last]["labels"], list):
            ends[last] = _per_sample(descriptors[last]["labels"])
    if len(ends) > 1:
        return _disagreement("labels (per-sample shapes and dtypes)", ends,
                             f"{pipeline_name} step (every route ends in the same criterion)")
    return None
