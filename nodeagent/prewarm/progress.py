"""Real byte progress of CRI pulls, from containerd's content store.

A CRI PullImage call says nothing until it returns, so progress is observed the way
``ctr pull`` does it: poll Content.ListStatuses (active ingests, refs like
``layer-sha256:<hex>`` with the bytes written so far) and Content.Info (is a layer
complete). The layer list and sizes come from the registry manifest
(``registry.resolve_manifest``): an image's progress is the sum of its complete layers
plus the offsets of its layers in flight. A layer shared by two images counts for both.
When the manifest cannot be resolved, progress falls back to the ingests no resolved
image claims, with an unknown total.

``ImageProgress`` is pure bookkeeping (tested without containerd); ``IngestMonitor``
does the polling for every image being pulled and also feeds the bytes-pulled counter
(each layer's bytes counted once, however many images share it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient, IngestStatus

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
DOWNLOADING = "downloading"
UNPACKING = "unpacking"


def ingest_digest(status: IngestStatus) -> str | None:
    """The blob digest an ingest writes: ``expected`` or parsed from its ref."""
    if status.expected:
        return status.expected
    _, sep, digest = status.ref.partition("-")
    return digest if sep and ":" in digest else None


def is_layer_ingest(status: IngestStatus) -> bool:
    return status.ref.startswith("layer-")


@dataclass(frozen=True)
class Observation:
    """One poll's view of the content store, as ImageProgress needs it."""

    inflight: dict[str, int]  # digest -> bytes written so far (active layer ingests)
    totals: dict[str, int]  # digest -> expected total of each active ingest
    unclaimed: frozenset[str]  # in-flight digests no resolved image has


class ImageProgress:
    """Byte progress and stall detection for one image being pulled.

    ``layers`` maps digest -> compressed size (None: manifest not resolved; then the
    total is unknown and unclaimed ingests are attributed to this image).
    """

    def __init__(self, layers: dict[str, int] | None, now: float | None = None):
        now = time.monotonic() if now is None else now
        self.layers = layers
        self.done: set[str] = set()
        self.bytes_done = 0
        self.last_progress = now
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])
        self._seen: dict[str, int] = {}  # unresolved: digest -> bytes seen (max)
        self._totals: dict[str, int] = {}  # unresolved: digest -> ingest total
        self._any_inflight = False
        self.unpacked: int | None = None  # fast path only: bytes written into snapshots

    @property
    def total(self) -> int | None:
        return None if self.layers is None else sum(self.layers.values())

    @property
    def resolved(self) -> bool:
        return self.layers is not None

    def mark_done(self, digests: Sequence[str]) -> None:
        self.done.update(d for d in digests if self.layers is None or d in self.layers)

    def pending_layers(self, inflight: dict[str, int]) -> list[str]:
        """Layers neither complete nor in flight (candidates for a completeness check)."""
        if self.layers is None:
            return []
        return [d for d in self.layers if d not in self.done and d not in inflight]

    def observe(self, obs: Observation, now: float) -> int:
        """Fold one poll in; return bytes done. Progress resets the stall clock."""
        if self.layers is not None:
            active = [d for d in self.layers if d not in self.done and d in obs.inflight]
            done = sum(self.layers[d] for d in self.done)
            done += sum(min(obs.inflight[d], self.layers[d]) for d in active)
        else:
            active = list(obs.unclaimed)
            done = self._observe_unresolved(obs)
        self._any_inflight = bool(active)
        if done > self.bytes_done:
            self.last_progress = now
        self.bytes_done = max(self.bytes_done, done)
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        return self.bytes_done

    def _observe_unresolved(self, obs: Observation) -> int:
        for d in obs.unclaimed:
            self._seen[d] = max(self._seen.get(d, 0), obs.inflight[d])
            if obs.totals.get(d):
                self._totals[d] = obs.totals[d]
        for d in self._seen:
            if d not in obs.inflight:  # finished since the last poll: count it whole
                self._seen[d] = max(self._seen[d], self._totals.get(d, 0))
        return sum(self._seen.values())

    @property
    def phase(self) -> str:
        """downloading, or unpacking once every layer is in the content store."""
        total = self.total
        if total is not None:
            return UNPACKING if self.bytes_done >= total else DOWNLOADING
        return DOWNLOADING if self._any_inflight or not self.bytes_done else UNPACKING

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW_S."""
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self) -> float | None:
        total, rate = self.total, self.rate()
        if total is None or rate <= 0:
            return None
        return max(0.0, (total - self.bytes_done) / rate)

    def stalled(self, now: float, timeout_s: float) -> bool:
        """No byte progress for ``timeout_s`` while still downloading (never while
        containerd unpacks: that has no byte progress and may legitimately take long)."""
        return self.phase == DOWNLOADING and now - self.last_progress > timeout_s

    def advance(self, bytes_done: int, unpacked: int, now: float) -> None:
        """Counters pushed by the fast path, which has no ingests to poll: compressed
        bytes fetched, and uncompressed bytes written into snapshots."""
        if bytes_done > self.bytes_done:
            self.bytes_done = bytes_done
            self.last_progress = now
        self.unpacked = unpacked
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()

    def reset_clock(self, now: float) -> None:
        """A new attempt starts: give it a full stall timeout."""
        self.last_progress = now
        self._samples = deque([(now, self.bytes_done)])


class IngestMonitor:
    """Polls containerd for every tracked image; ``on_bytes`` gets newly pulled bytes
    (deduplicated by layer digest) for the bytes-pulled counter."""

    def __init__(
        self,
        client: ContainerdClient,
        interval_s: float = 1.0,
        recheck_s: float = 5.0,
        on_bytes: Callable[[int], None] | None = None,
    ):
        self.client = client
        self.interval_s = interval_s
        self.recheck_s = recheck_s
        self.on_bytes = on_bytes
        self.images: dict[str, ImageProgress] = {}
        self._credited: dict[str, int] = {}  # digest -> bytes already counted
        self._last_check: dict[str, float] = {}  # digest -> when content_exists said no
        self._prev_inflight: set[str] = set()
        self._totals: dict[str, int] = {}  # digest -> total of the last poll's ingests

    async def track(self, key: str, layers: dict[str, int] | None) -> ImageProgress:
        """Start tracking; layers already in the content store count as done (not pulled)."""
        progress = ImageProgress(layers)
        if layers:
            present = [d for d in layers if await self._exists(d)]
            progress.mark_done(present)
            for d in present:
                self._credited[d] = max(self._credited.get(d, 0), layers[d])
        self.images[key] = progress
        return progress

    def untrack(self, key: str) -> None:
        self.images.pop(key, None)

    async def poll_once(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        ingests = [s for s in await self.client.list_ingests() if is_layer_ingest(s)]
        inflight: dict[str, int] = {}
        totals: dict[str, int] = {}
        for status in ingests:
            digest = ingest_digest(status)
            if digest:
                inflight[digest] = max(inflight.get(digest, 0), status.offset)
                totals[digest] = status.total
        claimed = {d for p in self.images.values() if p.layers for d in p.layers}
        obs = Observation(inflight, totals, frozenset(set(inflight) - claimed))
        finished = self._prev_inflight - set(inflight)
        self._prev_inflight = set(inflight)
        for progress in list(self.images.values()):
            await self._check_complete(progress, inflight, finished, now)
            progress.observe(obs, now)
        self._credit(inflight, totals, finished)

    async def _check_complete(
        self, progress: ImageProgress, inflight: dict[str, int], finished: set[str], now: float
    ) -> None:
        for digest in progress.pending_layers(inflight):
            due = now - self._last_check.get(digest, -1e9) >= self.recheck_s
            if (digest in finished or due) and await self._exists(digest):
                progress.mark_done([digest])
                self._credit_layer(digest, progress.layers[digest] if progress.layers else 0)
            else:
                self._last_check[digest] = now

    def _credit(
        self, inflight: dict[str, int], totals: dict[str, int], finished: set[str]
    ) -> None:
        for digest, offset in inflight.items():
            self._credit_layer(digest, offset)
        for digest in finished:  # done between polls: count its known total
            sizes = [p.layers[digest] for p in self.images.values()
                     if p.layers and digest in p.layers]
            if not sizes and self._totals.get(digest):
                sizes = [self._totals[digest]]
            if sizes:
                self._credit_layer(digest, max(sizes))
        self._totals = dict(totals)

    def _credit_layer(self, digest: str, upto: int) -> None:
        gained = upto - self._credited.get(digest, 0)
        if gained > 0:
            self._credited[digest] = upto
            if self.on_bytes:
                self.on_bytes(gained)

    async def _exists(self, digest: str) -> bool:
        return await self.client.content_exists(digest)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``; containerd being away (restart) only pauses progress."""
        while not stop.is_set():
            if self.images:
                try:
                    await self.poll_once()
                except Exception as exc:  # progress is best effort
                    log.debug("ingest poll failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
