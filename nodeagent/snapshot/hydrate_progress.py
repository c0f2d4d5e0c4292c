"""Hydration progress: one live line on a terminal, a JSON log line every few seconds
otherwise. Called from the reader threads, so state changes happen under a lock."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time

from nodeagent.console import LiveDisplay, bar, fmt_bytes, fmt_duration, fmt_rate
from nodeagent.log import fields
from nodeagent.snapshot.hydrate_read import HydrateProgress, ReadItem, ReadStats

log = logging.getLogger("nodeagent.snapshot.hydrate")


class _Tracker(HydrateProgress):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.name, self.total, self.done_bytes, self.owner = "", 0, 0, ""
        self.started_at = time.monotonic()

    def phase(self, name: str, total_bytes: int, files: int) -> None:
        with self.lock:
            self.name, self.total, self.done_bytes = name, total_bytes, 0
            self.started_at = time.monotonic()
        log.info("hydration phase started", extra=fields(
            phase=name, files=files, bytes_total=total_bytes))

    def started(self, item: ReadItem) -> None:
        self.owner = item.owner

    def read(self, n: int) -> None:
        with self.lock:
            self.done_bytes += n
        self.tick()

    def tick(self) -> None: ...

    def done(self, name: str, stats: ReadStats) -> None:
        self.tick()

    def close(self) -> None: ...

    def numbers(self) -> tuple[float | None, float, float | None]:
        """(fraction, rate, eta)."""
        elapsed = max(time.monotonic() - self.started_at, 1e-6)
        rate = self.done_bytes / elapsed
        fraction = self.done_bytes / self.total if self.total else None
        eta = (self.total - self.done_bytes) / rate if self.total and rate > 0 else None
        return fraction, rate, eta


class LiveHydrateProgress(_Tracker):
    def __init__(self, min_interval_s: float = 0.25) -> None:
        super().__init__()
        self.display = LiveDisplay(sys.stderr)
        self.display.hook_logging()
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return
        self._last = now
        with self.lock:
            fraction, rate, eta = self.numbers()
            total = fmt_bytes(self.total) if self.total else "?"
            line = (f"hydrate {self.name:<6} {bar(fraction)} {fmt_bytes(self.done_bytes)}/"
                    f"{total}  {fmt_rate(rate)}  ETA {fmt_duration(eta)}  {self.owner}")
        width = shutil.get_terminal_size((120, 24)).columns
        self.display.show([line[: width - 1]])

    def done(self, name: str, stats: ReadStats) -> None:
        self._last = 0.0
        self.tick()

    def close(self) -> None:
        self.display.close()


class LogHydrateProgress(_Tracker):
    def __init__(self, interval_s: float = 5.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        with self.lock:
            fraction, rate, eta = self.numbers()
            log.info("hydration progress", extra=fields(
                phase=self.name, bytes_done=self.done_bytes, bytes_total=self.total,
                percent=None if fraction is None else round(fraction * 100, 1),
                mib_per_s=round(rate / 2**20, 1), eta_s=None if eta is None else round(eta),
                current=self.owner))


def make_progress(live: bool) -> _Tracker:
    return LiveHydrateProgress() if live else LogHydrateProgress()
