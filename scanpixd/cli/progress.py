"""A one-line progress display for terminals; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO = sys.stderr, min_interval: float = 0.1):
        self.stream = stream
        self.enabled = stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._phase_started: dict[str, float] = {}
        self._shown = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        started = self._phase_started.setdefault(phase, now)
        if now - self._last < self.min_interval and done < total:
            return
        self._last = now
        rate = done / (now - started) if now > started else 0.0
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{phase:<10} [{bar}] {done}/{total}  {rate:5.1f}/s ")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
