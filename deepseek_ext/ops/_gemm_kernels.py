"""Launch plans of the FP8 GEMM kernels. Callers (ops/gemm.py) have validated shapes, dtypes,
layouts and devices; a plan is made once per argument signature and holds the launcher and every
argument that follows from shapes and strides. Its run checks start addresses (one OR of the
pointers when all are aligned), allocates the output unless given one, and launches."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Iterator, NamedTuple, Optional

import torch

from deepseek_ext import _backend
from deepseek_ext._backend import kernel_module
from deepseek_ext.ops import _launch
from deepseek_ext.ops._checks import ALIGN_BYTES, check_aligned_all

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


def _operand_ptrs(a, sa, b, sb, other, other_name: str) -> tuple[int, int, int, int, int]:
    """data_ptr of a, sa, b, sb and other (0 for None), each checked 16-byte aligned (one test when all are)."""
    ptrs = a.data_ptr(), sa.data_ptr(), b.data_ptr(), sb.data_ptr(), 0 if other is None else other.data_ptr()
    if (ptrs[0] | ptrs[1] | ptrs[2] | ptrs[3] | ptrs[4]) % ALIGN_BYTES:
        check_aligned_all(a=a, sa=sa, b=b, sb=sb, **{other_name: other})
    return ptrs


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


def plan_fp8_gemm_nt(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                     out_dtype: torch.dtype, c: Optional[torch.Tensor]) -> Callable:
    """run(a, sa, b, sb, out_dtype, c, *, out=None) -> out[M, N] = c + a @ b^T on the kernels. a [M, K],
    b [N, K] contiguous e4m3; sa [M, Kb] M-major; sb [N, Kb] M-major (1x128) or [ceil(N/128), Kb]
    contiguous (128x128); out contiguous bf16/fp32; c None or contiguous fp32 [M, N]. M, N, K > 0."""
    (m, k), n = a.shape, b.shape[0]
    sb_per_row = sb.shape[0] == n  # the 128x128 kind has ceil(N/128) < N rows (N >= 16)
    # Contiguous 128x128 scales have row stride Kb (stride(0) is arbitrary when there is one row).
    ld_sa, ld_sb = sa.stride(-1), (sb.stride(-1) if sb_per_row else sb.shape[1])
    device, out_code = a.device, _launch.DTYPE_CODE[out_dtype]
    all_sms, launch = _backend.sm_count_of(device), _launch.launcher("fp8_gemm_nt", device)
    alloc = _launch.allocator((m, n), (n, 1), out_dtype, device)

    def run(a, sa, b, sb, out_dtype, c, *, out=None):
        pa, psa, pb, psb, pc = _operand_ptrs(a, sa, b, sb, c, "c")
        out = alloc() if out is None else out
        launch(pa, k, psa, ld_sa, pb, k, psb, ld_sb, sb_per_row, out.data_ptr(), out_code, pc, m, n, k, _forced,
               _backend._num_sms or all_sms)
        return out
    return run


def plan_m_grouped_fp8_gemm_nt_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                          m_indices: torch.Tensor, out_dtype: torch.dtype) -> Callable:
    """run(a, sa, b, sb, m_indices, out_dtype, *, out=None) -> out[M, N] (every row written; padding
    rows zero). a [M, K] contiguous e4m3, M a multiple of 128; sa [M, Kb] M-major; b [G, N, K] and sb
    [G, ceil(N/128), Kb] contiguous; m_indices [M] int32 contiguous, one group per 128-row block: the
    kernel checks its values where it reads them (the host reads none)."""
    (m, k), (groups, n) = a.shape, b.shape[:2]
    ld_sa, device, out_code = sa.stride(-1), a.device, _launch.DTYPE_CODE[out_dtype]
    all_sms, launch = _backend.sm_count_of(device), _launch.launcher("m_grouped_fp8_gemm_nt_contiguous", device)
    alloc = _launch.allocator((m, n), (n, 1), out_dtype, device)

    def run(a, sa, b, sb, m_indices, out_dtype, *, out=None):
        pa, psa, pb, psb, pm = _operand_ptrs(a, sa, b, sb, m_indices, "m_indices")
        out = alloc() if out is None else out
        launch(pa, psa, ld_sa, pb, psb, pm, out.data_ptr(), out_code, m, n, k, groups, _forced,
               _backend._num_sms or all_sms)
        return out
    return run


def plan_m_grouped_fp8_gemm_nt_masked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                      masked_m: torch.Tensor, expected_m: int, out_dtype: torch.dtype) -> Callable:
    """run(a, sa, b, sb, masked_m, expected_m, out_dtype, *, out=None) -> out[G, Mmax, N]
    (rows >= masked_m[g] not written). a [G, Mmax, K] contiguous e4m3; sa [G, Mmax, Kb] M-major with
    groups Kb columns apart; masked_m [G] int32 on the device, whose values the kernel checks (the
    host reads none). G, Mmax, N, K > 0."""
    (groups, m_max, k), n = a.shape, b.shape[1]
    ld_sa, device, out_code = sa.stride(-1), a.device, _launch.DTYPE_CODE[out_dtype]
    all_sms, launch = _backend.sm_count_of(device), _launch.launcher("m_grouped_fp8_gemm_nt_masked", device)
    alloc = _launch.allocator((groups, m_max, n), (m_max * n, n, 1), out_dtype, device)

    def run(a, sa, b, sb, masked_m, expected_m, out_dtype, *, out=None):
        pa, psa, pb, psb, pm = _operand_ptrs(a, sa, b, sb, masked_m, "masked_m")
        out = alloc() if out is None else out
        launch(pa, psa, ld_sa, pb, psb, pm, out.data_ptr(), out_code, groups, m_max, n, k, expected_m, _forced,
               _backend._num_sms or all_sms)
        return out
    return run


def plan_k_grouped_fp8_gemm_tn_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                          k_offsets: list[int], c: Optional[torch.Tensor]) -> Callable:
    """run(a, sa, b, sb, group_sizes, c, *, out=None) -> out[G, N, K] fp32 = c + per-group a[:, seg] @
    b[:, seg]^T, seg the groups' k_offsets [G+1] (multiples of 128, last = T). a [N, T], b [K, T]
    contiguous e4m3 with M-major sa [N, T/128], sb [K, T/128]. G, N, K, T > 0. The plan holds the
    offsets in host memory (pinned for a GPU) and each run copies them to the device, where the kernel
    reads them."""
    (n, t), k, groups = a.shape, b.shape[0], len(k_offsets) - 1
    ld_sa, ld_sb, device = sa.stride(-1), sb.stride(-1), a.device
    offsets, copied = torch.tensor(k_offsets, dtype=torch.int32), device.type != "cpu"
    if copied:
        offsets = offsets.pin_memory()
    all_sms, launch = _backend.sm_count_of(device), _launch.launcher("k_grouped_fp8_gemm_tn_contiguous", device)
    alloc = _launch.allocator((groups, n, k), (n * k, k, 1), torch.float32, device)

    def run(a, sa, b, sb, group_sizes, c, *, out=None):
        pa, psa, pb, psb, pc = _operand_ptrs(a, sa, b, sb, c, "c")
        out = alloc() if out is None else out
        on_device = offsets.to(device, non_blocking=True) if copied else offsets  # alive until the launch
        launch(pa, psa, ld_sa, pb, psb, ld_sb, on_device.data_ptr(), out.data_ptr(), pc, groups, n, k, t, _forced,
               _backend._num_sms or all_sms)
        return out
    return run


def fp8_gemm_nt(a, sa, b, sb, out: torch.Tensor, c) -> torch.Tensor:
    """One launch into a given out (tests fill it with a sentinel first)."""
    return plan_fp8_gemm_nt(a, sa, b, sb, out.dtype, c)(a, sa, b, sb, out.dtype, c, out=out)


def m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, out: torch.Tensor) -> torch.Tensor:
    """One launch into a given out."""
    return plan_m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, out.dtype)(a, sa, b, sb, m_indices,
                                                                                        out.dtype, out=out)


def m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, expected_m: int, out: torch.Tensor) -> torch.Tensor:
    """One launch into a given out."""
    return plan_m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, expected_m, out.dtype)(
        a, sa, b, sb, masked_m, expected_m, out.dtype, out=out)


def k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, k_offsets: list[int], out: torch.Tensor, c) -> torch.Tensor:
    """One launch into a given out."""
    return plan_k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, k_offsets, c)(a, sa, b, sb, None, c, out=out)
