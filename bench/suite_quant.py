"""Quantization kernels vs eager torch and torch.compile of the same reference (TB/s = bytes
read + bytes written, per call)."""
from __future__ import annotations

import torch

import deepseek_ext as dx
from deepseek_ext.reference import quant as ref
from report import OURS, make_row
from timing import time_ms

SHAPES = ((4096, 7168), (16384, 7168))


def _bytes_per_token_cast(m: int, k: int, in_bytes: int) -> int:
    return m * k * in_bytes + m * k + m * ref.ceil_div(k, ref.GROUP) * 4


def run(quick: bool) -> list[dict]:
    rows = []
    reps = 10 if quick else 50
    compiled = torch.compile(ref.per_token_cast_to_fp8)
    for m, k in SHAPES[:1] if quick else SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        nbytes = _bytes_per_token_cast(m, k, x.element_size())
        impls = {OURS: lambda: dx.quant.per_token_cast_to_fp8(x),
                 "torch.compile(reference)": lambda: compiled(x),
                 "eager torch (reference)": lambda: ref.per_token_cast_to_fp8(x)}
        for impl, fn in impls.items():
            ms = time_ms(fn, reps=reps)
            rows.append(make_row("quant", "per_token_cast_to_fp8", f"{m}x{k} bf16", impl, ms,
                                 nbytes / ms / 1e9, "TB/s"))
    return rows
