"""The step-start exchange of the pipeline ranks' descriptors, bounded in time.

It goes through the process group's c10d store, not a collective: a rank that never calls
step() (it raised in its own code first, or is busy elsewhere) would keep a collective waiting
for the whole process-group timeout (30 minutes by default). Here every rank that arrives
waits at most ``timeout`` seconds for the others' descriptors.

One step of a group, with ``P`` = its key prefix (the per-rank count of steps on this store,
the same on every rank because the ranks of a group start their steps in the same order):

1. each rank sets ``P/rank<r>`` to its descriptor and waits for every rank's key;
2. the first rank to decide sets ``P/outcome`` (an atomic compare-and-set): ``go`` when it saw
   every key, ``abandoned`` with the missing ranks when its wait ran out. Every rank obeys the
   outcome it reads back, so either all ranks run the step or every rank that arrives raises
   the same TimeoutError, including a latecomer (it finds the step abandoned at once, which
   also brings its step count back in line with its peers');
3. the last rank to read (a counter) deletes the step's keys.
"""
from __future__ import annotations

import datetime
import json
import math
import os

import torch.distributed as dist

from deepseek_ext.pipeline.agreement import name_ranks

TIMEOUT_ENV = "DEEPSEEK_EXT_PIPELINE_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
_ROOT = "deepseek_ext/pipeline"


def resolve_agreement_timeout(value: float | None) -> float:
    """Seconds the ranks wait for each other at step start: ``value``, else $DEEPSEEK_EXT_PIPELINE_TIMEOUT,
    else DEFAULT_TIMEOUT_S."""
    name = "agreement_timeout"
    if value is None and os.environ.get(TIMEOUT_ENV):
        name, value = TIMEOUT_ENV, os.environ[TIMEOUT_ENV]
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a number of seconds, got {value!r}") from None
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number of seconds, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: expected a positive, finite number of seconds, got {value!r}")
    return float(value)


def _store(group):
    return dist.distributed_c10d._get_process_group_store(group or dist.distributed_c10d._get_default_group())


def exchange_descriptors(descriptor: dict, group, group_rank: int, num_ranks: int, timeout: float,
                         pipeline_name: str) -> list[dict]:
    """Every rank's descriptor, in process-group rank order; TimeoutError naming the ranks that
    did not arrive within ``timeout`` seconds."""
    if num_ranks == 1:
        return [descriptor]
    store = _store(group)
    step = store.add(f"{_ROOT}/rank{group_rank}/steps", 1)
    prefix = f"{_ROOT}/step{step}"
    keys, outcome_key = [f"{prefix}/rank{r}" for r in range(num_ranks)], f"{prefix}/outcome"
    store.set(keys[group_rank], json.dumps(descriptor))
    missing = []
    try:
        if not store.check([outcome_key]):  # a latecomer to a decided step does not wait
            store.wait(keys, datetime.timedelta(seconds=timeout))
    except RuntimeError:  # the store's wait timed out (DistStoreError is a RuntimeError)
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
    proposal = json.dumps({"missing": missing, "decided_by": group_rank})
    outcome = json.loads(store.compare_set(outcome_key, "", proposal))
    descriptors = [json.loads(store.get(key)) for key in keys] if not outcome["missing"] else None
    if store.add(f"{prefix}/read", 1) == num_ranks:  # everyone is past this step: its keys can go
        for key in (*keys, outcome_key, f"{prefix}/read"):
            store.delete_key(key)
    if descriptors is None:
        arrived = [r for r in range(num_ranks) if r not in outcome["missing"]]
        raise TimeoutError(
            f"{pipeline_name} step {step}: {name_ranks(outcome['missing'])} of the process group did not start the step "
            f"within {timeout:g} s, while {name_ranks(arrived)} waited (rank {outcome['decided_by']} gave up first). "
            "A rank that raised before step(), or is busy elsewhere, stops its peers here instead of deadlocking "
            f"them; to wait longer, pass agreement_timeout= to the pipeline or set ${TIMEOUT_ENV} (seconds).")
    return descriptors
