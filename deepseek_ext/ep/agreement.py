"""What the ranks of an expert-parallel Buffer compare, so that they cannot disagree silently.

At creation every rank all-gathers its configuration (agree_on_config): a field that differs
raises the same ValueError on every rank, naming the field and each value's ranks.

Every operation's first exchange (the torch backend's first all-gather, the ipc kernels' first
push into the peers' regions) carries an OpHeader: sequence number, kind, k, hidden, dtype,
has_scales, and an "invalid" flag that a rank whose own input checks failed sends instead of
data, so that its peers raise at once. check_headers runs on every rank over the same table and
raises the same ValueError everywhere.
"""
from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
import torch.distributed as dist

KINDS = ("dispatch", "combine", "combine_weights")
DTYPES = (None, torch.bfloat16, torch.float32, torch.float8_e4m3fn)  # code = index


class Diverged(ValueError):
    """The ranks' calls diverged: the Buffer raises until reset() realigns them."""


class DeviceFailure(RuntimeError):
    """A device-side wait timed out: the Buffer raises until reset()."""


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _group_by_value(values: list) -> dict:
    """value -> the ranks holding it, in first-seen order."""
    by_value: dict = {}
    for rank, value in enumerate(values):
        by_value.setdefault(value, []).append(rank)
    return by_value


def agree_on_config(group, config: dict) -> None:
    """All-gathers `config` (picklable values) and raises ValueError, the same on every rank,
    if any field differs between ranks."""
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, config, group=group)
    for field in config:
        by_value = _group_by_value([c.get(field) for c in everyone])
        if len(by_value) > 1:
            sides = "; ".join(f"{value!r} on {_ranks(ranks)}" for value, ranks in by_value.items())
            raise ValueError(f"dx.ep.Buffer: the ranks disagree on {field} ({sides})")


@dataclass(frozen=True)
class OpHeader:
    seq: int  # operations this Buffer ran before this one (agreed ranks count alike)
    kind: int  # index in KINDS
    k: int  # topk columns (0 where the operation has none)
    hidden: int
    dtype: int  # index in DTYPES of what travels
    has_scales: int
    invalid: int  # 1: this rank's own input checks failed; it sends nothing else

    WORDS = 7

    @classmethod
    def make(cls, seq: int, kind: str, k: int = 0, hidden: int = 0, dtype: torch.dtype | None = None,
             has_scales: bool = False, invalid: bool = False) -> "OpHeader":
        return cls(seq, KINDS.index(kind), k, hidden, DTYPES.index(dtype), int(has_scales), int(invalid))

    def words(self) -> list[int]:
        return list(astuple(self))

    def describe(self) -> str:
        if self.invalid:
            return f"{KINDS[self.kind]} #{self.seq} with inputs it rejected (its own error says why)"
        dtype = str(DTYPES[self.dtype]).removeprefix("torch.")
        scales = ", with scales" if self.has_scales else ""
        return f"{KINDS[self.kind]} #{self.seq} (k={self.k}, hidden={self.hidden}, {dtype}{scales})"


def check_headers(headers: list[OpHeader]) -> None:
    """Raises ValueError (the same text on every rank) unless every rank sent the same valid header."""
    invalid = [r for r, h in enumerate(headers) if h.invalid]
    if invalid:
        raise ValueError(f"dx.ep.Buffer: {_ranks(invalid)} rejected the inputs of "
                         f"{KINDS[headers[invalid[0]].kind]} #{headers[invalid[0]].seq}; the operation ran on no rank")
    by_value = _group_by_value(headers)
    if len(by_value) > 1:
        sides = "; ".join(f"{_ranks(ranks)} called {h.describe()}" for h, ranks in by_value.items())
        raise Diverged(f"dx.ep.Buffer: the ranks' calls diverged: {sides}")


def headers_from(table: torch.Tensor) -> list[OpHeader]:
    """[R, >= WORDS] integers (each rank's first words) -> one header per rank."""
    return [OpHeader(*(int(v) for v in row[:OpHeader.WORDS])) for row in table.tolist()]
