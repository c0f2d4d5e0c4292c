"""The startup taint: removed once the node is ready for workloads, or at a timeout.

A node group (or Karpenter ``startupTaints``) registers the node with a taint such as
``nodeagent.io/not-ready:NoSchedule``; the agent removes it when local storage is set
up and every hot image flagged ``required`` is present, or after ``timeout_s`` anyway
(saying why), so a broken registry cannot keep a node out of service forever.

Removal is a JSON patch that first ``test``s the exact taint at its index and then
``remove``s it: a concurrent taint change (another controller adding or removing one)
makes the test fail (422) or the write conflict (409), and the agent re-reads the node
and retries. It never rewrites the whole list, so nobody else's taint is lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.errors import UsageError
from nodeagent.log import fields

log = logging.getLogger(__name__)

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class TaintSpec:
    """Which taint is the startup taint: key, and optionally value and effect."""

    key: str
    effect: str | None = None
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> TaintSpec:
        """kubectl syntax: ``key[=value][:Effect]``, e.g. ``nodeagent.io/not-ready:NoSchedule``."""
        body, _, effect = text.partition(":")
        key, has_value, value = body.partition("=")
        if not _KEY.match(key) or len(key) > 316:
            raise UsageError(f"startup taint {text!r}: key {key!r} is not a valid label key "
                             "(e.g. nodeagent.io/not-ready)")
        if effect and effect not in EFFECTS:
            raise UsageError(f"startup taint {text!r}: effect {effect!r} must be one of "
                             f"{', '.join(EFFECTS)}")
        return cls(key, effect or None, value if has_value else None)

    def matches(self, taint: dict) -> bool:
        if taint.get("key") != self.key:
            return False
        if self.effect is not None and taint.get("effect") != self.effect:
            return False
        return self.value is None or (taint.get("value") or "") == self.value

    def __str__(self) -> str:
        text = self.key + (f"={self.value}" if self.value is not None else "")
        return text + (f":{self.effect}" if self.effect else "")


def taint_dicts(node: Any) -> list[dict]:
    """The node's taints as JSON-ready dicts, exactly as the server serializes them."""
    spec = getattr(node, "spec", None)
    return [t.to_dict() for t in (getattr(spec, "taints", None) or [])]


def has_taint(taints: Iterable[dict], spec: TaintSpec) -> bool:
    return any(spec.matches(t) for t in taints)


def removal_patch(taints: Sequence[dict], spec: TaintSpec) -> list[dict] | None:
    """JSON patch removing every matching taint (highest index first), or None if absent."""
    ops: list[dict] = []
    for index in reversed(range(len(taints))):
        if spec.matches(taints[index]):
            path = f"/spec/taints/{index}"
            ops += [{"op": "test", "path": path, "value": taints[index]},
                    {"op": "remove", "path": path}]
    return ops or None


@dataclass(frozen=True)
class TaintDecision:
    remove: bool
    why: str | None  # "ready" | "timeout"
    message: str


def decide(storage_ready: bool, required_missing: Sequence[str], elapsed_s: float,
           timeout_s: float, waiting_for_images: bool = True,
           required_models_missing: Sequence[str] = (),
           waiting_for_models: bool = False) -> TaintDecision:
    """Whether to remove the startup taint now; pure.

    ``waiting_for_images`` is False until the agent knows the node's hot list (so an
    empty list seen before the first sync does not count as "all present");
    ``waiting_for_models`` likewise for the node's model list.
    """
    blockers = []
    if not storage_ready:
        blockers.append("local storage is not set up")
    if waiting_for_images:
        blockers.append("the hot list is not known yet")
    elif required_missing:
        blockers.append(f"required images missing: {_some(required_missing)}")
    if waiting_for_models:
        blockers.append("the model list is not known yet")
    elif required_models_missing:
        blockers.append(f"required models missing: {_some(required_models_missing)}")
    if not blockers:
        return TaintDecision(True, "ready", "local storage ready and required hot images "
                             "and models present")
    if elapsed_s >= timeout_s:
        return TaintDecision(True, "timeout", f"timed out after {timeout_s:g}s: "
                             + "; ".join(blockers))
    return TaintDecision(False, None, "; ".join(blockers))


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


class ConflictRetriesExhausted(Exception):
    pass


async def remove_taint(client: Any, node_name: str, spec: TaintSpec, attempts: int = 8
                       ) -> bool:
    """Remove ``spec`` from the node; False if it was not there. Retries on conflicts."""
    from lightkube import ApiError
    from lightkube.resources.core_v1 import Node
    from lightkube.types import PatchType

    for attempt in range(attempts):
        node = await client.get(Node, node_name)
        patch = removal_patch(taint_dicts(node), spec)
        if patch is None:
            return False
        try:
            await client.patch(Node, node_name, patch, patch_type=PatchType.JSON)
            return True
        except ApiError as exc:
            if exc.status.code not in (409, 422):
                raise
            log.info("taints changed concurrently; re-reading the node",
                     extra=fields(node=node_name, attempt=attempt + 1))
            await asyncio.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise ConflictRetriesExhausted(f"taints of node {node_name} kept changing; gave up after "
                                   f"{attempts} attempts")
