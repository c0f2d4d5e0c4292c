"""prewarm's progress on a terminal or in logs: the two ProgressReporters the CLI uses.

``ConsoleReporter`` draws one bar per image with bytes, rate and ETA, plus an overall
line, in a block redrawn in place (console.LiveDisplay); ``LogReporter`` is its
non-terminal twin: a JSON log line per state change and every few seconds per active
image. ``make_reporter`` picks one. The port they implement, ProgressReporter, is in
prewarm/reporting.py; the agent implements it too.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from nodeagent.console import LiveDisplay, bar, fmt_bytes, fmt_duration, fmt_rate
from nodeagent.log import fields

if TYPE_CHECKING:
    from nodeagent.prewarm.diskguard import FsStatus
    from nodeagent.prewarm.reporting import ProgressReporter
    from nodeagent.prewarm.state import ImageState

log = logging.getLogger("nodeagent.prewarm")

MARKS = {"present": "✓", "failed": "✗", "skipped": "!", "pulling": "↓", "backoff": "↻",
         "pending": "·"}


def image_line(state: ImageState, name_width: int) -> str:
    name = state.image if len(state.image) <= name_width else "…" + state.image[-name_width + 1:]
    head = f"{MARKS.get(state.state, ' ')} {name:<{name_width}} "
    if state.state in ("pulling", "backoff"):
        fraction = state.percent / 100 if state.percent is not None else None
        total = fmt_bytes(state.bytes_total) if state.bytes_total else "?"
        tail = f"{fmt_bytes(state.bytes_done)}/{total}  {fmt_rate(state.rate_bps)}"
        if state.state == "backoff":
            tail += f"  retry {state.attempts}: {state.message}"
        elif state.phase == "unpacking":
            tail += "  unpacking"
        else:
            tail += f"  ETA {fmt_duration(state.eta_s)}"
        if state.bytes_unpacked:
            tail += f"  ({fmt_bytes(state.bytes_unpacked)} unpacked)"
        return head + f"{bar(fraction)} {tail}"
    if state.state == "present":
        pin = ", pinned" if state.pinned else ""
        took = f" in {fmt_duration(state.duration_s)}" if state.duration_s is not None else ""
        return head + f"present{pin}{took}"
    if state.state in ("failed", "skipped"):
        return head + f"{state.state}: {state.message}"
    return head + "waiting"


def overall_line(states: Sequence[ImageState], fs: FsStatus | None) -> str:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    active = [s for s in states if s.state in ("pulling", "backoff")]
    done = sum(s.bytes_done for s in states)
    total = "?" if any(s.bytes_total is None for s in active) else fmt_bytes(
        sum(s.bytes_total or 0 for s in states))
    rate = sum(s.rate_bps for s in active)
    parts = [f"{counts.get('present', 0)}/{len(states)} present"]
    parts += [f"{counts[k]} {k}" for k in ("pulling", "backoff", "pending", "failed", "skipped")
              if counts.get(k)]
    fields = [", ".join(parts), f"{fmt_bytes(done)}/{total}"]
    if active:  # a rate of an idle or finished run would only read as "stuck at 0"
        fields.append(fmt_rate(rate))
    line = "  ".join(fields)
    if fs is not None:
        line += f"  image fs {fs.used_percent:.0f}% of {fmt_bytes(fs.capacity_bytes)}"
    return line


def render(states: Sequence[ImageState], fs: FsStatus | None, width: int) -> list[str]:
    """The whole block: one line per image, then the overall line; each cut to width."""
    name_width = max(12, min(48, max((len(s.image) for s in states), default=12)))
    lines = [image_line(s, name_width) for s in states] + [overall_line(states, fs)]
    return [line[: width - 1] for line in lines]


class ConsoleReporter:
    """Live bars on a terminal, redrawn at most every ``min_interval_s``."""

    def __init__(self, stream: TextIO = sys.stderr, min_interval_s: float = 0.25):
        self.display = LiveDisplay(stream)
        self.display.hook_logging()
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._states: Sequence[ImageState] = ()
        self._fs: FsStatus | None = None
        self._closed = False

    def update(self, states: Sequence[ImageState], fs: FsStatus | None) -> None:
        if self._closed:
            return
        self._states, self._fs = states, fs
        now = time.monotonic()
        if now - self._last >= self.min_interval_s:
            self._last = now
            self._redraw()

    def event(self, state: ImageState) -> None:
        if self._states and not self._closed:
            self._redraw()

    def _redraw(self) -> None:
        width = shutil.get_terminal_size((120, 24)).columns
        self.display.show(render(self._states, self._fs, width))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._states:
            self._redraw()
        self.display.close()


class LogReporter:
    """Structured log lines: every state change, and progress of each active image every
    ``interval_s`` seconds."""

    def __init__(self, interval_s: float = 5.0):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def update(self, states: Sequence[ImageState], fs: FsStatus | None) -> None:
        now = time.monotonic()
        for s in states:
            if s.state != "pulling":
                continue
            last = self._last.get(s.image)
            if last is None or now - last >= self.interval_s:
                self._last[s.image] = now
                log.info("pull progress", extra=fields(
                    image=s.image, phase=s.phase, bytes_done=s.bytes_done,
                    bytes_total=s.bytes_total, bytes_unpacked=s.bytes_unpacked,
                    percent=None if s.percent is None else round(s.percent, 1),
                    mib_per_s=round(s.rate_bps / 2**20, 2),
                    eta_s=None if s.eta_s is None else round(s.eta_s),
                    attempt=s.attempts))

    def event(self, state: ImageState) -> None:
        self._last[state.image] = time.monotonic()
        level = logging.WARNING if state.state in ("failed", "skipped", "backoff") else (
            logging.INFO)
        log.log(level, f"image {state.state}", extra=fields(
            image=state.image, state=state.state, reason=state.reason,
            message=state.message or None, digest=state.digest, pinned=state.pinned,
            bytes_total=state.bytes_total, attempt=state.attempts, path=state.pull_path,
            duration_s=None if state.duration_s is None else round(state.duration_s, 2)))

    def close(self) -> None:
        self._last.clear()


def make_reporter(stream: TextIO = sys.stderr, live: bool | None = None) -> ProgressReporter:
    """Live bars when ``stream`` is a terminal (or ``live``), JSON log lines otherwise."""
    if live is None:
        live = stream.isatty()
    return ConsoleReporter(stream) if live else LogReporter()
