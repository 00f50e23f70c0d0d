"""CPUEMA: an exponential moving average of a module's parameters kept in CPU memory.

update() snapshots the parameters into CPU staging buffers (non-blocking device-to-host copies
into pinned memory on CUDA) and returns; a background thread waits for the copies and folds them
into the average: ema = decay * ema + (1 - decay) * param. The GPU holds no extra copy and the
training step does not wait. wait() blocks until every update has landed.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn


class CPUEMA:
    def __init__(self, module: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self._params = {name: p for name, p in module.named_parameters()}
        self.shadow = {name: p.detach().to("cpu", torch.float32, copy=True) for name, p in self._params.items()}
        pin = torch.cuda.is_available() and any(p.is_cuda for p in self._params.values())
        self._staging = {name: torch.empty(s.shape, dtype=p.dtype, pin_memory=pin)
                         for (name, s), p in zip(self.shadow.items(), self._params.values())}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-ema")
        self._pending: Future | None = None
        self.num_updates = 0

    def update(self) -> None:
        """Queue one EMA step with the parameters as they are now (call after optimizer.step())."""
        self.wait()  # the staging buffers are reused: the previous step must have been consumed
        with torch.no_grad():
            for name, p in self._params.items():
                self._staging[name].copy_(p.detach(), non_blocking=p.is_cuda)
        copied = None
        if any(p.is_cuda for p in self._params.values()):
            copied = torch.cuda.Event()
            copied.record()
        self._pending = self._worker.submit(self._fold, copied)
        self.num_updates += 1

    def _fold(self, copied) -> None:
        if copied is not None:
            copied.synchronize()
        for name, avg in self.shadow.items():
            avg.lerp_(self._staging[name].float(), 1.0 - self.decay)

    def wait(self) -> None:
        """Block until every queued update has been applied (re-raises a worker error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.wait()
        return {name: t.clone() for name, t in self.shadow.items()}

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged parameters into `module` (same parameter names)."""
        self.wait()
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.shadow[name].to(p.device, p.dtype))

    def close(self) -> None:
        self.wait()
        self._worker.shutdown()
