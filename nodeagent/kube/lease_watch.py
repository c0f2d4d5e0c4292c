"""Leases selected by labels, kept current by one watch (an informer for the rollout queue).

Two ways to start, both ending in a watch that resumes from the last resourceVersion
after a dropped connection and backs off with jitter on errors:

- ``from_list=True`` (the coordinator): LIST once, then WATCH from the list's version;
  410 Gone re-lists.
- ``from_list=False`` (a waiting node): WATCH without a resourceVersion, so the server
  first sends the current objects as ADDED events (no LIST request); 410 Gone starts
  over the same way. ``started_at`` tells when the current view began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from nodeagent.kube.watch import Backoff, WatchTiming, describe_error, is_gone
from nodeagent.log import fields

log = logging.getLogger(__name__)


class LeaseWatch:
    def __init__(self, client: Any, namespace: str, labels: dict[str, Any], *,
                 on_change: Callable[[], None], from_list: bool,
                 backoff: Backoff | None = None, timing: WatchTiming | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._namespace = namespace
        self._labels = labels
        self._on_change = on_change
        self._from_list = from_list
        self._backoff = backoff or Backoff()
        self._timing = timing or WatchTiming()
        self._clock = clock
        self.items: dict[str, Any] = {}
        self.synced = asyncio.Event()  # from_list: the first LIST is in
        self.started_at = clock()
        self.errors = 0

    async def run(self) -> None:
        """Keep ``items`` current until cancelled."""
        rv: str | None = None
        fresh = True
        while True:
            try:
                if fresh:
                    rv = await self._start()
                    fresh = False
                rv = await self._watch(rv)
                self._backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_gone(exc):
                    log.info("rollout watch expired (410 Gone): starting over")
                    fresh, rv = True, None
                    await asyncio.sleep(random.uniform(0, 0.2))
                    continue
                self.errors += 1
                delay = self._backoff.delay()
                log.warning("rollout watch: Kubernetes API unavailable; retrying",
                            extra=fields(error=describe_error(exc), retry_in_s=round(delay, 2)))
                await asyncio.sleep(delay)

    async def _start(self) -> str | None:
        from lightkube.resources.coordination_v1 import Lease

        self.started_at = self._clock()
        if not self._from_list:
            self.items = {}  # the watch's first events rebuild the view
            self._on_change()
            return None
        listing = self._client.list(Lease, namespace=self._namespace, labels=self._labels)
        self.items = {lease.metadata.name: lease async for lease in listing}
        self.synced.set()
        self._on_change()
        return _list_version(listing)

    async def _watch(self, rv: str | None) -> str | None:
        from lightkube.resources.coordination_v1 import Lease

        server_timeout, client_timeout = self._timing.pick()
        # A TimeoutError is our own end of this watch request: the next one starts from rv.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(client_timeout):
                async for event_type, lease in self._client.watch(
                        Lease, namespace=self._namespace, labels=self._labels,
                        server_timeout=server_timeout, resource_version=rv):
                    rv = lease.metadata.resourceVersion or rv
                    if event_type != "BOOKMARK":
                        self._apply(event_type, lease)
                    self._backoff.reset()
        return rv

    def _apply(self, event_type: str, lease: Any) -> None:
        name = lease.metadata.name
        if event_type == "DELETED":
            if self.items.pop(name, None) is None:
                return
        else:
            old = self.items.get(name)
            if old is not None and old.metadata.resourceVersion == lease.metadata.resourceVersion:
                return
            self.items[name] = lease
        self._on_change()


def _list_version(listing: Any) -> str | None:
    from lightkube import NotReadyError

    try:
        return listing.resourceVersion
    except NotReadyError:
        return None
