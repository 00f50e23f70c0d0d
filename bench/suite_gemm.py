"""FP8 GEMM (D = A @ B^T, 1x128 A scales, 128x128 B scales, bf16 out) vs cuBLAS in the same run:
bf16 torch.mm, per-tensor FP8 torch._scaled_mm, and blockwise torch._scaled_mm where this torch
has it. TFLOPS = 2*M*N*K / time. Large M: CUDA events per call; small M: CUDA-graph replay
(launch overhead would otherwise hide the kernel)."""
from __future__ import annotations

import math
import time

import torch

import deepseek_ext as dx
from deepseek_ext.ops import _gemm_kernels
from deepseek_ext.reference.quant import per_block_cast_to_fp8
from report import OURS, make_row
from timing import graph_time_ms, time_ms

LARGE_M = ((4096, 2112, 7168), (4096, 24576, 1536), (4096, 32768, 512), (4096, 7168, 16384),
           (4096, 4096, 7168), (4096, 7168, 2048), (8192, 8192, 8192))
SMALL_M = ((128, 4096, 7168), (128, 7168, 2048), (128, 2112, 7168), (64, 7168, 16384))


def config_label(config: _gemm_kernels.GemmConfig) -> str:
    """The kernel variant a row ran: BLOCK_M x BLOCK_N, and the operand a 2-CTA cluster multicasts."""
    return f"{config.block_m}x{config.block_n}" + ("" if config.multicast == "none" else f" multicast {config.multicast}")


def _impls(m: int, n: int, k: int) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    a, sa = dx.quant.per_token_cast_to_fp8(x)
    b, sb = per_block_cast_to_fp8(w)
    one = torch.ones((), device="cuda")
    a_t, b_t = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    impls = {OURS: lambda: dx.gemm.fp8_gemm_nt(a, sa, b, sb),
             "cuBLAS bf16 (torch.mm)": lambda: torch.mm(x, w.t()),
             "cuBLAS FP8 per-tensor (_scaled_mm)": lambda: torch._scaled_mm(a_t, b_t.t(), one, one,
                                                                            out_dtype=torch.bfloat16)}
    # cuBLAS blockwise: 1x128 scale_a [M, K/128] column-major, 128x128 scale_b given transposed.
    blockwise = lambda: torch._scaled_mm(a, b.t(), sa, sb.t(), out_dtype=torch.bfloat16)  # noqa: E731
    try:
        blockwise()
        torch.cuda.synchronize()
        impls["cuBLAS FP8 blockwise (_scaled_mm)"] = blockwise
    except (RuntimeError, TypeError, ValueError) as err:
        print(f"bench gemm: torch._scaled_mm blockwise n/a at {m}x{n}x{k}: {str(err).splitlines()[0]}")
        impls["cuBLAS FP8 blockwise (_scaled_mm)"] = None
    return impls


def _host_us_per_call(fn, calls: int = 200) -> float:
    """CPU microseconds per call while the GPU queue absorbs the launches (no sync inside)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def _launch_overhead_rows() -> list[dict]:
    """Host cost of one call: the public op (validation + custom-op dispatch + launch) and the
    kernel wrapper alone (pointers + TMA descriptors + launch). Target: < 10 us."""
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(128, 512, device="cuda"))
    b, sb = per_block_cast_to_fp8(torch.randn(256, 512, device="cuda"))
    out = torch.empty(128, 256, dtype=torch.bfloat16, device="cuda")
    calls = {"dx.gemm.fp8_gemm_nt (public op)": lambda: dx.gemm.fp8_gemm_nt(a, sa, b, sb),
             "_gemm_kernels.fp8_gemm_nt (launcher only)": lambda: _gemm_kernels.fp8_gemm_nt(a, sa, b, sb, out, None)}
    return [make_row("gemm", "host overhead", "128x256x512", impl, us / 1e3, us, "us/call")
            for impl, us in ((impl, _host_us_per_call(fn)) for impl, fn in calls.items())]


def run(quick: bool) -> list[dict]:
    rows = []
    reps = 10 if quick else 50
    cases = [(shape, False) for shape in (LARGE_M[:2] if quick else LARGE_M)]
    cases += [(shape, True) for shape in (SMALL_M[:1] if quick else SMALL_M)]
    for (m, n, k), use_graph in cases:
        flops = 2 * m * n * k
        config = _gemm_kernels.chosen_config("dense", m, n, k, 1, torch.bfloat16, False, dx.get_num_sms(),
                                             torch.device("cuda"))
        label = f"{m}x{n}x{k}" + (" graph" if use_graph else "") + f" [{config_label(config)}]"
        for impl, fn in _impls(m, n, k).items():
            if fn is None:
                rows.append(make_row("gemm", "fp8_gemm_nt", label, impl + " n/a", math.nan, math.nan, "TFLOPS"))
                continue
            ms = graph_time_ms(fn, reps=reps) if use_graph else time_ms(fn, reps=reps)
            rows.append(make_row("gemm", "fp8_gemm_nt", label, impl, ms, flops / ms / 1e9, "TFLOPS"))
    return rows + _launch_overhead_rows()
