"""Grouped FP8 GEMMs for MoE and their permute/unpermute glue, beside baselines in the same run.

- m-grouped contiguous vs bf16 torch._grouped_mm (skipped where this torch lacks it); TFLOPS =
  2 * sum(M_g) * N * K / time (real rows only; these shapes have no padding).
- masked (32 groups of ~128 rows, CUDA-graph replay) vs the contiguous kernel on the same rows
  (each group padded to 128), TFLOPS over the real rows.
- permute_to_grouped / unpermute_from_grouped TB/s vs torch index_select / index_add_ given the
  same (precomputed) row indices. Bytes = rows read + rows written (+ scales).
"""
from __future__ import annotations

import math

import torch

import deepseek_ext as dx
from deepseek_ext.reference.quant import empty_m_major_scales, per_block_cast_to_fp8, to_m_major
from deepseek_ext.ops import _gemm_kernels
from report import OURS, make_row
from suite_gemm import config_label
from timing import graph_time_ms, time_ms

CONTIGUOUS = ((4, 8192, 4096, 7168), (4, 8192, 7168, 2048), (8, 4096, 4096, 7168), (8, 4096, 7168, 2048))
MASKED = ((32, 128, 4096, 7168), (32, 128, 7168, 2048))  # groups, mean rows, N, K
PERMUTE = ((8192, 32, 8, 7168),)  # tokens, experts, topk, hidden


def _grouped_mm_baseline(x: torch.Tensor, w: torch.Tensor, ends: torch.Tensor):
    """bf16 torch._grouped_mm over the same groups, or None (printed) where unavailable."""
    fn = lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=ends, out_dtype=torch.bfloat16)  # noqa: E731
    try:
        fn()
        torch.cuda.synchronize()
        return fn
    except (AttributeError, RuntimeError, TypeError) as err:
        print(f"bench grouped: torch._grouped_mm n/a: {str(err).splitlines()[0]}")
        return None


def _contiguous_rows(quick: bool) -> list[dict]:
    rows = []
    for groups, m, n, k in CONTIGUOUS[:1] if quick else CONTIGUOUS:
        x = torch.randn(groups * m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(groups, n, k, device="cuda", dtype=torch.bfloat16)
        a, sa = dx.quant.per_token_cast_to_fp8(x)
        b, sb = per_block_cast_to_fp8(w)
        m_indices = torch.arange(groups, device="cuda", dtype=torch.int32).repeat_interleave(m)
        ends = torch.arange(1, groups + 1, device="cuda", dtype=torch.int32) * m
        impls = {OURS: lambda: dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices),
                 "bf16 torch._grouped_mm": _grouped_mm_baseline(x, w, ends)}
        flops = 2 * groups * m * n * k
        config = _gemm_kernels.chosen_config("m_contiguous", groups * m, n, k, 1, torch.bfloat16, False,
                                             dx.get_num_sms(), torch.device("cuda"))
        for impl, fn in impls.items():
            label = f"{groups}x{m}, {n}x{k} [{config_label(config)}]"
            if fn is None:
                rows.append(make_row("grouped", "m_grouped_contiguous", label, impl + " n/a", math.nan, math.nan,
                                     "TFLOPS"))
                continue
            ms = time_ms(fn, reps=10 if quick else 30)
            rows.append(make_row("grouped", "m_grouped_contiguous", label, impl, ms, flops / ms / 1e9, "TFLOPS"))
    return rows


def _masked_rows(quick: bool) -> list[dict]:
    rows = []
    for groups, mean_m, n, k in MASKED[:1] if quick else MASKED:
        counts = torch.randint(mean_m - 16, mean_m + 17, (groups,)).tolist()
        m_max = 2 * mean_m
        a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(groups, m_max, k, device="cuda"))
        b, sb = per_block_cast_to_fp8(torch.randn(groups, n, k, device="cuda"))
        masked_m = torch.tensor(counts, dtype=torch.int32, device="cuda")
        # The same rows in the contiguous layout: each group's rows padded to 128.
        padded = [-(-c // 128) * 128 for c in counts]
        m_indices = torch.cat([torch.tensor([g] * c + [-1] * (p - c), dtype=torch.int32)
                               for g, (c, p) in enumerate(zip(counts, padded))]).cuda()
        take = torch.cat([torch.arange(p) + g * m_max for g, p in enumerate(padded)]).cuda()
        a_flat = a.view(torch.uint8).reshape(groups * m_max, k)[take].view(torch.float8_e4m3fn)
        sa_flat = to_m_major(sa.reshape(groups * m_max, -1)[take])
        config = _gemm_kernels.chosen_config("m_masked", mean_m, n, k, groups, torch.bfloat16, False,
                                             dx.get_num_sms(), torch.device("cuda"))
        label = f"{groups}x~{mean_m}, {n}x{k} [masked {config_label(config)}]"
        flops = 2 * sum(counts) * n * k
        impls = {OURS + " masked": lambda: dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, mean_m),
                 OURS: lambda: dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a_flat, sa_flat, b, sb, m_indices)}
        for impl, fn in impls.items():
            ms = graph_time_ms(fn, reps=10 if quick else 50)
            rows.append(make_row("grouped", "masked vs contiguous (graph)", label, impl, ms, flops / ms / 1e9,
                                 "TFLOPS"))
    return rows


def _copy_kernel(data: torch.Tensor, scales: torch.Tensor | None, row_token: torch.Tensor, rows: int):
    """The permute's row-copy kernel alone (layout given), to separate it from the counting
    pass and the host sync of the full op."""
    from deepseek_ext.ops import _launch
    tokens32 = row_token.int()
    out = torch.empty(rows, data.shape[1], dtype=data.dtype, device="cuda")
    out_scales = None if scales is None else empty_m_major_scales((), rows, scales.shape[1], data.device)
    args = (0, 0, 0) if scales is None else (scales.data_ptr(), scales.stride(1), scales.shape[1])
    out_args = (0, 0) if scales is None else (out_scales.data_ptr(), out_scales.stride(1))
    return lambda: _launch.call("permute_rows", data.data_ptr(), data.shape[1] * data.element_size(), *args,
                                tokens32.data_ptr(), rows, out.data_ptr(), *out_args, device=data.device)


def _permute_rows(quick: bool) -> list[dict]:
    rows = []
    for tokens, experts, topk, hidden in PERMUTE:
        tokens = tokens // 4 if quick else tokens
        idx = torch.rand(tokens, experts, device="cuda").argsort(dim=1)[:, :topk]
        weights = torch.rand(tokens, topk, device="cuda")
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
        q, s = dx.quant.per_token_cast_to_fp8(x)
        grouped, scales, m_indices, inverse_map = dx.gemm.permute_to_grouped(q, s, idx, experts)
        row_token = torch.full((grouped.shape[0],), -1, dtype=torch.int64, device="cuda")
        has_slot = inverse_map >= 0
        token_of_slot = torch.arange(tokens, device="cuda")[:, None].expand(-1, topk)
        row_token[inverse_map[has_slot].long()] = token_of_slot[has_slot]
        gather_index = row_token.clamp(min=0)
        real_rows = int(has_slot.sum())
        for name, data, extra in (("permute fp8", q, s), ("permute bf16", x, None)):
            nbytes = (real_rows + grouped.shape[0]) * hidden * data.element_size()
            if extra is not None:
                nbytes += (real_rows + grouped.shape[0]) * extra.shape[1] * 4
            impls = {OURS: lambda: dx.gemm.permute_to_grouped(data, extra, idx, experts),
                     OURS + " copy kernel only": _copy_kernel(data, extra, row_token, grouped.shape[0]),
                     "torch index_select (indices given)": lambda: data.view(torch.uint8).index_select(0, gather_index)
                     if data.dtype == torch.float8_e4m3fn else data.index_select(0, gather_index)}
            for impl, fn in impls.items():
                ms = time_ms(fn, reps=10 if quick else 30)
                rows.append(make_row("grouped", name, f"T={tokens} E={experts} k={topk} H={hidden}", impl, ms,
                                     nbytes / ms / 1e9, "TB/s"))
        y = torch.randn(grouped.shape[0], hidden, device="cuda", dtype=torch.bfloat16)
        valid_rows = (row_token >= 0).nonzero().squeeze(1)
        valid_tokens = row_token[valid_rows]
        row_weight = weights[has_slot][torch.argsort(inverse_map[has_slot])]  # weights in row order

        def index_add():
            out = torch.zeros(tokens, hidden, device="cuda", dtype=torch.float32)
            out.index_add_(0, valid_tokens, y[valid_rows].float() * row_weight[:, None])
            return out.bfloat16()

        nbytes = (real_rows + tokens) * hidden * 2
        impls = {OURS: lambda: dx.gemm.unpermute_from_grouped(y, inverse_map, weights),
                 "torch index_add_ (fp32)": index_add}
        for impl, fn in impls.items():
            ms = time_ms(fn, reps=10 if quick else 30)
            rows.append(make_row("grouped", "unpermute bf16", f"T={tokens} E={experts} k={topk} H={hidden}", impl, ms,
                                 nbytes / ms / 1e9, "TB/s"))
    return rows


def run(quick: bool) -> list[dict]:
    return _contiguous_rows(quick) + _masked_rows(quick) + _permute_rows(quick)
