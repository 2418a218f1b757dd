"""A text progress bar on stderr for transfers: no dependency, and quiet in logs (a stream that is not a
terminal gets one line when the transfer ends, not hundreds of carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30  # characters of bar


class ProgressBar:
    def __init__(self, label: str, total: int, *, unit: str = "B", stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.label = label
        self.total = max(int(total), 1)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._t0 = time.monotonic()
        self._drawn_pct = -1

    def update(self, done: int) -> None:
        self.done = min(int(done), self.total)
        pct = self.done * 100 // self.total
        if self.live and pct != self._drawn_pct:  # redraw at most 101 times per transfer
            self._drawn_pct = pct
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        filled = self.done * WIDTH // self.total
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        return "%s [%s%s] %3d%% %d/%d %s (%.0f %s/s)" % (
            self.label, "#" * filled, "." * (WIDTH - filled), self.done * 100 // self.total, self.done, self.total,
            self.unit, self.done / elapsed, self.unit)

    def close(self) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r" if self.live else "") + self.line() + "\n")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
