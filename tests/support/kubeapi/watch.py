"""Watch fan-out: one ``Watcher`` per open watch, fed by the store's routing, and the
stream of events a watch sends (initial ADDED events or history from a resourceVersion,
BOOKMARKs, 410 Gone past the compacted history, ``timeoutSeconds`` expiry)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

from .kinds import Kind
from .recording import Request
from .selectors import Selector
from .status import status_body
from .store import Event, Store


class Watcher:
    """One open watch: the store appends matching events; its thread waits on ``wake``."""

    def __init__(self, store: Store, kind: Kind, namespace: str, selector: Selector) -> None:
        self.kind, self.namespace, self.selector = kind, namespace, selector
        self.pending: deque[Event] = deque()
        self.wake = threading.Condition(store.lock)

    def wants(self, event: Event) -> bool:
        if self.namespace and event.obj["metadata"].get("namespace", "") != self.namespace:
            return False
        return self.selector.matches(event.obj)


class WatchApi:
    """The double's watch streams and their settings (``bookmark_interval_s``, and
    ``watch_gone_as_http`` to answer a too-old resourceVersion with an HTTP 410)."""

    store: Store

    def __init__(self) -> None:
        self.watch_gone_as_http = False
        self.bookmark_interval_s = 1.0
        self._generation = 0  # bumped to end all open watch streams abruptly

    def end_watches(self) -> None:
        """Every open watch stream ends abruptly (its connection is being cut)."""
        with self.store.lock:
            self._generation += 1
            self.store.wake_all()

    def watch_events(self, req: Request, kind: Kind) -> Iterator[dict | Event | None]:
        """Yield watch events (dicts or recorded events), None when idle; ends at
        timeoutSeconds. Writes are routed to this watch by the store (no scanning)."""
        timeout = float(req.params.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        bookmarks = req.params.get("allowWatchBookmarks") == "true"
        rv_param = req.params.get("resourceVersion", "")
        selector = Selector.parse(req.params)
        watcher = Watcher(self.store, kind, req.namespace, selector)
        with self.store.lock:
            generation = self._generation
            if rv_param in ("", "0"):
                first: list[dict | Event] = [
                    {"type": "ADDED", "object": o}
                    for o in self.store.items(kind, req.namespace, selector)]
            elif int(rv_param) < self.store.compacted_rv:
                gone = status_body(410, "Expired", f"too old resource version: {rv_param} "
                                   f"({self.store.compacted_rv})")
                yield {"type": "ERROR", "object": gone}
                return
            else:
                first = [ev for ev in self.store.events_after(kind, int(rv_param))
                         if watcher.wants(ev)]
            self.store.watchers.setdefault(kind, set()).add(watcher)
        try:
            yield from first
            yield None  # flush: the initial events go out together
            last_bookmark = time.monotonic()
            while True:
                with self.store.lock:
                    if self._generation != generation:
                        raise ConnectionAbortedError("connections dropped")
                    if not watcher.pending:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        watcher.wake.wait(min(remaining, self.bookmark_interval_s
                                              if bookmarks else 5.0))
                        if self._generation != generation:
                            raise ConnectionAbortedError("connections dropped")
                    batch = list(watcher.pending)
                    watcher.pending.clear()
                    if bookmarks and not batch \
                            and time.monotonic() - last_bookmark >= self.bookmark_interval_s:
                        last_bookmark = time.monotonic()
                        batch = [{"type": "BOOKMARK", "object": {
                            "kind": kind.kind, "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": str(self.store.rv)}}}]
                yield from batch
                yield None  # flush what came together
        finally:
            with self.store.lock:
                self.store.watchers.get(kind, set()).discard(watcher)
