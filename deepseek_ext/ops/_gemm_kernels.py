"""Tensors -> launcher arguments for the FP8 GEMM kernels. Callers (ops/gemm.py) have validated
shapes, dtypes, layouts, alignment and devices; here tensors only become pointers and strides."""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional

import torch

from deepseek_ext._backend import get_num_sms, kernel_module
from deepseek_ext.ops import _launch

KIND = {"dense": 0, "m_contiguous": 1, "m_masked": 2, "k_grouped": 3}  # gemm::GemmKind
MULTICAST = ("none", "A", "B")  # gemm::Multicast: which operand a 2-CTA cluster shares


class GemmConfig(NamedTuple):
    """A compiled variant of the FP8 GEMM kernel: tile rows and columns, and the operand a 2-CTA
    cluster shares by TMA multicast ("none", "A" or "B")."""
    block_m: int
    block_n: int
    multicast: str = "none"

    def as_launcher_arg(self) -> tuple[int, int, int]:
        return self.block_m, self.block_n, MULTICAST.index(self.multicast)


_forced: Optional[tuple[int, int, int]] = None  # None: the launchers' heuristic chooses


@contextlib.contextmanager
def forced_config(config: GemmConfig) -> Iterator[None]:
    """Runs every GEMM launch inside the block with `config` instead of the heuristic's choice (for
    tests and benchmarks of each variant); a config the problem cannot use fails the launch."""
    global _forced
    previous, _forced = _forced, config.as_launcher_arg()
    try:
        yield
    finally:
        _forced = previous


def chosen_config(kind: str, m: int, n: int, k: int, groups: int, out_dtype: torch.dtype, sb_per_row: bool,
                  num_sms: int, device: torch.device = torch.device("cpu")) -> GemmConfig:
    """The variant the launchers' heuristic picks (csrc/include/deepseek_ext/gemm/heuristic.h) for
    a GEMM of `kind` with m rows per group (m_masked: expected_m), as the launch would see it."""
    block_m, block_n, multicast = kernel_module(device).fp8_gemm_config(
        KIND[kind], m, n, k, groups, out_dtype.itemsize, sb_per_row, num_sms)
    return GemmConfig(block_m, block_n, MULTICAST[multicast])


def fp8_gemm_nt(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                out: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
    """out[M, N] = c + a @ b^T on the GPU. a [M, K], b [N, K] contiguous e4m3; sa [M, Kb] M-major;
    sb [N, Kb] M-major (1x128) or [ceil(N/128), Kb] contiguous (128x128); out contiguous bf16/fp32;
    c None or contiguous fp32 [M, N]. M, N, K > 0."""
    (m, k), n = a.shape, b.shape[0]
    sb_per_row = sb.shape[0] == n  # the 128x128 kind has ceil(N/128) < N rows (N >= 16)
    # Contiguous 128x128 scales have row stride Kb (stride(0) is arbitrary when there is one row).
    ld_sb = sb.stride(-1) if sb_per_row else sb.shape[1]
    _launch.call("fp8_gemm_nt", a.data_ptr(), k, sa.data_ptr(), sa.stride(-1), b.data_ptr(), k,
                 sb.data_ptr(), ld_sb, sb_per_row, out.data_ptr(), _launch.DTYPE_CODE[out.dtype],
                 0 if c is None else c.data_ptr(), m, n, k, _forced, get_num_sms(), _launch.stream_handle(a),
                 device=a.device)
    return out


def m_grouped_fp8_gemm_nt_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                     m_indices: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[M, N] (every row written; padding rows zero). a [M, K] contiguous e4m3, M a multiple of
    128; sa [M, Kb] M-major; b [G, N, K] and sb [G, ceil(N/128), Kb] contiguous; m_indices [M] int32
    contiguous, one group per 128-row block. M, N, K > 0."""
    (m, k), (groups, n) = a.shape, b.shape[:2]
    _launch.call("m_grouped_fp8_gemm_nt_contiguous", a.data_ptr(), sa.data_ptr(), sa.stride(-1), b.data_ptr(),
                 sb.data_ptr(), m_indices.data_ptr(), out.data_ptr(), _launch.DTYPE_CODE[out.dtype], m, n, k,
                 groups, _forced, get_num_sms(), _launch.stream_handle(a), device=a.device)
    return out


def m_grouped_fp8_gemm_nt_masked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                 masked_m: torch.Tensor, expected_m: int, out: torch.Tensor) -> torch.Tensor:
    """out[G, Mmax, N] (rows >= masked_m[g] not written). a [G, Mmax, K] contiguous e4m3; sa
    [G, Mmax, Kb] M-major with groups Kb columns apart; masked_m [G] int32 on the device, never
    read here. G, Mmax, N, K > 0."""
    groups, m_max, k = a.shape
    _launch.call("m_grouped_fp8_gemm_nt_masked", a.data_ptr(), sa.data_ptr(), sa.stride(-1), b.data_ptr(),
                 sb.data_ptr(), masked_m.data_ptr(), out.data_ptr(), _launch.DTYPE_CODE[out.dtype], groups,
                 m_max, b.shape[1], k, expected_m, _forced, get_num_sms(), _launch.stream_handle(a),
                 device=a.device)
    return out


def k_grouped_fp8_gemm_tn_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                     k_offsets: torch.Tensor, out: torch.Tensor,
                                     c: Optional[torch.Tensor]) -> torch.Tensor:
    """out[G, N, K] fp32 = c + per-group a[:, seg] @ b[:, seg]^T. a [N, T], b [K, T] contiguous e4m3
    with M-major sa [N, T/128], sb [K, T/128]; k_offsets [G+1] int32 on the device (multiples of
    128, last = T). G, N, K, T > 0."""
    (n, t), k = a.shape, b.shape[0]
    _launch.call("k_grouped_fp8_gemm_tn_contiguous", a.data_ptr(), sa.data_ptr(), sa.stride(-1), b.data_ptr(),
                 sb.data_ptr(), sb.stride(-1), k_offsets.data_ptr(), out.data_ptr(),
                 0 if c is None else c.data_ptr(), out.shape[0], n, k, t, _forced, get_num_sms(),
                 _launch.stream_handle(a), device=a.device)
    return out
