"""A one-line progress bar on stderr (redrawn in place on a terminal, a line per tenth otherwise)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class ProgressBar:
    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None):
        self.total, self.done = total, start
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.started, self.first = time.perf_counter(), start
        self._last_tenth = start * 10 // max(total, 1)

    def update(self, done: int, text: str = "") -> None:
        self.done = done
        tenth = done * 10 // max(self.total, 1)
        if not self.interactive and tenth == self._last_tenth and done < self.total:
            return
        self._last_tenth = tenth
        filled = WIDTH * done // max(self.total, 1)
        elapsed = time.perf_counter() - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - done) / rate:4.0f}s left" if rate > 0 else ""
        line = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{self.total} {text} {eta}"
        self.stream.write(("\r" + line) if self.interactive else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
