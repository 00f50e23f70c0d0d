"""Reference FP8 block-scaled GEMMs (DESIGN.md, numerics contract): clarity over speed.

Operands are float8_e4m3fn with fp32 multiplier scales (value = q * s), K-major (D = A @ B^T).
Accumulation is fp32 with promotion per 128-wide K block: each block's partial product of the
raw FP8 values is scaled by sa * sb and added to the fp32 accumulator, as the kernels do when
they move the tensor-core result out every 128 K elements. A partial last block is shorter.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from deepseek_ext.reference.quant import GROUP, ceil_div

M_ALIGNMENT = 128  # each expert's segment of the contiguous grouped GEMM is padded to this


def _block_scaled_mm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """fp32 [M, N] = A @ B^T for a [M, K] with sa [M, Kb] and b [N, K] with sb [N, Kb]:
    one scale per row and 128-wide K block on both sides."""
    acc = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float32, device=a.device)
    for kb in range(ceil_div(a.shape[1], GROUP)):
        cols = slice(kb * GROUP, (kb + 1) * GROUP)
        partial = a[:, cols].float() @ b[:, cols].float().T
        acc += partial * (sa[:, kb, None].float() * sb[None, :, kb].float())
    return acc


def b_scales_per_row(sb: torch.Tensor, n: int) -> torch.Tensor:
    """B's scales as one per (row, K block) [N, Kb]. sb is either per row already ([N, Kb],
    1x128: Wgrad) or per 128x128 block ([ceil(N/128), Kb]: Fprop/Dgrad); the two are told apart
    by sb.shape[0]. They coincide only for N == 1, where both readings give the same scales."""
    if sb.shape[0] == n:
        return sb
    if sb.shape[0] != ceil_div(n, GROUP):
        raise ValueError(f"sb.shape[0] must be N={n} (1x128 scales) or ceil(N/128)={ceil_div(n, GROUP)} "
                         f"(128x128 scales), got {sb.shape[0]}")
    return sb.repeat_interleave(GROUP, dim=0)[:n]


def fp8_gemm_nt(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                out_dtype: torch.dtype = torch.bfloat16, c: torch.Tensor | None = None) -> torch.Tensor:
    """D = c + A @ B^T. a [M, K] e4m3 with sa [M, ceil(K/128)]; b [N, K] e4m3 with sb either
    [ceil(N/128), ceil(K/128)] (128x128) or [N, ceil(K/128)] (1x128); c optional fp32 [M, N]
    added in fp32 before the final cast to out_dtype."""
    acc = _block_scaled_mm(a, sa, b, b_scales_per_row(sb, b.shape[0]))
    if c is not None:
        acc = c.float() + acc
    return acc.to(out_dtype)


def m_grouped_fp8_gemm_nt_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                     m_indices: torch.Tensor,
                                     out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Row i of the output is a[i] @ b[m_indices[i]]^T. a [M_total, K] with sa [M_total, Kb]; b
    [G, N, K] with sb [G, ceil(N/128), Kb] (128x128); m_indices [M_total] int32, -1 on padding rows.
    Padding rows of the output are zero."""
    out = torch.zeros(a.shape[0], b.shape[1], dtype=out_dtype, device=a.device)
    for g in range(b.shape[0]):
        rows = (m_indices == g).nonzero().squeeze(1)
        out[rows] = fp8_gemm_nt(a[rows], sa[rows], b[g], sb[g], out_dtype)
    return out


def m_grouped_fp8_gemm_nt_masked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                 masked_m: torch.Tensor, expected_m: int,
                                 out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """out[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g]^T; the rows beyond masked_m[g] are left
    unwritten (their values are unspecified, as the kernel never stores them). a [G, Mmax, K], sa
    [G, Mmax, Kb], b [G, N, K], sb [G, ceil(N/128), Kb]; expected_m only guides the kernels' tile
    choice and has no effect on the values."""
    del expected_m
    out = torch.empty(a.shape[0], a.shape[1], b.shape[1], dtype=out_dtype, device=a.device)
    for g, m in enumerate(masked_m.tolist()):
        out[g, :m] = fp8_gemm_nt(a[g, :m], sa[g, :m], b[g], sb[g], out_dtype)
    return out


def group_offsets(group_sizes: Sequence[int]) -> list[int]:
    """[0, s0, s0+s1, ...]: where each group starts, and the total last."""
    offsets = [0]
    for size in group_sizes:
        offsets.append(offsets[-1] + int(size))
    return offsets


def k_grouped_fp8_gemm_tn_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                     group_sizes: Sequence[int] | torch.Tensor,
                                     c: torch.Tensor | None = None) -> torch.Tensor:
    """MoE weight gradients, groups along the contraction dim T: out[g] = c[g] + a[:, seg_g] @
    b[:, seg_g]^T in fp32 [G, N, K]. a [N, T] with sa [N, T/128] and b [K, T] with sb [K, T/128]
    are the transposed outputs of per_token_cast_to_fp8_with_transpose of dY [T, N] and X [T, K];
    every group size is a multiple of 128 (so groups start on scale-block boundaries) and they
    sum to T. An empty group gives zeros (or c[g])."""
    if isinstance(group_sizes, torch.Tensor):
        group_sizes = group_sizes.tolist()
    offsets = group_offsets(group_sizes)
    out = torch.zeros(len(group_sizes), a.shape[0], b.shape[0], dtype=torch.float32, device=a.device)
    for g in range(len(group_sizes)):
        tokens = slice(offsets[g], offsets[g + 1])
        blocks = slice(offsets[g] // GROUP, offsets[g + 1] // GROUP)
        out[g] = _block_scaled_mm(a[:, tokens], sa[:, blocks], b[:, tokens], sb[:, blocks])
    return out if c is None else c.float() + out
