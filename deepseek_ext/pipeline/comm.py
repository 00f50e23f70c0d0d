"""Point-to-point transfers between pipeline ranks (torch.distributed.batch_isend_irecv).

Activations travel with a small header (count, dtype, shape of each tensor) because the
receiver cannot know what the previous stage returns; gradients need none, their receiver
holds the tensors they belong to. Sends are asynchronous; receives block until the data is in.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)
_MAX_DIMS = 8
_HEADER_FIELDS = 2 + _MAX_DIMS  # dtype code, ndim, dims
_MAX_TENSORS = 6
_HEADER_LEN = 1 + _MAX_TENSORS * _HEADER_FIELDS


def encode_header(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if len(tensors) > _MAX_TENSORS:
        raise ValueError(f"stage outputs: at most {_MAX_TENSORS} tensors can pass between stages, got {len(tensors)}")
    header = torch.zeros(_HEADER_LEN, dtype=torch.int64)
    header[0] = len(tensors)
    for i, t in enumerate(tensors):
        if t.dtype not in _DTYPES or t.dim() > _MAX_DIMS:
            raise ValueError(f"stage outputs: cannot send a {t.dtype} tensor of {t.dim()} dims "
                             f"(supported: {_DTYPES}, at most {_MAX_DIMS} dims)")
        base = 1 + i * _HEADER_FIELDS
        header[base] = _DTYPES.index(t.dtype)
        header[base + 1] = t.dim()
        header[base + 2: base + 2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    return header


def decode_header(header: torch.Tensor) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    fields = header.tolist()
    specs = []
    for i in range(fields[0]):
        base = 1 + i * _HEADER_FIELDS
        ndim = fields[base + 1]
        specs.append((_DTYPES[fields[base]], tuple(fields[base + 2: base + 2 + ndim])))
    return specs


class PeerLink:
    """Sends and receives of one rank inside a process group; sends stay pending until wait_sends().
    Peers are pipeline ranks, which ``global_rank`` turns into torch.distributed ranks."""

    def __init__(self, group, device: torch.device, global_rank: Callable[[int], int]):
        self.group = group
        self.device = device
        self._global = global_rank
        self._pending: list = []  # (work, tensors kept alive until sent)

    def send(self, tensors: tuple[torch.Tensor, ...], peer: int, tag: int, with_header: bool) -> None:
        payload = [t.detach().contiguous() for t in tensors]
        if with_header:
            payload.insert(0, encode_header(tuple(payload)).to(self.device))
        ops = [dist.P2POp(dist.isend, t, self._global(peer), self.group, tag) for t in payload]
        self._pending.append((dist.batch_isend_irecv(ops), payload))

    def _receive_into(self, buffers: list[torch.Tensor], peer: int, tag: int) -> None:
        ops = [dist.P2POp(dist.irecv, t, self._global(peer), self.group, tag) for t in buffers]
        for work in dist.batch_isend_irecv(ops):
            work.wait()

    def receive(self, peer: int, tag: int) -> tuple[torch.Tensor, ...]:
        header = torch.empty(_HEADER_LEN, dtype=torch.int64, device=self.device)
        self._receive_into([header], peer, tag)
        buffers = [torch.empty(shape, dtype=dtype, device=self.device) for dtype, shape in decode_header(header.cpu())]
        self._receive_into(buffers, peer, tag)
        return tuple(buffers)

    def receive_like(self, templates: tuple[torch.Tensor, ...], peer: int, tag: int) -> tuple[torch.Tensor, ...]:
        buffers = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in templates]
        self._receive_into(buffers, peer, tag)
        return tuple(buffers)

    def wait_sends(self) -> None:
        for works, _ in self._pending:
            for work in works:
                work.wait()
        self._pending.clear()
