"""Pull slots: at most ``size`` pulls at once; who goes next is plan.pick_next's decision."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nodeagent.prewarm.plan import PullCandidate, pick_next


class PullSlots:
    """``async with slots.slot(key, candidate):`` waits for a free slot.

    Grants are made on the next loop iteration, so pulls spawned together are considered
    together rather than first come, first served.
    """

    def __init__(self, size: int):
        self.size = size
        self.busy: dict[str, dict[str, int]] = {}  # key -> layers of pulls in flight
        self._waiting: list[tuple[str, PullCandidate, asyncio.Future[None]]] = []
        self._scheduled = False

    @contextlib.asynccontextmanager
    async def slot(self, key: str, candidate: PullCandidate) -> AsyncIterator[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, candidate, future))
        self._schedule()
        try:
            await future
        except asyncio.CancelledError:
            self._waiting = [w for w in self._waiting if w[2] is not future]
            if future.done() and not future.cancelled():
                self._release(key)
            raise
        try:
            yield
        finally:
            self._release(key)

    def _release(self, key: str) -> None:
        self.busy.pop(key, None)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._grant)

    def _grant(self) -> None:
        self._scheduled = False
        self._waiting = [w for w in self._waiting if not w[2].done()]
        while self._waiting and len(self.busy) < self.size:
            busy_layers = {d: n for layers in self.busy.values() for d, n in layers.items()}
            index = pick_next([c for _, c, _ in self._waiting], busy_layers)
            key, candidate, future = self._waiting.pop(index)
            self.busy[key] = dict(candidate.layers or {})
            future.set_result(None)
