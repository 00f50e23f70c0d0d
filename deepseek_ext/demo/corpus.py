"""The demo's text: an original corpus shipped inside the package, read as bytes (one token per
byte, the tiny preset's 256-token vocabulary). Its last tenth is held out for evaluation."""
from __future__ import annotations

from importlib import resources

import torch

HELD_OUT_FRACTION = 0.1


def load_corpus_bytes() -> bytes:
    return resources.files("deepseek_ext.demo").joinpath("corpus.txt").read_bytes()


def decode(ids: torch.Tensor) -> str:
    return bytes(ids.tolist()).decode("ascii", errors="replace")


class Corpus:
    def __init__(self, text: bytes):
        data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
        split = int(len(data) * (1 - HELD_OUT_FRACTION))
        # the held-out part starts at a paragraph so its prompts read naturally
        paragraph = text.find(b"\n\n", split)
        split = paragraph + 2 if paragraph >= 0 else split
        self.train, self.held_out = data[:split], data[split:]

    def check_seq(self, seq: int) -> None:
        """Before training: seq must fit the training text and give at least one held-out window."""
        if not 1 <= seq <= len(self.held_out) - 1:
            raise ValueError(f"seq must be in [1, {len(self.held_out) - 1}] (the held-out text is "
                             f"{len(self.held_out)} bytes), got {seq}")

    def check_prompt(self, length: int) -> None:
        if not 1 <= length <= len(self.held_out):
            raise ValueError(f"prompt length must be in [1, {len(self.held_out)}] (the held-out text's length), "
                             f"got {length}")

    def batch(self, generator: torch.Generator, batch: int, seq: int) -> torch.Tensor:
        """[batch, seq + 1] windows of the training part at offsets drawn from `generator`."""
        if seq + 1 > len(self.train):
            raise ValueError(f"seq must be < {len(self.train)} (the training text's length), got {seq}")
        starts = torch.randint(0, len(self.train) - seq, (batch,), generator=generator)
        return torch.stack([self.train[s: s + seq + 1] for s in starts.tolist()])

    def held_out_batches(self, batch: int, seq: int) -> list[torch.Tensor]:
        """The held-out part cut into consecutive [<=batch, seq + 1] windows (the same every call)."""
        windows = self.held_out[: (len(self.held_out) - 1) // seq * seq + 1].unfold(0, seq + 1, seq)
        return list(windows.split(batch))

    def prompt(self, length: int) -> torch.Tensor:
        """[1, length]: the beginning of the held-out part."""
        self.check_prompt(length)
        return self.held_out[:length].unsqueeze(0)
