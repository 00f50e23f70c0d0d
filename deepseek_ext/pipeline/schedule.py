"""Pipeline schedules as data: for every rank, the ordered list of passes it runs.

The simulator (simulate.py) times these lists and the runtime (dualpipe.py, dualpipev.py)
executes them, so a drawn timeline is exactly what runs.

Vocabulary:
- a *module* is one of a rank's stage modules (index 0 or 1);
- a *route* is the path one micro-batch (chunk) takes: the (rank, module) positions of the
  stages it passes through, first stage first. Chunks of a route are numbered 0, 1, ...;
- a *pass* is the work of one chunk on one module: forward ``F``, backward ``B`` (input and
  weight gradients, or only input gradients when ``defer_weight_grad`` is set, the weight
  gradients then being left to a later ``W`` pass of the same chunk);
- an *op* is what a rank does in one go: one pass, or a forward and a backward pass of two
  different chunks run overlapped (F&B).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cached_property

FORWARD, BACKWARD, WEIGHT = "F", "B", "W"
METHODS = ("1f1b", "zb1p", "dualpipe", "dualpipev")


@dataclass(frozen=True)
class Pass:
    kind: str
    module: int
    chunk: int
    defer_weight_grad: bool = False


@dataclass(frozen=True)
class Op:
    passes: tuple[Pass, ...]  # one pass, or (forward, backward) run overlapped

    @property
    def overlapped(self) -> bool:
        return len(self.passes) == 2


@dataclass(frozen=True)
class Schedule:
    method: str
    num_ranks: int
    modules_per_rank: int
    routes: tuple[tuple[tuple[int, int], ...], ...]
    chunks_per_route: int
    ops: tuple[tuple[Op, ...], ...]  # ops[rank]

    @cached_property
    def _route_position(self) -> dict[tuple[int, int], tuple[int, int]]:
        return {where: (route, position) for route, positions in enumerate(self.routes)
                for position, where in enumerate(positions)}

    def locate(self, rank: int, module: int) -> tuple[int, int]:
        """(route, position along the route) of a rank's module."""
        return self._route_position[(rank, module)]

    def forward_only(self) -> "Schedule":
        """The same order with only the forward passes (inference: nothing to backpropagate)."""
        ops = tuple(tuple(Op((p,)) for op in rank_ops for p in op.passes if p.kind == FORWARD)
                    for rank_ops in self.ops)
        return Schedule(self.method, self.num_ranks, self.modules_per_rank, self.routes,
                        self.chunks_per_route, ops)


class _RankOps:
    """Builds one rank's op list; keeps the per-module chunk counters and the FIFO of deferred W."""

    def __init__(self, module_of_phase: tuple[int, ...]):
        self.module_of_phase = module_of_phase
        self.ops: list[Op] = []
        self._next_forward = [0] * len(module_of_phase)
        self._next_backward = [0] * len(module_of_phase)
        self._deferred: deque[Pass] = deque()

    def _forward_pass(self, phase: int) -> Pass:
        chunk = self._next_forward[phase]
        self._next_forward[phase] += 1
        return Pass(FORWARD, self.module_of_phase[phase], chunk)

    def _backward_pass(self, phase: int, defer: bool) -> Pass:
        chunk = self._next_backward[phase]
        self._next_backward[phase] += 1
        backward = Pass(BACKWARD, self.module_of_phase[phase], chunk, defer)
        if defer:
            self._deferred.append(backward)
        return backward

    def forward(self, phase: int = 0) -> None:
        self.ops.append(Op((self._forward_pass(phase),)))

    def backward(self, phase: int = 0, defer: bool = False) -> None:
        self.ops.append(Op((self._backward_pass(phase, defer),)))

    @property
    def deferred(self) -> int:
        return len(self._deferred)

    def weight(self) -> None:
        oldest = self._deferred.popleft()
        self.ops.append(Op((Pass(WEIGHT, oldest.module, oldest.chunk),)))

    def forward_backward(self, forward_phase: int, backward_phase: int) -> None:
        self.ops.append(Op((self._forward_pass(forward_phase), self._backward_pass(backward_phase, False))))


def _linear_route(num_ranks: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    return (tuple((rank, 0) for rank in range(num_ranks)),)


def one_f_one_b(num_ranks: int, num_chunks: int) -> Schedule:
    """1F1B: warm-up forwards, then one forward and one full backward in turn, then cool-down."""
    ops = []
    for rank in range(num_ranks):
        b = _RankOps((0,))
        warmup = min(num_ranks - rank - 1, num_chunks)
        for _ in range(warmup):
            b.forward()
        for _ in range(num_chunks - warmup):
            b.forward()
            b.backward()
        for _ in range(warmup):
            b.backward()
        ops.append(tuple(b.ops))
    return Schedule("1f1b", num_ranks, 1, _linear_route(num_ranks), num_chunks, tuple(ops))


def zero_bubble_h1(num_ranks: int, num_chunks: int) -> Schedule:
    """ZB1P (zero-bubble ZB-H1): 1F1B with the backward split into B and W; rank r keeps its
    first r weight-gradient passes back and runs them in the cool-down, where 1F1B idles."""
    ops = []
    for rank in range(num_ranks):
        b = _RankOps((0,))
        warmup = min(num_ranks - rank - 1, num_chunks)
        held_back = min(rank, num_chunks)
        for _ in range(warmup):
            b.forward()
        for i in range(num_chunks - warmup):
            b.forward()
            b.backward(defer=True)
            if i >= held_back:
                b.weight()
        for _ in range(warmup):
            b.backward(defer=True)
            b.weight()
        while b.deferred:
            b.weight()
        ops.append(tuple(b.ops))
    return Schedule("zb1p", num_ranks, 1, _linear_route(num_ranks), num_chunks, tuple(ops))


def _bidirectional_rank_ops(num_half_ranks: int, half_rank: int, chunks: int,
                            module_of_phase: tuple[int, int]) -> tuple[Op, ...]:
    """The DualPipe order of one rank. Phase 0 is the route that starts on this rank's side of
    the pipeline, phase 1 the route coming from the other side; ``half_rank`` is the distance
    from the nearest end (0 at both ends, num_half_ranks - 1 in the middle)."""
    H, h, b = num_half_ranks, half_rank, _RankOps(module_of_phase)
    in_middle = h == H - 1
    # 1. ranks nearer the ends start earlier: extra forwards of their own route
    for _ in range(2 * (H - h - 1)):
        b.forward(0)
    # 2. forwards of both routes, alternating, until the other route's first chunk came through
    for _ in range(h + 1):
        b.forward(0)
        b.forward(1)
    # 3. the other route's first backwards arrive: B, its W at once (it fills the wait), F
    for _ in range(H - h - 1):
        b.backward(1, defer=True)
        b.weight()
        b.forward(1)
    # 4. steady phase: every forward overlapped with a backward of the other route
    for i in range(chunks - 2 * H + h + 1):
        if i == 0 and in_middle:
            b.forward(0)  # run apart: its output moves on (to the other middle rank, or round the V) without waiting
            b.backward(1)
        else:
            b.forward_backward(0, 1)
        b.forward_backward(1, 0)
    # 5. own route's forwards are done: the other route still pairs F1 with B0
    for _ in range(H - h - 1):
        b.backward(1)
        b.forward_backward(1, 0)
    # 6. cool-down backwards; from the middle of it on, weight gradients are deferred
    defer = False
    for i in range(h + 1):
        if i == (h + 1) // 2 and h % 2 == 1:
            defer = True
        b.backward(1, defer)
        if i == (h + 1) // 2 and h % 2 == 0:
            defer = True
        b.backward(0, defer)
    # 7. deferred weight gradients fill the waits between the last backwards
    for _ in range(H - h - 1):
        b.weight()
        b.backward(0, defer=True)
    # 8. the remaining deferred weight gradients
    for _ in range(h + 1):
        b.weight()
    return tuple(b.ops)


def dualpipe(num_ranks: int, num_chunks: int) -> Schedule:
    """DualPipe: rank r holds stages r (module 0) and num_ranks-1-r (module 1). Route 0 enters at
    rank 0 through the modules 0, route 1 at the last rank through the modules 1; each carries
    num_chunks / 2 chunks."""
    check_dualpipe_config(num_ranks, num_chunks, ranks_arg="pp")
    half = num_ranks // 2
    ops = []
    for rank in range(num_ranks):
        in_second_half = rank >= half
        module_of_phase = (1, 0) if in_second_half else (0, 1)
        half_rank = min(rank, num_ranks - 1 - rank)
        ops.append(_bidirectional_rank_ops(half, half_rank, num_chunks // 2, module_of_phase))
    routes = (tuple((r, 0) for r in range(num_ranks)),
              tuple((r, 1) for r in reversed(range(num_ranks))))
    return Schedule("dualpipe", num_ranks, 2, routes, num_chunks // 2, tuple(ops))


def dualpipev(num_ranks: int, num_chunks: int) -> Schedule:
    """DualPipeV: rank r holds stages r (module 0) and 2*num_ranks-1-r (module 1); one route goes
    down the modules 0 and back up the modules 1, so it starts and ends on rank 0. This is the
    first half of DualPipe on 2*num_ranks ranks with the middle folded onto the last rank."""
    check_dualpipev_config(num_ranks, num_chunks, ranks_arg="pp")
    ops = tuple(_bidirectional_rank_ops(num_ranks, rank, num_chunks, (0, 1)) for rank in range(num_ranks))
    route = tuple((r, 0) for r in range(num_ranks)) + tuple((r, 1) for r in reversed(range(num_ranks)))
    return Schedule("dualpipev", num_ranks, 2, (route,), num_chunks, ops)


def check_dualpipe_config(num_ranks: int, num_chunks: int | None, ranks_arg: str = "process_group") -> None:
    """num_chunks None: check the ranks only."""
    if num_ranks < 2 or num_ranks % 2:
        raise ValueError(f"{ranks_arg}: DualPipe needs an even number of ranks >= 2, got {num_ranks}")
    if num_chunks is not None and (num_chunks < 2 * num_ranks or num_chunks % 2):
        raise ValueError(f"num_chunks: DualPipe needs an even num_chunks >= 2 * ranks = {2 * num_ranks}, "
                         f"got {num_chunks}")


def check_dualpipev_config(num_ranks: int, num_chunks: int | None, ranks_arg: str = "process_group") -> None:
    """num_chunks None: check the ranks only."""
    if num_ranks < 1:
        raise ValueError(f"{ranks_arg}: DualPipeV needs at least one rank, got {num_ranks}")
    if num_chunks is not None and num_chunks < 2 * num_ranks:
        raise ValueError(f"num_chunks: DualPipeV needs num_chunks >= 2 * ranks = {2 * num_ranks}, "
                         f"got {num_chunks}")


_BUILDERS = {"1f1b": one_f_one_b, "zb1p": zero_bubble_h1, "dualpipe": dualpipe, "dualpipev": dualpipev}


def build_schedule(method: str, num_ranks: int, num_chunks: int) -> Schedule:
    if method not in _BUILDERS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if num_ranks < 1:
        raise ValueError(f"pp: expected >= 1, got {num_ranks}")
    if num_chunks < 1:
        raise ValueError(f"num_chunks: expected >= 1, got {num_chunks}")
    return _BUILDERS[method](num_ranks, num_chunks)
