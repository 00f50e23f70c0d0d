"""The demo's training progress bar: tqdm's, counting optimizer steps, with the loss beside it."""
from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0  # a bar written to a log, not a terminal, redraws this seldom


def training_bar(total_steps: int, done_steps: int = 0, file: TextIO | None = None) -> tqdm:
    """A bar over the run's steps that starts at `done_steps` (a resumed run), on stderr by default;
    tqdm.auto draws a widget in a notebook and redraws one line in place on a terminal. Written to
    a file or pipe (a job's log), where every redraw stays, it redraws every LOG_INTERVAL_S."""
    stream = sys.stderr if file is None else file
    in_notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)  # tqdm.auto's widget
    live = in_notebook or getattr(stream, "isatty", lambda: False)()
    return tqdm(total=total_steps, initial=done_steps, unit="step", desc="training", file=file, dynamic_ncols=True,
                mininterval=0.1 if live else LOG_INTERVAL_S)
