"""The accuracy metric of the numerics contract (DESIGN.md)."""
from __future__ import annotations

import torch


def calc_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """1 - 2*sum(out*ref) / sum(out*out + ref*ref), in float64.

    0 when out == ref, 1 for uncorrelated tensors; two all-zero (or empty) tensors give 0.
    """
    out, ref = out.detach().double(), ref.detach().double()  # a metric: never part of a graph
    denominator = (out * out + ref * ref).sum()
    if denominator == 0:
        return 0.0
    return float(1 - 2 * (out * ref).sum() / denominator)
