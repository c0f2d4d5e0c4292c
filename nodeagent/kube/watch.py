"""A local copy of Kubernetes objects kept current by list + watch (an informer, small).

``Mirror`` works for any lightkube resource, in one of two modes:

- collection (``name=None``): LIST gives the full set and a resourceVersion, then WATCH
  from it. A 410 Gone (the version fell out of the server's history) re-lists, so
  deletions missed while disconnected are noticed.
- one named object (``name="node-1"``): GET, then WATCH with
  ``fieldSelector=metadata.name=<name>`` and no resourceVersion (the server starts with
  a synthetic ADDED of the current object). Watching from the object's own version
  would 410 forever for an object that has not changed in a long time.

Every watch request asks the server to end it after ``timeoutSeconds`` (random in a
window, so thousands of nodes do not reconnect in step) and the client gives up slightly
earlier, which also bounds how long a silently dead connection goes unnoticed. Dropped
connections resume from the last seen resourceVersion without re-listing; errors back
off exponentially with jitter. ``on_change`` is called after every change, from the
event loop, and must be cheap (it typically sets an asyncio.Event).

``optional=True`` is for a resource the cluster may not serve (a newer CRD not installed
yet) or this agent may not be allowed to read (RBAC not updated): a 404 or 403 on the
list counts as "no objects" (synced, so the agent is not held up waiting for it), is
logged once with what to do, and the list is retried every ``optional_retry_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nodeagent import metrics
from nodeagent.log import fields

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Exponential backoff with full jitter on the upper half (``delay()`` then ``reset()``)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    _current: float = field(default=0.0, repr=False)

    def delay(self) -> float:
        self._current = min(self.max_s, self._current * self.factor if self._current
                            else self.initial_s)
        return random.uniform(self._current / 2, self._current)

    def reset(self) -> None:
        self._current = 0.0


@dataclass(frozen=True)
class WatchTiming:
    """How long one watch request lives: server-side window and client-side margin."""

    min_s: float = 300.0
    max_s: float = 600.0
    client_margin_s: float = 30.0

    def pick(self) -> tuple[int, float]:
        """(timeoutSeconds sent to the server, seconds after which the client ends it)."""
        client = random.uniform(self.min_s, self.max_s)
        return int(client + self.client_margin_s), client


def is_gone(exc: BaseException) -> bool:
    """410: the resourceVersion is too old (ERROR event or HTTP status)."""
    from lightkube import ApiError

    if isinstance(exc, ApiError):
        return getattr(exc.status, "code", None) == 410
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 410


def describe_error(exc: BaseException) -> str:
    """Short, secret-free description of an API/transport error for logs."""
    from lightkube import ApiError

    if isinstance(exc, ApiError):
        return f"API error {exc.status.code}: {exc.status.message}"
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _status_code(exc: BaseException) -> int | None:
    from lightkube import ApiError

    if isinstance(exc, ApiError):
        return getattr(exc.status, "code", None)
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def object_key(obj: Any) -> str:
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


class Mirror:
    """Keep ``items`` (key -> object) equal to the server's state; see module doc."""

    def __init__(
        self,
        client: Any,
        resource: type,
        *,
        on_change: Callable[[], None],
        name: str | None = None,
        namespace: str | None = None,
        backoff: Backoff | None = None,
        timing: WatchTiming | None = None,
        label: str | None = None,
        optional: bool = False,
        optional_retry_s: float = 300.0,
    ) -> None:
        self._client = client
        self._res = resource
        self._on_change = on_change
        self._name = name
        self._namespace = namespace
        self._backoff = backoff or Backoff()
        self._timing = timing or WatchTiming()
        self.label = label or resource.__name__
        self._optional, self._optional_retry_s = optional, optional_retry_s
        self.unavailable: int | None = None  # 404/403 of an optional resource
        self.items: dict[str, Any] = {}
        self.synced = asyncio.Event()
        self.connected = False
        self.relists = 0
        self.errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or the task is cancelled); never leaves a task behind."""
        worker = asyncio.ensure_future(self._run_once())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if worker.done():
                worker.result()  # an unexpected error: let the caller see it
        finally:
            for task in (worker, stopper):
                task.cancel()
            await asyncio.gather(worker, stopper, return_exceptions=True)

    async def _run_once(self) -> None:
        rv: str | None = None
        need_sync = True
        while True:
            try:
                if need_sync:
                    rv = await self._sync()
                    need_sync = False
                rv = await self._watch(rv)
                self._backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                if is_gone(exc):
                    self.relists += 1
                    metrics.KUBE_WATCH_RELISTS.labels(resource=self.label).inc()
                    log.info("watch expired (410 Gone): re-listing",
                             extra=fields(resource=self.label))
                    need_sync = True
                    await asyncio.sleep(random.uniform(0, 0.2))
                    continue
                if self._optional and _status_code(exc) in (403, 404):
                    self._absent(_status_code(exc))
                    need_sync = True
                    await asyncio.sleep(self._optional_retry_s)
                    continue
                self.errors += 1
                metrics.KUBE_API_ERRORS.labels(resource=self.label).inc()
                delay = self._backoff.delay()
                log.warning("Kubernetes API unavailable; retrying",
                            extra=fields(resource=self.label, error=describe_error(exc),
                                         retry_in_s=round(delay, 2)))
                await asyncio.sleep(delay)

    def _absent(self, code: int | None) -> None:
        """An optional resource the server does not serve (404) or we may not read (403)."""
        if self.unavailable != code:
            why = ("the API server does not serve it: apply its CustomResourceDefinition "
                   "(daemonset/crd.yaml)" if code == 404 else "forbidden: the agent's "
                   "ClusterRole needs list and watch on it (daemonset/rbac.yaml)")
            (log.info if code == 404 else log.warning)(
                "resource unavailable; treating it as empty and checking again later",
                extra=fields(resource=self.label, why=why,
                             retry_in_s=self._optional_retry_s))
        self.unavailable = code
        self._replace({})

    async def _sync(self) -> str | None:
        """Replace ``items`` with the server's state; return the version to watch from."""
        if self._name is not None:
            return await self._sync_named()
        listing = self._client.list(self._res, namespace=self._namespace)
        items = {object_key(obj): obj async for obj in listing}
        self.unavailable = None
        self._replace(items)
        return _list_version(listing)

    async def _sync_named(self) -> str | None:
        from lightkube import ApiError

        try:
            obj = await self._client.get(self._res, self._name, namespace=self._namespace) \
                if self._namespace else await self._client.get(self._res, self._name)
            items = {object_key(obj): obj}
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            items = {}
        self._replace(items)
        return None  # watch from "now": the synthetic ADDED repeats the current object

    def _replace(self, items: dict[str, Any]) -> None:
        # The first sync is news even when the list is empty: "no HotImageSets" is a
        # selection the agent acts on (it must not wait for its next timer to see it).
        changed = not self.synced.is_set() or _versions(items) != _versions(self.items)
        self.items = items
        self.connected = True
        self.synced.set()
        if changed:
            self._on_change()

    async def _watch(self, rv: str | None) -> str | None:
        server_timeout, client_timeout = self._timing.pick()
        kwargs: dict[str, Any] = {"server_timeout": server_timeout, "resource_version": rv}
        if self._namespace:
            kwargs["namespace"] = self._namespace
        if self._name is not None:
            kwargs["fields"] = {"metadata.name": self._name}
        # A TimeoutError is our own end of this watch request: the next one starts from rv.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(client_timeout):
                async for event_type, obj in self._client.watch(self._res, **kwargs):
                    self.connected = True
                    rv = obj.metadata.resourceVersion or rv
                    if event_type != "BOOKMARK":
                        self._apply(event_type, obj)
                    self._backoff.reset()
        return rv

    def _apply(self, event_type: str, obj: Any) -> None:
        key = object_key(obj)
        if event_type == "DELETED":
            if self.items.pop(key, None) is None:
                return
        else:
            old = self.items.get(key)
            if old is not None and old.metadata.resourceVersion == obj.metadata.resourceVersion:
                return  # the synthetic ADDED after a reconnect: nothing new
            self.items[key] = obj
        self._on_change()


def _list_version(listing: Any) -> str | None:
    from lightkube import NotReadyError

    try:
        return listing.resourceVersion
    except NotReadyError:  # the server sent no list version: watch from "now"
        return None


def _versions(items: dict[str, Any]) -> dict[str, str | None]:
    return {key: obj.metadata.resourceVersion for key, obj in items.items()}
