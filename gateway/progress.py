"""A one-line progress bar for slow work on a terminal (a serial image upload takes seconds)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Call with (done, total); redraws at most every 0.1 s, and always at the end."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self._last = 0.0
        self._started = time.monotonic()
        self._finished = False
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        end = total > 0 and done >= total
        if self._finished or (not end and now - self._last < (0.1 if self._tty else 1.0)):
            return
        self._last = now
        share = done / total if total else 0.0
        filled = int(round(share * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        text = f"{self.label} [{bar}] {share * 100:3.0f}%  {now - self._started:4.1f} s"
        if self._tty:
            self.stream.write("\r" + text + ("\n" if end else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._finished = end
