"""Progress of a sync: one ``ModelProgress`` per model, shown live on a terminal (a bar
per model and an overall line, drawn with console.py's LiveDisplay) or as JSON log lines
(one per state change, one every few seconds per downloading model)."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from nodeagent.console import LiveDisplay, bar, fmt_bytes, fmt_duration, fmt_rate
from nodeagent.log import fields

log = logging.getLogger("nodeagent.models")
MARKS = {"present": "✓", "failed": "✗", "skipped": "!", "downloading": "↓", "pending": "·",
         "verifying": "…"}


@dataclass
class ModelProgress:
    name: str
    source: str
    state: str = "pending"  # pending | downloading | present | failed | skipped
    bytes_total: int = 0
    bytes_done: int = 0
    message: str = ""
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n

    @property
    def rate_bps(self) -> float:
        end = self.finished or time.monotonic()
        return self.bytes_done / max(1e-3, end - self.started)


class Reporter(Protocol):
    def update(self, models: Sequence[ModelProgress]) -> None: ...

    def event(self, model: ModelProgress) -> None: ...

    def close(self) -> None: ...


def model_line(m: ModelProgress, width: int) -> str:
    head = f"{MARKS.get(m.state, ' ')} {m.name:<{width}} "
    if m.state == "downloading":
        frac = m.bytes_done / m.bytes_total if m.bytes_total else 1.0
        left = (m.bytes_total - m.bytes_done) / m.rate_bps if m.rate_bps else None
        return (head + f"{bar(frac)} {fmt_bytes(m.bytes_done)}/{fmt_bytes(m.bytes_total)}  "
                f"{fmt_rate(m.rate_bps)}  ETA {fmt_duration(left)}")
    if m.state in ("failed", "skipped"):
        return head + f"{m.state}: {m.message}"
    return head + (m.message or m.state)


class ConsoleReporter:
    def __init__(self, stream: TextIO = sys.stderr):
        self.display = LiveDisplay(stream)
        self.display.hook_logging()
        self._models: Sequence[ModelProgress] = ()

    def update(self, models: Sequence[ModelProgress]) -> None:
        self._models = models
        width = max([12, *(len(m.name) for m in models)])
        cols = shutil.get_terminal_size((120, 24)).columns
        done = sum(m.bytes_done for m in models)
        total = sum(m.bytes_total for m in models)
        active = [m for m in models if m.state == "downloading"]
        overall = f"{sum(m.state == 'present' for m in models)}/{len(models)} present  " \
                  f"{fmt_bytes(done)}/{fmt_bytes(total)}"
        if active:
            overall += f"  {fmt_rate(sum(m.rate_bps for m in active))}"
        lines = [model_line(m, width) for m in models] + [overall]
        self.display.show([line[: cols - 1] for line in lines])

    def event(self, model: ModelProgress) -> None:
        if self._models:
            self.update(self._models)

    def close(self) -> None:
        if self._models:
            self.update(self._models)
        self.display.close()


class LogReporter:
    def __init__(self, interval_s: float = 5.0):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def update(self, models: Sequence[ModelProgress]) -> None:
        now = time.monotonic()
        for m in models:
            if m.state == "downloading" and now - self._last.get(m.name, 0) >= self.interval_s:
                self._last[m.name] = now
                log.info("model progress", extra=fields(
                    model=m.name, bytes_done=m.bytes_done, bytes_total=m.bytes_total,
                    percent=round(100 * m.bytes_done / m.bytes_total, 1) if m.bytes_total
                    else None, mib_per_s=round(m.rate_bps / 2**20, 2)))

    def event(self, m: ModelProgress) -> None:
        self._last[m.name] = time.monotonic()
        level = logging.WARNING if m.state in ("failed", "skipped") else logging.INFO
        log.log(level, f"model {m.state}", extra=fields(
            model=m.name, source=m.source, state=m.state, reason=m.reason or None,
            message=m.message or None, bytes_total=m.bytes_total,
            seconds=round(m.finished - m.started, 2) if m.finished else None))

    def close(self) -> None:
        self._last.clear()


def make_reporter(stream: TextIO = sys.stderr, live: bool | None = None) -> Reporter:
    if live is None:
        live = stream.isatty()
    return ConsoleReporter(stream) if live else LogReporter()
