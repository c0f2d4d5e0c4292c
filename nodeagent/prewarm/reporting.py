"""The engine's progress port, and the ticker that feeds it.

``ProgressReporter`` is what a caller implements to follow the engine: ``update(states,
fs)`` about once a second and on every state change, ``event(state)`` on each state
change, ``close()`` at the end. The CLI's implementations draw bars or log JSON lines
(prewarm/display.py); the agent's wakes its control loop (Node condition, Events).

``ProgressTicker`` runs while the engine works: it polls containerd's ingests, folds the
bytes into the pulling images' states, re-measures the image filesystem now and then,
and publishes (metrics gauges, then ``reporter.update``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from nodeagent import metrics
from nodeagent.prewarm.state import PRESENT, PULLING

if TYPE_CHECKING:
    from nodeagent.prewarm.diskguard import DiskGuard, FsStatus
    from nodeagent.prewarm.progress import IngestMonitor
    from nodeagent.prewarm.state import ImageState

log = logging.getLogger(__name__)

FS_EVERY_S = 10.0  # the filesystem changes slowly; statvfs each tick would be waste


class ProgressReporter(Protocol):
    """What the prewarm engine reports to (about once a second, and on state changes)."""

    def update(self, states: Sequence[ImageState], fs: FsStatus | None) -> None: ...

    def event(self, state: ImageState) -> None: ...

    def close(self) -> None: ...


class ProgressTicker:
    """Ticks every ``interval_s`` while at least one user holds ``running()``."""

    def __init__(self, states: Callable[[], Mapping[str, ImageState]], monitor: IngestMonitor,
                 guard: DiskGuard, reporter: ProgressReporter | None, interval_s: float):
        self._states = states
        self.monitor = monitor
        self.guard = guard
        self.reporter = reporter
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._users = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._users += 1
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="prewarm-progress")
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None

    async def _loop(self) -> None:
        last_fs = 0.0
        while True:
            await asyncio.sleep(self.interval_s)
            if self.monitor.images:
                try:
                    await self.monitor.poll_once()
                except Exception as exc:  # containerd away: progress just pauses
                    log.debug("progress poll failed: %s", exc)
            self._fold()
            if time.monotonic() - last_fs > FS_EVERY_S:
                last_fs = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.guard.measure()
            self.publish()

    def _fold(self) -> None:
        states = self._states()
        for key, progress in self.monitor.images.items():
            state = states.get(key)
            if state is None or state.state != PULLING:
                continue
            state.bytes_done = progress.bytes_done
            state.bytes_total = progress.total
            state.rate_bps = progress.rate()
            state.eta_s = progress.eta()
            state.bytes_unpacked = progress.unpacked
            if state.phase != "resolving":
                state.phase = progress.phase

    def publish(self) -> None:
        """Metrics gauges and the reporter's update, from the current states."""
        states = list(self._states().values())
        metrics.set_image_states(s.state for s in states)
        metrics.PREWARM_PINNED_IMAGES.set(sum(1 for s in states if s.state == PRESENT
                                              and s.pinned))
        if self.reporter:
            self.reporter.update(states, self.guard.fs)
