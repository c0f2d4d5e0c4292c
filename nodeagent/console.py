"""Terminal output for long work: human sizes, rates and durations, bars, a live block.

``LiveDisplay`` redraws a block of lines in place with ANSI cursor movement (no curses,
no dependency) and keeps log records readable by clearing the block before a record is
written and redrawing it after. Each concern draws its own progress with these:
prewarm/display.py (bars per image), snapshot/hydrate_progress.py (hydration),
snapshot/output.py (snapshot completion). Knows nothing of any concern.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

CLEAR_LINE = "\x1b[2K"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"

def fmt_bytes(n: float) -> str:
    """Human size in binary units: "1.5 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 2**20:.1f} MiB/s"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def bar(fraction: float | None, width: int = 24) -> str:
    if fraction is None:
        return "[" + "?".center(width) + "]"
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class LiveDisplay:
    """A block of lines redrawn in place on a terminal."""

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self._drawn = 0
        self._lines: list[str] = []
        self._lock = threading.RLock()
        self._hooked: list[logging.Handler] = []

    def show(self, lines: list[str]) -> None:
        with self._lock:
            self._lines = lines
            self._erase()
            self._draw()

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F" + f"{CLEAR_LINE}\n" * self._drawn
                              + f"\x1b[{self._drawn}F")
            self._drawn = 0

    def _draw(self) -> None:
        for line in self._lines:
            self.stream.write(CLEAR_LINE + line + "\n")
        self._drawn = len(self._lines)
        self.stream.flush()

    def hook_logging(self) -> None:
        """Make log records print above the block instead of tearing it."""
        for handler in logging.getLogger().handlers:
            if getattr(handler, "stream", None) is self.stream:
                original = handler.emit

                def emit(record: logging.LogRecord, _orig=original) -> None:
                    with self._lock:
                        self._erase()
                        _orig(record)
                        self._draw()

                handler.emit = emit  # type: ignore[method-assign]
                self._hooked.append(handler)

    def close(self) -> None:
        """Leave the last block on screen and restore log handlers."""
        with self._lock:
            for handler in self._hooked:
                del handler.emit  # back to the class method
            self._hooked.clear()
            self._drawn = 0
            self.stream.flush()
