"""The ranks' agreement at the start of a pipeline step.

Before any point-to-point message, every rank of the pipeline's process group shares a
descriptor of its call (its local checks passed or their error text, num_chunks, grad mode,
batch_dim, rank_mapping, the batch size / per-sample shape / dtype of the inputs it feeds and
the labels it holds) through step_exchange, which is bounded in time. Every rank then runs the
same checks on the same list, so a bad call raises the same ValueError on every rank instead of
leaving the others waiting on a receive that never comes.
"""
from __future__ import annotations

import json


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


def name_ranks(ranks) -> str:
    """'rank 3' or 'ranks 0, 2'."""
    ranks = sorted(ranks)
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _disagreement(field: str, values: dict[int, object], what: str) -> str | None:
    """None when every rank gives the same value, else a message naming each value's ranks."""
    by_value: dict[str, list[int]] = {}
    for rank, value in values.items():
        by_value.setdefault(json.dumps(value), []).append(rank)
    if len(by_value) <= 1:
        return None
    parts = "; ".join(f"{v} on {name_ranks(r)}" for v, r in by_value.items())
    return f"{field}: the ranks of the {what} disagree ({parts})"


def check_agreement(descriptors: list[dict], pipeline_name: str) -> str | None:
    """The first problem every rank sees in the descriptors (process-group rank order), or None.

    Route-level checks (inputs vs. labels) are made by check_routes once the schedule exists."""
    failed = [(r, d["error"]) for r, d in enumerate(descriptors) if not d["ok"]]
    if failed:
        by_text: dict[str, list[int]] = {}
        for rank, text in failed:
            by_text.setdefault(text, []).append(rank)
        return "; ".join(f"{text} [{pipeline_name} step: failed on {name_ranks(r)}]" for text, r in by_text.items())
    what = f"{pipeline_name} step"
    for field, key in (("num_chunks", "num_chunks"), ("batch_dim", "batch_dim"), ("rank_mapping", "rank_mapping"),
                       ("grad mode (torch.is_grad_enabled())", "training")):
        problem = _disagreement(field, {r: d[key] for r, d in enumerate(descriptors)}, what)
        if problem:
            return problem
    return None


def _per_sample(described) -> list:
    return [[shape, dtype] for _, shape, dtype in described]


def check_routes(descriptors: list[dict], routes, pipeline_name: str) -> str | None:
    """Inputs vs. labels of every route, and the routes against each other (the same stage
    models run them all): the same per-sample shapes and dtypes. ``descriptors`` are in pipeline
    rank order (rank_mapping applied), the order the routes name."""
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
