"""Times a Schedule: every rank runs its ops in order, an op starts when the rank is free and
the passes it depends on (on any rank) are done; communication is taken as free."""
from __future__ import annotations

from dataclasses import dataclass

from deepseek_ext.pipeline.schedule import BACKWARD, FORWARD, WEIGHT, Op, Pass, Schedule


@dataclass(frozen=True)
class Costs:
    F: float   # forward of one chunk on one stage
    B: float   # full backward (input and weight gradients)
    W: float   # weight-gradient part of B
    FB: float  # a forward and a full backward of two chunks run overlapped


@dataclass(frozen=True)
class TimedOp:
    rank: int
    start: float
    end: float
    op: Op


def op_cost(op: Op, costs: Costs) -> float:
    if op.overlapped:
        return costs.FB
    p = op.passes[0]
    if p.kind == FORWARD:
        return costs.F
    if p.kind == WEIGHT:
        return costs.W
    return costs.B - costs.W if p.defer_weight_grad else costs.B


def _pass_key(schedule: Schedule, rank: int, p: Pass) -> tuple:
    route, position = schedule.locate(rank, p.module)
    return p.kind, route, position, p.chunk


def _dependencies(schedule: Schedule, rank: int, p: Pass) -> list[tuple]:
    """Passes on other positions that must be done first (same-rank order is the op order)."""
    route, position = schedule.locate(rank, p.module)
    last = len(schedule.routes[route]) - 1
    if p.kind == FORWARD and position > 0:
        return [(FORWARD, route, position - 1, p.chunk)]
    if p.kind == BACKWARD:
        own_forward = (FORWARD, route, position, p.chunk)
        return [own_forward] + ([(BACKWARD, route, position + 1, p.chunk)] if position < last else [])
    if p.kind == WEIGHT:
        return [(BACKWARD, route, position, p.chunk)]
    return []


def time_schedule(schedule: Schedule, costs: Costs) -> list[list[TimedOp]]:
    """Start and end of every op, per rank. Raises RuntimeError if the ranks would deadlock."""
    done: dict[tuple, float] = {}
    rank_time = [0.0] * schedule.num_ranks
    next_op = [0] * schedule.num_ranks
    timed: list[list[TimedOp]] = [[] for _ in range(schedule.num_ranks)]
    remaining = sum(len(ops) for ops in schedule.ops)
    while remaining:
        progressed = False
        for rank, ops in enumerate(schedule.ops):
            while next_op[rank] < len(ops):
                op = ops[next_op[rank]]
                deps = [d for p in op.passes for d in _dependencies(schedule, rank, p)]
                own = {_pass_key(schedule, rank, p) for p in op.passes}
                if any(d not in done and d not in own for d in deps):
                    break
                start = max([rank_time[rank]] + [done[d] for d in deps if d not in own])
                end = start + op_cost(op, costs)
                for p in op.passes:
                    done[_pass_key(schedule, rank, p)] = end
                timed[rank].append(TimedOp(rank, start, end, op))
                rank_time[rank] = end
                next_op[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {rank: schedule.ops[rank][i] for rank, i in enumerate(next_op) if i < len(schedule.ops[rank])}
            raise RuntimeError(f"schedule {schedule.method} deadlocks; waiting ops: {stuck}")
    return timed
