"""A Node condition of ours, patched only when it changes.

What the condition says is its owner's rule (the agent's ``ImagesPrewarmed``:
agent/condition.py); this module reports it. At thousands of nodes the status write
rate matters, so the reporter patches the node's status subresource (strategic merge:
conditions merge by ``type``, so kubelet's and other agents' conditions are untouched)
only when the status or reason changes, when only the message (counts) changed and
``min_interval_s`` has passed since the last patch, and as a heartbeat every
``heartbeat_s``. After a restart it adopts the condition already on the node, so a
DaemonSet rollout does not rewrite every node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nodeagent import metrics
from nodeagent.log import fields, redact_text

log = logging.getLogger(__name__)

RETRY_MAX_S = 60.0


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False" | "Unknown"
    reason: str  # CamelCase, bounded set
    message: str


@dataclass(frozen=True)
class Reported:
    condition: Condition
    transition_time: str  # RFC 3339, kept while the status stays the same
    at: float  # monotonic time of the patch (or equivalent age when adopted)


def should_patch(last: Reported | None, cond: Condition, now: float, heartbeat_s: float,
                 min_interval_s: float) -> bool:
    """Patch on status/reason change, rate-limited message changes, or heartbeat; pure."""
    if last is None:
        return True
    before = last.condition
    if (before.status, before.reason) != (cond.status, cond.reason):
        return True
    age = now - last.at
    if before.message != cond.message and age >= min_interval_s:
        return True
    return age >= heartbeat_s


def condition_body(condition_type: str, cond: Condition, transition_time: str,
                   heartbeat_time: str) -> dict:
    return {
        "type": condition_type,
        "status": cond.status,
        "reason": cond.reason,
        "message": redact_text(cond.message),  # what the API stores and kubectl shows
        "lastHeartbeatTime": heartbeat_time,
        "lastTransitionTime": transition_time,
    }


def rfc3339(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class NodeConditionReporter:
    """Holds what was last reported and patches the node status when ``should_patch``."""

    def __init__(self, client: Any, node_name: str, condition_type: str, *,
                 heartbeat_s: float = 600.0, min_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, gauge: Any = None) -> None:
        self._client = client
        self._node_name = node_name
        self.condition_type = condition_type
        self.heartbeat_s = heartbeat_s
        self.min_interval_s = min_interval_s
        self._clock = clock
        # 1 while the condition is True (default: the ImagesPrewarmed gauge).
        self._gauge = gauge if gauge is not None else metrics.AGENT_CONDITION_TRUE
        self.last: Reported | None = None
        self.patches = 0
        self._failures = 0
        self._retry_at = 0.0

    def adopt(self, node: Any) -> None:
        """Take over the condition already on the node (first sight after a restart)."""
        if self.last is not None:
            return
        existing = _find_condition(node, self.condition_type)
        if existing is None:
            return
        beat = existing.lastHeartbeatTime
        age = max(0.0, time.time() - beat.timestamp()) if beat else self.heartbeat_s
        transition = existing.lastTransitionTime
        self.last = Reported(
            Condition(existing.status, existing.reason or "", existing.message or ""),
            rfc3339(transition.timestamp()) if transition else rfc3339(),
            self._clock() - age,
        )

    def pending(self, cond: Condition) -> bool:
        if self._clock() < self._retry_at:
            return False  # backing off after a failed patch
        return should_patch(self.last, cond, self._clock(), self.heartbeat_s,
                            self.min_interval_s)

    def next_due(self, cond: Condition) -> float:
        """Seconds until ``cond`` would be patched (rate limit, heartbeat or backoff)."""
        now = self._clock()
        backoff = max(0.0, self._retry_at - now)
        last = self.last
        if last is None or (last.condition.status, last.condition.reason) != (
                cond.status, cond.reason):
            return backoff
        age = now - last.at
        if cond.message != last.condition.message:
            return max(backoff, self.min_interval_s - age)
        return max(backoff, self.heartbeat_s - age)

    async def report(self, cond: Condition) -> bool:
        """Patch if due; True when a patch was sent and accepted."""
        from lightkube.resources.core_v1 import Node
        from lightkube.types import PatchType

        if not self.pending(cond):
            return False
        now_wall = rfc3339()
        last = self.last
        same_status = last is not None and last.condition.status == cond.status
        transition = last.transition_time if same_status and last else now_wall
        body = {"status": {"conditions": [
            condition_body(self.condition_type, cond, transition, now_wall)]}}
        try:
            await self._client.patch(Node.Status, self._node_name, body,
                                     patch_type=PatchType.STRATEGIC)
        except Exception as exc:
            from nodeagent.kube.watch import describe_error

            metrics.AGENT_STATUS_PATCHES.labels(outcome="failed").inc()
            self._failures += 1
            delay = min(RETRY_MAX_S, 0.5 * 2 ** self._failures)
            self._retry_at = self._clock() + delay
            log.warning("cannot patch the node condition; will retry",
                        extra=fields(node=self._node_name, error=describe_error(exc),
                                     retry_in_s=delay))
            return False
        self._failures, self._retry_at = 0, 0.0
        self.last = Reported(cond, transition, self._clock())
        self.patches += 1
        metrics.AGENT_STATUS_PATCHES.labels(outcome="patched").inc()
        self._gauge.set(1 if cond.status == "True" else 0)
        log.info("node condition updated", extra=fields(
            condition=self.condition_type, status=cond.status, reason=cond.reason,
            message=cond.message))
        return True


def _find_condition(node: Any, condition_type: str) -> Any:
    status = getattr(node, "status", None)
    for cond in (getattr(status, "conditions", None) or []):
        if cond.type == condition_type:
            return cond
    return None
