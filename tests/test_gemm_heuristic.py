"""The launchers' config heuristic (csrc/include/deepseek_ext/gemm/heuristic.h) on DeepSeek-V3's
GEMM shapes, on the CPU: for each shape it picks a compiled variant that applies, and no other
compiled variant beats it under the documented rule (fewest waves of tiles over the SMs, then the
fullest last wave, then the fewest bytes read from L2), recomputed here independently."""
from __future__ import annotations

import math

import pytest
import torch

from deepseek_ext import _backend
from deepseek_ext.ops._gemm_kernels import MULTICAST, chosen_config

_MODULE = _backend._emu or _backend._C
pytestmark = pytest.mark.skipif(_MODULE is None, reason="needs a built kernel module (_emu or _C)")
_SMS = 132
_HIDDEN, _MOE_INTER = 7168, 2048

# (kind, name, n, k, groups, out dtype, 1x128 B scales) of DeepSeek-V3's GEMMs; m varies.
# Dense: Fprop out[M, N] = x @ W^T, Dgrad dx[M, K] = dy @ W (N and K swapped), Wgrad dW = dy^T x
# (fp32, 1x128 scales on both sides, the tokens are K). Grouped: the routed experts' up
# (gate+up, 2 x 2048) and down projections over 8 local experts, contiguous and masked.
_DENSE_NK = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
SHAPES = ([("dense", f"fprop {n}x{k}", n, k, 1, torch.bfloat16, False) for n, k in _DENSE_NK]
          + [("dense", f"dgrad {n}x{k}", k, n, 1, torch.bfloat16, False) for n, k in _DENSE_NK]
          + [("m_contiguous", "experts up", 2 * _MOE_INTER, _HIDDEN, 8, torch.bfloat16, False),
             ("m_contiguous", "experts down", _HIDDEN, _MOE_INTER, 8, torch.bfloat16, False),
             ("m_masked", "experts up (masked)", 2 * _MOE_INTER, _HIDDEN, 8, torch.bfloat16, False),
             ("m_masked", "experts down (masked)", _HIDDEN, _MOE_INTER, 8, torch.bfloat16, False)])
WGRAD = [("dense", f"wgrad {n}x{k}", n, k, torch.float32, True) for n, k in _DENSE_NK]
MS = [64, 128, 4096, 8192]


def _score(kind, m, n, k, groups, config, sms):
    """(waves, -tiles in the last wave, bytes read) of a config: the heuristic's rule."""
    block_m, block_n, multicast = config
    tiles = groups * math.ceil(m / block_m) * math.ceil(n / block_n)
    slots = sms // 2 * 2 if multicast else sms
    waves = math.ceil(tiles / slots)
    per_block = (block_m + block_n) * 128 - (block_m * 64 if multicast == 1 else block_n * 64 if multicast == 2 else 0)
    return waves, -(tiles - (waves - 1) * slots), tiles * math.ceil(k / 128) * per_block


def _applies(kind, m, n, config, sms):
    block_m, block_n, multicast = config
    if multicast == 0:
        return True
    shared = math.ceil(n / block_n) if multicast == 1 else math.ceil(m / block_m)
    return kind == "dense" and sms >= 2 and shared % 2 == 0


def _check_optimal(kind, m, n, k, groups, out_dtype, sb_per_row, sms=_SMS):
    """The chosen config, after checking it applies and that nothing compiled scores better."""
    # m_contiguous: the launcher sees all rows, each group padded to 128, as one group; m_masked:
    # expected_m rows per group.
    heuristic_m, heuristic_groups = (groups * -(-m // 128) * 128, 1) if kind == "m_contiguous" else (m, groups)
    chosen = chosen_config(kind, heuristic_m, n, k, heuristic_groups, out_dtype, sb_per_row, sms)
    arg = chosen.as_launcher_arg()
    compiled = {(bm, bn) for ob, row, bm, bn in _MODULE.fp8_gemm_variants()
                if ob == out_dtype.itemsize and row == sb_per_row}
    assert (chosen.block_m, chosen.block_n) in compiled and _applies(kind, heuristic_m, n, arg, sms)
    best = _score(kind, heuristic_m, n, k, heuristic_groups, arg, sms)
    for bm, bn in compiled:
        for mc in range(len(MULTICAST)):
            if _applies(kind, heuristic_m, n, (bm, bn, mc), sms):
                assert best <= _score(kind, heuristic_m, n, k, heuristic_groups, (bm, bn, mc), sms), (bm, bn, mc)
    return chosen


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("kind, name, n, k, groups, out_dtype, sb_per_row", SHAPES, ids=[s[1] for s in SHAPES])
def test_forward_and_grouped_choices_are_optimal(kind, name, n, k, groups, out_dtype, sb_per_row, m):
    chosen = _check_optimal(kind, m, n, k, groups, out_dtype, sb_per_row)
    if m <= 64 and kind != "m_contiguous":  # a second consumer warpgroup would multiply zero rows
        assert chosen.block_m == 64


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("kind, name, n, k, out_dtype, sb_per_row", WGRAD, ids=[s[1] for s in WGRAD])
def test_wgrad_choices_are_optimal(kind, name, n, k, out_dtype, sb_per_row, m):
    # dW[N, K] = dy^T x: the weight's rows are M, its columns N, the tokens (m) the contraction.
    _check_optimal(kind, n, k, m, 1, out_dtype, sb_per_row)


@pytest.mark.parametrize("sms", [1, 2, 20, 78, 131])
def test_choices_for_other_sm_counts(sms):
    for kind, _, n, k, groups, out_dtype, sb_per_row in SHAPES:
        chosen = _check_optimal(kind, 128, n, k, groups, out_dtype, sb_per_row, sms)
        assert sms >= 2 or chosen.multicast == "none"


def test_wide_problems_use_wide_tiles_and_small_ones_fill_the_sms():
    big = chosen_config("dense", 8192, 7168, 2048, 1, torch.bfloat16, False, _SMS)
    assert big.block_m == 128 and big.block_n >= 128
    small = chosen_config("dense", 128, 2112, 7168, 1, torch.bfloat16, False, _SMS)
    assert math.ceil(128 / small.block_m) * math.ceil(2112 / small.block_n) > _SMS // 2  # most SMs busy
