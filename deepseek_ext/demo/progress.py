"""The demo's training progress bar: tqdm's, counting optimizer steps, with the loss beside it."""
from __future__ import annotations

from typing import TextIO

from tqdm.auto import tqdm


def training_bar(total_steps: int, done_steps: int = 0, file: TextIO | None = None) -> tqdm:
    """A bar over the run's steps that starts at `done_steps` (a resumed run), on stderr by default;
    tqdm.auto draws a widget in a notebook and redraws one line in place elsewhere."""
    return tqdm(total=total_steps, initial=done_steps, unit="step", desc="training", file=file, dynamic_ncols=True)
