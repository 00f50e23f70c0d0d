"""Host time of one eager call of every dx.gemm and dx.quant op (and the permute glue), with the
kernel launch stubbed out: what the host spends around a launch (finding the call's plan, address
checks, output allocation, arguments) that a small GPU kernel would otherwise wait on. Runs on
any machine.

How it is measured: DEEPSEEK_EXT_BACKEND=emulate sends CPU tensors down the kernel path, and the
launcher module serving them (deepseek_ext._backend._emu, or _C's names where the emulator was not
built) is swapped for a namespace whose launchers are C no-ops returning success, so no kernel
work runs. Everything up to the launcher call is real: the public function, finding the plan
(validation and planning happen once per argument signature), the address checks, output
allocation and the launcher's arguments. No op reads index tensors on this path (the kernels
check them); permute_to_grouped reads the per-expert counts, as it does on a GPU (its one sync).
Inputs are allocated and never read. A figure is the calling thread's CPU time (time.thread_time)
per call, the best of many batches of 100 calls after a warm-up, the batches spread over rounds
through all the ops: what the host spends, less disturbed than wall time by other processes on a
shared machine (a slow spell of a shared machine lasts longer than one op's batches). The process
keeps the CPU memory it frees (keep_freed_memory), as CUDA's caching allocator keeps device
memory. `torch.empty` of a 128x1024 tensor is timed as the yardstick.

Both routes of an op are timed in the same run: the eager route (the default: each argument
signature validated and planned once, then the plan run directly) and the torch.library route
(every call validated, planned and dispatched: the route torch.compile traces, and the one every
eager call took before; deepseek_ext.ops._eager.enabled = False). Not seen here: on a GPU the
launch wrapper also reads the current device and stream, and the launch itself adds the pybind11
argument conversion and the driver's time.

    python bench/host_overhead.py [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

import deepseek_ext as dx  # noqa: E402
from deepseek_ext import _backend  # noqa: E402
from deepseek_ext.ops import _eager  # noqa: E402
from deepseek_ext.reference.quant import FP8_DTYPE, GROUP, ceil_div, empty_m_major_scales  # noqa: E402

SUITE = "host"
DISPATCHER = "torch.library dispatch"
TOKENS, HIDDEN, INTER, EXPERTS, TOPK = 128, 7168, 2048, 4, 2  # a decode-sized DeepSeek-V3 step
# Wgrad's fp32 output [EXPERTS, WGRAD_DIM, WGRAD_DIM] stays under glibc's 32 MB mmap threshold: a CPU
# allocation above it is mmapped afresh on every call, a cost CUDA's caching allocator does not have.
WGRAD_DIM = 1024
TARGET_US = 5.0


# A launcher that does nothing and reports success (""): a C call taking any arguments, as the
# real launchers are C calls, so no Python frame of the stub's own is timed.
_launch_nothing = "".format


@contextlib.contextmanager
def stubbed_launches() -> Iterator[None]:
    """CPU tensors take the kernel path into launchers that do nothing and report success."""
    module = _backend._emu or _backend._C
    if module is None:
        raise RuntimeError("neither deepseek_ext._emu nor deepseek_ext._C was built: no kernel path to measure")
    stub = types.SimpleNamespace(**{name: _launch_nothing if callable(value) else value
                                    for name, value in vars(module).items() if not name.startswith("__")})
    saved_emu, saved_env = _backend._emu, os.environ.get("DEEPSEEK_EXT_BACKEND")
    _backend._emu, os.environ["DEEPSEEK_EXT_BACKEND"] = stub, "emulate"
    try:
        yield
    finally:
        _backend._emu = saved_emu
        if saved_env is None:
            del os.environ["DEEPSEEK_EXT_BACKEND"]
        else:
            os.environ["DEEPSEEK_EXT_BACKEND"] = saved_env


@contextlib.contextmanager
def dispatcher_route() -> Iterator[None]:
    """Every op call validated and sent through torch.library, as before the eager route."""
    _eager.enabled = False
    try:
        yield
    finally:
        _eager.enabled = True


def us_per_call(fn: Callable[[], object], batches: int, calls: int = 100) -> float:
    """Thread CPU microseconds per fn() call: the best of `batches` batches of `calls` calls, after a
    warm-up (short batches: the best one is likelier to have run undisturbed)."""
    for _ in range(calls):
        fn()
    best = float("inf")
    for _ in range(batches):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, time.thread_time() - start)
    return best / calls * 1e6


def _fp8(*shape) -> torch.Tensor:
    return torch.empty(shape, dtype=FP8_DTYPE)


def _token_scales(*leading_and_rows: int, k: int) -> torch.Tensor:
    *leading, rows = leading_and_rows
    return empty_m_major_scales(tuple(leading), rows, ceil_div(k, GROUP), torch.device("cpu"))


def _block_scales(*leading_and_rows: int, k: int) -> torch.Tensor:
    *leading, rows = leading_and_rows
    return torch.empty((*leading, ceil_div(rows, GROUP), ceil_div(k, GROUP)))


class Case(NamedTuple):
    shape: str
    call: Callable[[], object]
    target: bool = True  # the <= TARGET_US target applies (every GEMM and quant op; not the permute glue)


def cases() -> dict[str, Case]:
    """op -> a call of it on inputs made once (allocated, never read)."""
    t, h, i, g = TOKENS, HIDDEN, INTER, EXPERTS
    x = torch.empty(t, h, dtype=torch.bfloat16)
    gate_up = torch.empty(t, 2 * i, dtype=torch.bfloat16)
    a, sa = _fp8(t, h), _token_scales(t, k=h)
    b, sb = _fp8(i, h), _block_scales(i, k=h)
    grouped_a, grouped_sa = _fp8(g * t, h), _token_scales(g * t, k=h)
    grouped_b, grouped_sb = _fp8(g, i, h), _block_scales(g, i, k=h)
    m_indices = torch.arange(g, dtype=torch.int32).repeat_interleave(t)
    masked_a, masked_sa = _fp8(g, t, h), _token_scales(g, t, k=h)
    masked_m = torch.full((g,), t // 2, dtype=torch.int32)
    w = WGRAD_DIM  # Wgrad: dY^T [w, tokens] and X^T [w, tokens], 1x128 scales along the tokens
    dy_t, dy_st, x_t, x_st = _fp8(w, g * t), _token_scales(w, k=g * t), _fp8(w, g * t), _token_scales(w, k=g * t)
    topk_idx = torch.arange(t * TOPK).remainder(g).view(t, TOPK)
    inverse_map = torch.arange(t * TOPK, dtype=torch.int32).view(t, TOPK)
    y, weights = torch.empty(t * TOPK, h, dtype=torch.bfloat16), torch.empty(t, TOPK)
    gemm, quant = dx.gemm, dx.quant
    return {
        "fp8_gemm_nt": Case(f"{t}x{i}x{h}", lambda: gemm.fp8_gemm_nt(a, sa, b, sb)),
        "m_grouped_fp8_gemm_nt_contiguous": Case(f"{g}x{t}x{i}x{h}", lambda: gemm.m_grouped_fp8_gemm_nt_contiguous(
            grouped_a, grouped_sa, grouped_b, grouped_sb, m_indices)),
        "m_grouped_fp8_gemm_nt_masked": Case(f"{g}x{t}x{i}x{h}", lambda: gemm.m_grouped_fp8_gemm_nt_masked(
            masked_a, masked_sa, grouped_b, grouped_sb, masked_m, t // 2)),
        "k_grouped_fp8_gemm_tn_contiguous": Case(f"{g}x{w}x{w}x{t}", lambda: gemm.k_grouped_fp8_gemm_tn_contiguous(
            dy_t, dy_st, x_t, x_st, [t] * g)),
        "per_token_cast_to_fp8": Case(f"{t}x{h}", lambda: quant.per_token_cast_to_fp8(x)),
        "per_block_cast_to_fp8": Case(f"{t}x{h}", lambda: quant.per_block_cast_to_fp8(x)),
        "per_token_cast_to_fp8_with_transpose": Case(f"{t}x{h}", lambda: quant.per_token_cast_to_fp8_with_transpose(x)),
        "swiglu_cast_to_fp8": Case(f"{t}x(2*{i})", lambda: quant.swiglu_cast_to_fp8(gate_up)),
        "transpose_block_fp8": Case(f"{i}x{h}", lambda: quant.transpose_block_fp8(b, sb)),
        "dequantize": Case(f"{t}x{h}", lambda: quant.dequantize(a, sa)),
        "permute_to_grouped": Case(f"{t}x{h} top-{TOPK}", lambda: gemm.permute_to_grouped(a, sa, topk_idx, g),
                                   target=False),
        "unpermute_from_grouped": Case(f"{t}x{h} top-{TOPK}", lambda: gemm.unpermute_from_grouped(
            y, inverse_map, weights), target=False),
    }


ROUNDS = 10  # every op is timed once per round, so that a slow spell of the machine spoils one round of it


def keep_freed_memory() -> None:
    """CPU tensors stand in for GPU tensors here, and CUDA's caching allocator keeps the blocks it
    frees. glibc by default hands big freed blocks back to the kernel (trimming the heap top,
    unmapping mmapped blocks), so a CPU allocation of these sizes may cost system calls and page
    faults or not, depending on what the process allocated before (two 0.9 MB tensors alive
    together measured 20 us a pair in a fresh process, 1.7 us after a 16 MB one had been freed).
    Fixed thresholds make every op's figure independent of the others' (glibc only; else a no-op)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest


def run(quick: bool) -> list[dict]:
    """bench/run.py's suite: report rows for both routes of every op; `value` is calls per
    microsecond. Each figure is the best of ROUNDS rounds over all ops, each round the best of its
    batches."""
    batches = (20 if quick else 400) // ROUNDS
    keep_freed_memory()
    best: dict[tuple[str, str], float] = {}
    with stubbed_launches():
        all_cases = cases()
        for _ in range(ROUNDS):
            for op, case in all_cases.items():
                timings = {report.OURS: us_per_call(case.call, batches)}
                with dispatcher_route():
                    timings[DISPATCHER] = us_per_call(case.call, batches)
                for impl, us in timings.items():
                    best[op, impl] = min(us, best.get((op, impl), float("inf")))
    return [report.make_row(SUITE, op, all_cases[op].shape, impl, us / 1e3, 1 / us, "calls/us")
            for (op, impl), us in best.items()]


def format_table(rows: list[dict], yardstick_us: float) -> str:
    by_case = {}
    for r in rows:
        by_case.setdefault((r["op"], r["shape"]), {})[r["impl"]] = r["ms"] * 1e3
    all_cases = cases()
    lines = [f"Host time per eager call, kernel launch stubbed: thread CPU us (torch.empty 128x1024 here: "
             f"{yardstick_us:.2f} us). The <= {TARGET_US:g} us target is every GEMM and quant op's; the permute "
             f"glue is shown beside them.",
             f"| op | shape | eager route | torch.library route | speedup | <= {TARGET_US:g} us |",
             "|---|---|---|---|---|---|"]
    for (op, shape), us in by_case.items():
        eager, dispatched = us[report.OURS], us[DISPATCHER]
        verdict = ("yes" if eager <= TARGET_US else "NO") if all_cases[op].target else "(glue)"
        lines.append(f"| {op} | {shape} | {eager:.2f} | {dispatched:.2f} | {dispatched / eager:.1f}x | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls per batch")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if _backend._emu is None and _backend._C is None:
        print("host_overhead: neither deepseek_ext._emu nor deepseek_ext._C was built: no kernel path to time")
        return 0
    rows = run(args.quick)
    yardstick = us_per_call(lambda: torch.empty((128, 1024)), 20 if args.quick else 200)
    print(format_table(rows, yardstick))
    if args.json:
        args.json.write_text(json.dumps({"yardstick_us": yardstick, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
