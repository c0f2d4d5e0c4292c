"""Kubernetes Events on the Node, deduplicated and rate-limited.

Events are what ``kubectl describe node`` shows, so failures a person must act on go
there (pull failed, disk guard skipped an image, startup taint removed on timeout).
They are cheap but not free at thousands of nodes: the same (reason, key) is sent at
most once per ``dedup_s``, and a token bucket (``burst``, one token per ``refill_s``)
bounds the rate per node. Sending never blocks the agent; a failed send is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodeagent import metrics
from nodeagent.log import fields, redact_text

log = logging.getLogger(__name__)

COMPONENT = "nodeagent"
MAX_MESSAGE = 1024


@dataclass
class EventLimiter:
    """Pure dedup + token bucket: ``check(key, now)`` -> sent | deduplicated | rate_limited."""

    dedup_s: float = 600.0
    burst: int = 10
    refill_s: float = 30.0
    _tokens: float = field(default=-1.0, repr=False)
    _refilled_at: float = field(default=0.0, repr=False)
    _sent: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    def check(self, key: tuple[str, str], now: float) -> str:
        if self._tokens < 0:
            self._tokens, self._refilled_at = float(self.burst), now
        self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) / self.refill_s)
        self._refilled_at = now
        last = self._sent.get(key)
        if last is not None and now - last < self.dedup_s:
            return "deduplicated"
        if self._tokens < 1:
            return "rate_limited"
        self._tokens -= 1
        self._sent[key] = now
        if len(self._sent) > 1000:  # forget old keys; bounded memory
            self._sent = {k: t for k, t in self._sent.items() if now - t < self.dedup_s}
        return "sent"


class EventRecorder:
    """Sends core/v1 Events about this node (namespace ``default``, like kubelet's)."""

    def __init__(self, client: Any, node_name: str, *, namespace: str = "default",
                 limiter: EventLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._node_name = node_name
        self._namespace = namespace
        self.limiter = limiter or EventLimiter()
        self._clock = clock
        self.node_uid: str | None = None
        self._tasks: set[asyncio.Task] = set()

    def emit(self, event_type: str, reason: str, message: str, key: str = "") -> str:
        """Queue an Event (``Normal`` or ``Warning``); returns the limiter's verdict."""
        verdict = self.limiter.check((reason, key or message), self._clock())
        if verdict != "sent":
            metrics.AGENT_EVENTS.labels(outcome=verdict).inc()
            return verdict
        task = asyncio.get_running_loop().create_task(
            self._send(event_type, reason, redact_text(message)[:MAX_MESSAGE]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return verdict

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for queued Events, e.g. before exiting."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def _send(self, event_type: str, reason: str, message: str) -> None:
        from lightkube.models.core_v1 import EventSource, ObjectReference
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import Event

        now = datetime.now(UTC).replace(microsecond=0)
        event = Event(
            metadata=ObjectMeta(generateName=f"{self._node_name}.",
                                namespace=self._namespace),
            involvedObject=ObjectReference(kind="Node", apiVersion="v1", name=self._node_name,
                                           uid=self.node_uid or self._node_name),
            reason=reason, message=message, type=event_type, count=1,
            firstTimestamp=now, lastTimestamp=now,
            source=EventSource(component=COMPONENT, host=self._node_name),
            reportingComponent=COMPONENT, reportingInstance=self._node_name,
        )
        try:
            await self._client.create(event, namespace=self._namespace)
        except Exception as exc:
            from nodeagent.kube.watch import describe_error

            metrics.AGENT_EVENTS.labels(outcome="failed").inc()
            log.warning("cannot create Event", extra=fields(reason=reason,
                                                            error=describe_error(exc)))
            return
        metrics.AGENT_EVENTS.labels(outcome="sent").inc()
