"""GPU timing for the benchmarks: CUDA events, cold L2, median of many runs."""
from __future__ import annotations

import statistics

import torch

_L2_FLUSH_BYTES = 256 << 20  # several times the H100/H200 L2 (50-60 MB)
_flush_buffer: torch.Tensor | None = None


def _flush_l2() -> None:
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    _flush_buffer.zero_()


def time_ms(fn, *, warmup: int = 5, reps: int = 50, cold_l2: bool = True) -> float:
    """Median milliseconds of fn() over `reps` runs, each timed alone with CUDA events and
    (cold_l2) preceded by an L2 flush so inputs come from HBM as in a real model step."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        if cold_l2:
            _flush_l2()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def graph_time_ms(fn, *, reps: int = 50, cold_l2: bool = True) -> float:
    """Median milliseconds of a CUDA-graph replay of fn() (hides launch overhead for small work)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay, warmup=3, reps=reps, cold_l2=cold_l2)
