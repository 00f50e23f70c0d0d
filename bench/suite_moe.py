"""One DeepSeekMoE layer (hidden 7168, 32 routed experts of 2048 + 1 shared, top-8, 8192 tokens),
forward and forward+backward: the FP8 path (grouped FP8 GEMMs, 1x128/128x128 scales) against the
bf16 path (torch._grouped_mm experts) in the same run. TFLOPS counts the expert and shared-expert
matmuls (2 flops per multiply-add; backward twice the forward)."""
from __future__ import annotations

import math

import torch

import deepseek_ext as dx
from report import OURS, make_row
from timing import time_ms

HIDDEN, INTER, EXPERTS, TOPK, TOKENS = 7168, 2048, 32, 8, 8192
BF16 = "bf16 (torch._grouped_mm experts)"


def _layer(fp8: bool) -> dx.nn.DeepSeekMoE:
    torch.manual_seed(0)
    return dx.nn.DeepSeekMoE(HIDDEN, INTER, EXPERTS, TOPK, n_shared=1, n_groups=8, topk_groups=4, fp8=fp8,
                             device="cuda")


def _forward_flops(tokens: int) -> float:
    return 2 * tokens * (TOPK + 1) * 3 * HIDDEN * INTER


def _cases(layer: dx.nn.DeepSeekMoE, x: torch.Tensor, grad: torch.Tensor) -> dict:
    def forward():
        with torch.no_grad():
            layer(x)

    def forward_backward():
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return {"forward": (forward, _forward_flops(TOKENS)), "forward+backward": (forward_backward,
                                                                               3 * _forward_flops(TOKENS))}


def run(quick: bool) -> list[dict]:
    reps = 3 if quick else 10
    shape = f"T{TOKENS} H{HIDDEN} E{EXPERTS}x{INTER} top{TOPK}"
    x = torch.randn(TOKENS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(x)
    rows = []
    for impl, fp8 in ((OURS, True), (BF16, False)):
        layer = _layer(fp8)
        for op, (fn, flops) in _cases(layer, x, grad).items():
            try:
                ms = time_ms(fn, warmup=2, reps=reps)
            except (RuntimeError, TypeError, ValueError) as err:  # e.g. no torch._grouped_mm for this GPU
                print(f"bench moe: {impl} {op} n/a: {str(err).splitlines()[0]}")
                rows.append(make_row("moe", op, shape, impl + " n/a", math.nan, math.nan, "TFLOPS"))
                continue
            rows.append(make_row("moe", op, shape, impl, ms, flops / ms / 1e9, "TFLOPS"))
        del layer
        torch.cuda.empty_cache()
    return rows
