"""DeepGEMM's FP8 API over dx.gemm / dx.quant: ``from deepseek_ext.compat import deep_gemm`` in
place of ``import deep_gemm``.

Follows github.com/deepseek-ai/DeepGEMM at commit 0f5f266 (2026-01-16, package version 2.3.0), the
SM90 (Hopper) FP8 subset:

- ``fp8_gemm_nt((a, sfa), (b, sfb), d, c=None, recipe=None, recipe_a=None, recipe_b=None,
  compiled_dims="nk", disable_ue8m0_cast=False)``: d = c + a @ b^T written into the preallocated d;
- ``m_grouped_fp8_gemm_nt_contiguous(a, b, d, grouped_layout, ...)``,
  ``m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m, ...)`` and
  ``k_grouped_fp8_gemm_tn_contiguous(a, b, d, ks, ks_tensor, c=None, recipe=(1, 1, 128), ...)``;
- ``set_num_sms``/``get_num_sms``, ``transform_sf_into_required_layout``, ``get_tma_aligned_size``,
  ``get_mn_major_tma_aligned_tensor``, ``get_mk_alignment_for_contiguous_layout`` (and its m/k aliases);
- utils ``per_token_cast_to_fp8``, ``per_channel_cast_to_fp8``, ``per_block_cast_to_fp8`` (with
  ``use_ue8m0`` and ``gran_k``) and ``calc_diff``.

Scales: float32, 1x128 for A (recipe (1, 128, 128), the default) and 128x128 or 1x128 for B,
in any layout DeepGEMM accepts: row-major [MN, K/128] as its casts return them, or already
TMA-aligned MN-major. DeepGEMM's TMA-aligned MN-major layout is exactly dx.gemm's M-major one,
so scales already in it (from ``transform_sf_into_required_layout`` or dx.quant) are used as
they are and others are copied into it once per call.

Differences: the results are dx.gemm's (bit for bit: these functions call it); d is filled by a
copy of dx.gemm's output, and the masked GEMM writes zeros beyond masked_m[g] (DeepGEMM leaves
those rows untouched); K (and N) must be multiples of 16. The k-grouped GEMM takes DeepGEMM's
MN-major operands a [sum(ks), M] and b [sum(ks), N] and copies them transposed into the K-major
form our kernel reads (exact), on any architecture (DeepGEMM runs it on SM100 only). ``use_ue8m0``
gives power-of-two float32 scales (dx.quant's ``pow2_scale``); packed UE8M0 scales (int32, the
SM100 format), ``use_packed_ue8m0``, ``gran_k`` other than 128 and ``use_psum_layout`` raise
NotImplementedError. ``compiled_dims`` and ``disable_ue8m0_cast`` (JIT and SM100 knobs) are
accepted and have no effect. ``calc_diff`` returns a 0-d float64 tensor, as DeepGEMM's.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

import deepseek_ext.gemm as gemm
import deepseek_ext.quant as quant
from deepseek_ext._backend import get_num_sms, set_num_sms
from deepseek_ext.ops._checks import check_shape, check_tensor
from deepseek_ext.reference.quant import GROUP, ceil_div, to_m_major

_TMA_ALIGNMENT_BYTES = 16
_DEFAULT_RECIPE = (1, 128, 128)  # SM90: 1x128 A scales, 128x128 B scales
_RECIPES = ((1, 128, 128), (1, 1, 128))

__all__ = ["calc_diff", "fp8_gemm_nt", "get_k_alignment_for_contiguous_layout", "get_m_alignment_for_contiguous_layout",
           "get_mk_alignment_for_contiguous_layout", "get_mn_major_tma_aligned_tensor", "get_num_sms",
           "get_tma_aligned_size", "k_grouped_fp8_gemm_tn_contiguous", "m_grouped_fp8_gemm_nt_contiguous",
           "m_grouped_fp8_gemm_nt_masked", "per_block_cast_to_fp8", "per_channel_cast_to_fp8",
           "per_token_cast_to_fp8", "set_num_sms", "transform_sf_into_required_layout"]


# --- layout getters --------------------------------------------------------------------------

def get_tma_aligned_size(x: int, element_size: int) -> int:
    """x rounded up to a whole 16-byte TMA row of element_size-byte elements."""
    if _TMA_ALIGNMENT_BYTES % element_size:
        raise ValueError(f"element_size must divide {_TMA_ALIGNMENT_BYTES}, got {element_size}")
    return ceil_div(x, _TMA_ALIGNMENT_BYTES // element_size) * (_TMA_ALIGNMENT_BYTES // element_size)


def get_mk_alignment_for_contiguous_layout() -> int:
    """Rows per group segment of the contiguous grouped layouts (dx.gemm.M_ALIGNMENT)."""
    return gemm.M_ALIGNMENT


get_m_alignment_for_contiguous_layout = get_mk_alignment_for_contiguous_layout
get_k_alignment_for_contiguous_layout = get_mk_alignment_for_contiguous_layout


def _is_tma_aligned_mn_major(sf: torch.Tensor) -> bool:
    """sf [..., MN, G] stored column by column, columns get_tma_aligned_size(MN) apart, groups
    back to back: the layout the GEMM's TMA reads (dx.quant's M-major scales)."""
    mn, groups = sf.shape[-2:]
    column = get_tma_aligned_size(mn, sf.element_size())
    return ((mn == 1 or sf.stride(-2) == 1) and sf.stride(-1) == column
            and (sf.dim() == 2 or sf.shape[0] == 1 or sf.stride(0) == column * groups))


def get_mn_major_tma_aligned_tensor(sf: torch.Tensor) -> torch.Tensor:
    """sf [..., MN, K/128] fp32 in the TMA-aligned MN-major layout: sf itself when already so,
    else a copy."""
    check_tensor(sf, "sf", (torch.float32,), min_dim=2)
    return sf if _is_tma_aligned_mn_major(sf) else to_m_major(sf)


# --- scale factors ---------------------------------------------------------------------------

def _check_sf_dtype(sf, name: str) -> None:
    if isinstance(sf, torch.Tensor) and sf.dtype == torch.int32:
        raise NotImplementedError(f"{name}: packed UE8M0 scales (int32, DeepGEMM's SM100 format) are not "
                                  "supported; pass float32 scales (use_ue8m0=True gives power-of-two ones)")
    check_tensor(sf, name, (torch.float32,), min_dim=2)


def _check_gran_k(gran_k: int) -> None:
    if gran_k != GROUP:
        raise NotImplementedError(f"gran_k={gran_k} is not supported: scales cover {GROUP} elements along K")


def _required_layout(sf, name: str, mn: int, k: int, gran_mn: int, num_groups: int | None) -> torch.Tensor:
    """DeepGEMM-layout scales -> dx.gemm's: 1x128 ones TMA-aligned MN-major, 128x128 ones contiguous."""
    _check_sf_dtype(sf, name)
    leading = () if num_groups is None else (num_groups,)
    check_shape(sf, name, (*leading, ceil_div(mn, gran_mn), ceil_div(k, GROUP)))
    return get_mn_major_tma_aligned_tensor(sf) if gran_mn == 1 else sf.contiguous()


def _granularities(recipe, recipe_a, recipe_b) -> tuple[int, int]:
    """(A's, B's) scale rows per scale from DeepGEMM's recipe arguments."""
    if recipe is not None and (recipe_a is not None or recipe_b is not None):
        raise ValueError("pass either recipe or recipe_a/recipe_b, not both")
    if (recipe_a is None) != (recipe_b is None):
        raise ValueError("recipe_a and recipe_b go together")
    if recipe_a is not None:
        if recipe_a[1] != recipe_b[1]:
            raise NotImplementedError(f"recipe_a {tuple(recipe_a)} and recipe_b {tuple(recipe_b)} must share gran_k")
        recipe = (recipe_a[0], recipe_b[0], recipe_a[1])
    recipe = _DEFAULT_RECIPE if recipe is None else tuple(recipe)
    _check_gran_k(recipe[-1])
    if recipe not in _RECIPES:
        raise ValueError(f"recipe must be one of {_RECIPES}, got {recipe}")
    return recipe[0], recipe[1]


def _grouped_granularities(recipe, recipe_a, recipe_b) -> tuple[int, int]:
    gran_a, gran_b = _granularities(recipe, recipe_a, recipe_b)
    if gran_b != GROUP:
        raise NotImplementedError(f"the grouped GEMMs take 128x128 scales for b (recipe {_DEFAULT_RECIPE}), "
                                  f"got {gran_b}x{GROUP}")
    return gran_a, gran_b


def transform_sf_into_required_layout(sf: torch.Tensor, mn: int, k: int, recipe=None, recipe_ab=None,
                                      num_groups: int | None = None, is_sfa: bool = False,
                                      disable_ue8m0_cast: bool = False) -> torch.Tensor:
    """Scales of an [MN, K] operand (or [num_groups, MN, K]) in the layout the GEMMs read. Call it
    once and pass the result to the GEMMs to skip the per-call transform."""
    del disable_ue8m0_cast  # SM100 only
    if (recipe is None) == (recipe_ab is None):
        raise ValueError("pass exactly one of recipe (gran_a_mn, gran_b_mn, gran_k) and recipe_ab (gran_mn, gran_k)")
    if recipe is not None:
        gran_mn, gran_k = (recipe[0] if is_sfa else recipe[1]), recipe[2]
    else:
        gran_mn, gran_k = recipe_ab
    _check_gran_k(gran_k)
    if gran_mn not in (1, GROUP):
        raise ValueError(f"the scales' MN granularity must be 1 or {GROUP}, got {gran_mn}")
    return _required_layout(sf, "sf", mn, k, gran_mn, num_groups)


# --- GEMMs -----------------------------------------------------------------------------------

def _pair(operand, name: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(operand, (tuple, list)) or len(operand) != 2:
        raise TypeError(f"{name} must be a (tensor, scales) pair, got {type(operand).__name__}")
    check_tensor(operand[0], f"{name}[0]", (torch.float8_e4m3fn,), dim=dim)
    return operand[0], operand[1]


def _check_out(d, expected: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    check_tensor(d, "d", dtypes, dim=len(expected))
    check_shape(d, "d", expected)


def fp8_gemm_nt(a, b, d: torch.Tensor, c: torch.Tensor | None = None, recipe=None, recipe_a=None, recipe_b=None,
                compiled_dims: str = "nk", disable_ue8m0_cast: bool = False) -> None:
    """d = c + a @ b^T: a = (a [M, K] e4m3, sfa [M, K/128]), b = (b [N, K] e4m3, sfb [N/128, K/128],
    or [N, K/128] with recipe (1, 1, 128)); d [M, N] bf16 or fp32 (fp32 when c is given)."""
    del compiled_dims, disable_ue8m0_cast
    (a, sfa), (b, sfb) = _pair(a, "a", 2), _pair(b, "b", 2)
    gran_a, gran_b = _granularities(recipe, recipe_a, recipe_b)
    (m, k), n = a.shape, b.shape[0]
    _check_out(d, (m, n), (torch.bfloat16, torch.float32))
    if c is not None and d.dtype != torch.float32:
        raise TypeError(f"d must be float32 when c is given (accumulation), got {d.dtype}")
    sfa = _required_layout(sfa, "a[1]", m, k, gran_a, None)
    sfb = _required_layout(sfb, "b[1]", n, k, gran_b, None)
    d.copy_(gemm.fp8_gemm_nt(a, sfa, b, sfb, out_dtype=d.dtype, c=c))


def m_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, grouped_layout: torch.Tensor, recipe=None,
                                     recipe_a=None, recipe_b=None, compiled_dims: str = "nk",
                                     disable_ue8m0_cast: bool = False, use_psum_layout: bool = False,
                                     expected_m_for_psum_layout: int | None = None) -> None:
    """d[i] = a[i] @ b[grouped_layout[i]]^T: a = (a [M, K], sfa [M, K/128]) with each group's rows
    padded to get_mk_alignment_for_contiguous_layout(), b = (b [G, N, K], sfb [G, N/128, K/128]);
    grouped_layout [M] int32, -1 on padding rows; d [M, N] bf16."""
    del compiled_dims, disable_ue8m0_cast
    if use_psum_layout or expected_m_for_psum_layout is not None:
        raise NotImplementedError("use_psum_layout (DeepGEMM's SM100 prefix-sum layout) is not supported")
    (a, sfa), (b, sfb) = _pair(a, "a", 2), _pair(b, "b", 3)
    gran_a, gran_b = _grouped_granularities(recipe, recipe_a, recipe_b)
    m, k = a.shape
    groups, n = b.shape[0], b.shape[-2]
    _check_out(d, (m, n), (torch.bfloat16,))
    sfa = _required_layout(sfa, "a[1]", m, k, gran_a, None)
    sfb = _required_layout(sfb, "b[1]", n, k, gran_b, groups)
    d.copy_(gemm.m_grouped_fp8_gemm_nt_contiguous(a, sfa, b, sfb, grouped_layout))


def m_grouped_fp8_gemm_nt_masked(a, b, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int, recipe=None,
                                 recipe_a=None, recipe_b=None, compiled_dims: str = "nk",
                                 disable_ue8m0_cast: bool = False) -> None:
    """d[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g]^T: a = (a [G, M, K], sfa [G, M, K/128]),
    b = (b [G, N, K], sfb [G, N/128, K/128]); masked_m [G] int32; d [G, M, N] bf16."""
    del compiled_dims, disable_ue8m0_cast
    (a, sfa), (b, sfb) = _pair(a, "a", 3), _pair(b, "b", 3)
    gran_a, gran_b = _grouped_granularities(recipe, recipe_a, recipe_b)
    groups, m, k = a.shape
    n = b.shape[-2]
    _check_out(d, (groups, m, n), (torch.bfloat16,))
    sfa = _required_layout(sfa, "a[1]", m, k, gran_a, groups)
    sfb = _required_layout(sfb, "b[1]", n, k, gran_b, groups)
    out = gemm.m_grouped_fp8_gemm_nt_masked(a, sfa, b, sfb, masked_m, expected_m)
    # As in DeepGEMM, rows >= masked_m[g] of d keep what they held (no host sync to find them).
    rows = torch.arange(m, device=d.device)[None, :] < masked_m.to(d.device)[:, None]
    d.copy_(torch.where(rows[..., None], out, d))


def k_grouped_fp8_gemm_tn_contiguous(a, b, d: torch.Tensor, ks: Sequence[int], ks_tensor: torch.Tensor,
                                     c: torch.Tensor | None = None, recipe=(1, 1, 128),
                                     compiled_dims: str = "mn") -> None:
    """MoE weight gradients: d[g] = c[g] + a[seg_g]^T @ b[seg_g] with the segments of sizes ks
    (multiples of 128) along K: a = (a [sum(ks), M] e4m3, sfa [sum(ks)/128, M]), b likewise with N
    (per_channel_cast_to_fp8's outputs); ks_tensor [G] int32 (ks on the device); d [G, M, N] fp32."""
    del compiled_dims
    if tuple(recipe) != (1, 1, GROUP):
        raise ValueError(f"recipe must be (1, 1, {GROUP}) (1x128 scales on both operands), got {tuple(recipe)}")
    (a, sfa), (b, sfb) = _pair(a, "a", 2), _pair(b, "b", 2)
    check_tensor(ks_tensor, "ks_tensor", (torch.int32,), dim=1)
    check_shape(ks_tensor, "ks_tensor", (len(ks),))
    (total, m), n = a.shape, b.shape[1]
    if b.shape[0] != total:
        raise ValueError(f"b[0].shape[0] must equal a[0].shape[0]={total} (sum(ks)), got {b.shape[0]}")
    _check_out(d, (len(ks), m, n), (torch.float32,))
    # our kernel reads K-major operands [MN, sum(ks)] with 1x128 scales [MN, sum(ks)/128] M-major
    d.copy_(gemm.k_grouped_fp8_gemm_tn_contiguous(a.T.contiguous(), _transposed_channel_scales(sfa, "a[1]", total, m),
                                                  b.T.contiguous(), _transposed_channel_scales(sfb, "b[1]", total, n),
                                                  list(ks), c))


def _transposed_channel_scales(sf, name: str, k: int, mn: int) -> torch.Tensor:
    """128x1 scales [K/128, MN] of an MN-major operand -> [MN, K/128] in the GEMM's layout."""
    _check_sf_dtype(sf, name)
    check_shape(sf, name, (ceil_div(k, GROUP), mn))
    return get_mn_major_tma_aligned_tensor(sf.T)


# --- utils -----------------------------------------------------------------------------------

def _check_cast_options(use_ue8m0, gran_k: int) -> None:
    if not isinstance(use_ue8m0, bool):
        raise TypeError(f"use_ue8m0 must be a bool, got {type(use_ue8m0).__name__}")
    _check_gran_k(gran_k)


def per_token_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128,
                          use_packed_ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], fp32 scales [M, K/128]): dx.quant.per_token_cast_to_fp8, the
    scales already in the GEMM's layout; use_ue8m0 rounds them up to powers of two."""
    _check_cast_options(use_ue8m0, gran_k)
    if use_packed_ue8m0:
        raise NotImplementedError("use_packed_ue8m0 (int32-packed scales, DeepGEMM's SM100 format) is not supported")
    return quant.per_token_cast_to_fp8(x, pow2_scale=use_ue8m0)


def per_channel_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x [K, N] quantized in 128x1 groups along K (K a multiple of 128) -> (e4m3 [K, N], fp32
    scales [K/128, N]), both contiguous as DeepGEMM returns them: the k-grouped GEMM's operands."""
    _check_cast_options(use_ue8m0, gran_k)
    check_tensor(x, "x", (torch.bfloat16, torch.float32), dim=2)
    if x.shape[0] % GROUP:
        raise ValueError(f"x.shape[0] must be a multiple of {GROUP}, got {x.shape[0]}")
    q, s = quant.per_token_cast_to_fp8(x.T.contiguous(), pow2_scale=use_ue8m0)
    return q.T.contiguous(), s.T.contiguous()


def per_block_cast_to_fp8(x: torch.Tensor, use_ue8m0: bool, gran_k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, K] -> (e4m3 [N, K], fp32 scales [N/128, K/128]) in 128x128 blocks."""
    _check_cast_options(use_ue8m0, gran_k)
    return quant.per_block_cast_to_fp8(x, pow2_scale=use_ue8m0)


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - 2*sum(x*y) / sum(x*x + y*y) in float64, as a 0-d tensor."""
    return torch.tensor(gemm.calc_diff(x, y), dtype=torch.float64)
