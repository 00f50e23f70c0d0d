"""Reference FP8 quantization (DESIGN.md, numerics contract): clarity over speed.

Scales are fp32 multipliers (x ~= q * s). A group is 128 elements along the quantized dim;
a partial last group is zero-padded for its amax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GROUP = 128
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_FLOOR = 1e-4
SCALE_ROW_ALIGN = 4  # M-major scale storage pads M to a multiple of 4 (16-byte TMA rows)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def true_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b correctly rounded. b is always a tensor of a's dtype: torch may turn division by a
    Python scalar into multiplication by its reciprocal, which rounds differently."""
    return a / b.to(a.dtype)


def round_up_pow2(s: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= s (exact, via frexp); NaN and Inf unchanged."""
    mantissa, exponent = torch.frexp(s)
    pow2 = torch.where(mantissa == 0.5, s, torch.ldexp(torch.ones_like(s), exponent))
    return torch.where(torch.isfinite(s), pow2, s)


def scale_from_amax(amax: torch.Tensor, pow2_scale: bool) -> torch.Tensor:
    amax = amax.float()
    clamped = torch.where(amax < AMAX_FLOOR, torch.full_like(amax, AMAX_FLOOR), amax)
    s = true_div(clamped, torch.full_like(clamped, FP8_MAX))
    return round_up_pow2(s) if pow2_scale else s


def cast_with_scale(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """q = e4m3(clamp(x / s, -448, 448)), round to nearest even; s broadcasts against x."""
    return true_div(x.float(), s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _grouped_last_dim(x: torch.Tensor) -> torch.Tensor:
    """[..., K] -> [..., ceil(K/128), 128] in fp32, zero-padded."""
    k = x.shape[-1]
    padded = F.pad(x.float(), (0, ceil_div(k, GROUP) * GROUP - k))
    return padded.unflatten(-1, (-1, GROUP))


def m_major_scales_layout(leading: tuple[int, ...], m: int, groups: int) -> tuple[tuple, tuple]:
    """(shape, strides) of fp32 scales of logical shape [*leading, m, groups] stored M-major
    (stride(-2) == 1) with m padded to a multiple of 4 in storage: what the GEMM's TMA reads. The
    storage ends at the last column's row m (nothing reads the padding rows)."""
    # The strides torch.empty gives [*leading, groups, padded_m] (a size-0 dim counts as 1), last two swapped.
    column = _at_least_one(ceil_div(m, SCALE_ROW_ALIGN) * SCALE_ROW_ALIGN)
    strides, batch = [1, column], column * _at_least_one(groups)
    for size in reversed(leading):
        strides.insert(0, batch)
        batch *= _at_least_one(size)
    return (*leading, m, groups), tuple(strides)


def contiguous_strides(shape: tuple) -> tuple:
    """The strides torch.empty(shape) has (a size-0 dim counts as 1)."""
    strides, step = [1] * len(shape), 1
    for i in range(len(shape) - 1, 0, -1):
        step *= _at_least_one(shape[i])
        strides[i - 1] = step
    return tuple(strides)


def empty_m_major_scales(leading: tuple[int, ...], m: int, groups: int,
                         device: torch.device) -> torch.Tensor:
    """Uninitialized scales of m_major_scales_layout: one allocation call and no views."""
    shape, strides = m_major_scales_layout(leading, m, groups)
    return torch.empty_strided(shape, strides, dtype=torch.float32, device=device)


def _at_least_one(size):
    """max(size, 1), without guarding a symbolic size under torch.compile."""
    return (size or 1) if type(size) is int else torch.sym_max(size, 1)


def to_m_major(s: torch.Tensor) -> torch.Tensor:
    """Copy scales [..., M, G] into the M-major storage layout (1-D scales stay as they are)."""
    if s.dim() < 2:
        return s.contiguous()
    out = empty_m_major_scales(tuple(s.shape[:-2]), s.shape[-2], s.shape[-1], s.device)
    out.copy_(s)
    return out


def per_token_cast_to_fp8(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> q [..., K] e4m3, s [..., ceil(K/128)] M-major: one scale per 1x128 group."""
    groups = _grouped_last_dim(x)
    s = scale_from_amax(groups.abs().amax(dim=-1), pow2_scale)
    q = cast_with_scale(groups, s.unsqueeze(-1)).flatten(-2)[..., : x.shape[-1]]
    return q.contiguous(), to_m_major(s)


def per_block_cast_to_fp8(w: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] -> q [..., N, K] e4m3, s [..., ceil(N/128), ceil(K/128)]: 128x128 blocks."""
    n, k = w.shape[-2:]
    nb, kb = ceil_div(n, GROUP), ceil_div(k, GROUP)
    padded = F.pad(w.float(), (0, kb * GROUP - k, 0, nb * GROUP - n))
    blocks = padded.unflatten(-1, (kb, GROUP)).unflatten(-3, (nb, GROUP))  # [..., nb, 128, kb, 128]
    s = scale_from_amax(blocks.abs().amax(dim=(-3, -1)), pow2_scale)  # [..., nb, kb]
    q = cast_with_scale(blocks, s[..., :, None, :, None]).flatten(-2).flatten(-3, -2)
    return q[..., :n, :k].contiguous(), s.contiguous()


def per_token_cast_to_fp8_with_transpose(
        x: torch.Tensor, pow2_scale: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q, s) = 1x128 along K, and (qt [K, M], st [K, ceil(M/128)] M-major) =
    x^T quantized 1x128 along M (the Wgrad operand). Both come from the same x."""
    q, s = per_token_cast_to_fp8(x, pow2_scale)
    qt, st = per_token_cast_to_fp8(x.transpose(-1, -2), pow2_scale)
    return q, s, qt, st


def transpose_block_fp8(q: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact transpose of a 128x128-scaled matrix: (q [..., N, K], s [..., Nb, Kb]) ->
    (q^T [..., K, N], s^T [..., Kb, Nb]). No re-quantization."""
    # clone, not .contiguous(): a transpose of a size-1 dim is already contiguous and would alias
    return (q.transpose(-1, -2).clone(memory_format=torch.contiguous_format),
            s.transpose(-1, -2).clone(memory_format=torch.contiguous_format))


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(g) * u in fp32 for gate_up = cat([g, u], -1)."""
    g, u = gate_up.float().chunk(2, dim=-1)
    return F.silu(g) * u


def swiglu_cast_to_fp8(gate_up: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up [..., 2I] -> 1x128 FP8 cast of silu(g) * u, computed in fp32 (no bf16 round trip)."""
    return per_token_cast_to_fp8(swiglu(gate_up), pow2_scale)


def dequantize(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int],
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q * s with s broadcast over blocks of shape `block` ((1, 128) or (128, 128)) of q's last
    two dims; a 1-D q uses (1, 128)-style groups along its only dim."""
    rows, cols = block
    expanded = s.float().repeat_interleave(cols, dim=-1)[..., : q.shape[-1]]
    if q.dim() >= 2:
        expanded = expanded.repeat_interleave(rows, dim=-2)[..., : q.shape[-2], :]
    return (q.float() * expanded).to(out_dtype)
