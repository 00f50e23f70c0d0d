"""Quantization kernels vs eager torch and torch.compile of the same reference, beside a
device-to-device copy of the same number of bytes (the bandwidth ceiling).
TB/s = (bytes read + bytes written) per call / time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

import deepseek_ext as dx
from deepseek_ext.reference import quant as ref
from report import OURS, make_row
from timing import time_ms

SUITE = "quant"
COMPILED = "torch.compile(reference)"
EAGER = "eager torch (reference)"
COPY = "copy (ceiling)"
SCALE_BYTES = 4


@dataclass
class Case:
    op: str
    shape: str
    nbytes: int  # bytes read + bytes written by one call
    ours: Callable[[], object]
    reference: Callable  # the reference function, called as reference(*args)
    args: tuple


def _groups(n: int) -> int:
    return ref.ceil_div(n, ref.GROUP)


def _bf16(*shape) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)


def _per_token(m: int, k: int) -> Case:
    x = _bf16(m, k)
    return Case("per_token_cast_to_fp8", f"{m}x{k} bf16", 2 * m * k + m * k + m * _groups(k) * SCALE_BYTES,
                lambda: dx.quant.per_token_cast_to_fp8(x), ref.per_token_cast_to_fp8, (x,))


def _per_block(n: int, k: int) -> Case:
    w = _bf16(n, k)
    return Case("per_block_cast_to_fp8", f"{n}x{k} bf16", 2 * n * k + n * k + _groups(n) * _groups(k) * SCALE_BYTES,
                lambda: dx.quant.per_block_cast_to_fp8(w), ref.per_block_cast_to_fp8, (w,))


def _with_transpose(m: int, k: int) -> Case:
    x = _bf16(m, k)
    scales = (m * _groups(k) + k * _groups(m)) * SCALE_BYTES
    return Case("per_token_cast_to_fp8_with_transpose", f"{m}x{k} bf16", 2 * m * k + 2 * m * k + scales,
                lambda: dx.quant.per_token_cast_to_fp8_with_transpose(x),
                ref.per_token_cast_to_fp8_with_transpose, (x,))


def _swiglu(m: int, inter: int) -> Case:
    gate_up = _bf16(m, 2 * inter)
    return Case("swiglu_cast_to_fp8", f"{m}x(2*{inter}) bf16",
                2 * m * 2 * inter + m * inter + m * _groups(inter) * SCALE_BYTES,
                lambda: dx.quant.swiglu_cast_to_fp8(gate_up), ref.swiglu_cast_to_fp8, (gate_up,))


def _transpose_block(n: int, k: int) -> Case:
    q, s = ref.per_block_cast_to_fp8(_bf16(n, k))
    return Case("transpose_block_fp8", f"{n}x{k} e4m3", 2 * n * k + 2 * s.numel() * SCALE_BYTES,
                lambda: dx.quant.transpose_block_fp8(q, s), ref.transpose_block_fp8, (q, s))


def _dequantize(m: int, k: int) -> Case:
    q, s = ref.per_token_cast_to_fp8(_bf16(m, k))
    return Case("dequantize", f"{m}x{k} e4m3->bf16 (1x128)", m * k + s.numel() * SCALE_BYTES + 2 * m * k,
                lambda: dx.quant.dequantize(q, s, out_dtype=torch.bfloat16),
                lambda q, s: ref.dequantize(q, s, (1, ref.GROUP), torch.bfloat16), (q, s))


def _cases(quick: bool) -> list[Callable[[], Case]]:
    token_shapes = ((4096, 7168),) if quick else ((4096, 7168), (16384, 7168))
    cases = [lambda m=m, k=k: _per_token(m, k) for m, k in token_shapes]
    cases += [lambda m=m, k=k: _per_block(m, k) for m, k in token_shapes]
    cases += [lambda: _with_transpose(16384, 7168), lambda: _swiglu(16384, 2048),
              lambda: _transpose_block(7168, 7168), lambda: _dequantize(16384, 7168)]
    return cases


def _copy_of(nbytes: int) -> Callable[[], object]:
    """A device-to-device copy reading nbytes/2 and writing nbytes/2."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def run(quick: bool) -> list[dict]:
    rows = []
    reps = 10 if quick else 50
    compiled = {}
    for make_case in _cases(quick):
        case = make_case()
        if case.op not in compiled:
            compiled[case.op] = torch.compile(case.reference)
        impls = {OURS: case.ours,
                 COMPILED: lambda c=case: compiled[c.op](*c.args),
                 EAGER: lambda c=case: c.reference(*c.args),
                 COPY: _copy_of(case.nbytes)}
        for impl, fn in impls.items():
            ms = time_ms(fn, reps=reps)
            rows.append(make_row(SUITE, case.op, case.shape, impl, ms, case.nbytes / ms / 1e9, "TB/s"))
        del case, impls
        torch.cuda.empty_cache()
    return rows
