"""Which images this node keeps: the HotImageSets whose nodeSelector matches its labels.

``Selection`` parses the cluster's HotImageSet objects (cached by resourceVersion) and
merges the selected sets into the engine's desired list; a malformed object is reported
once per version (log + metric + the condition's note) and skipped, the others still
apply. ``EngineFeed`` is the agent's ProgressReporter: it records the engine's state
changes for Events and wakes the control loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nodeagent import metrics
from nodeagent.api.hotimageset import HotImageSet, parse_hotimageset
from nodeagent.errors import NodeagentError
from nodeagent.log import fields, redact_text
from nodeagent.prewarm.desired import DesiredImage, select_and_merge
from nodeagent.prewarm.state import ImageState

log = logging.getLogger("nodeagent.agent")


class Selection:
    """Parses HotImageSet objects (cached by resourceVersion) and picks this node's images.

    A malformed object is reported once per version (log + metric + condition message)
    and skipped; the others still apply.
    """

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[str, HotImageSet | None]] = {}
        self.invalid: list[str] = []

    def parse(self, objects: Mapping[str, Mapping]) -> list[HotImageSet]:
        valid, invalid, parsed = [], [], {}
        for name, obj in sorted(objects.items()):
            version = (obj.get("metadata") or {}).get("resourceVersion") or ""
            cached = self._parsed.get(name)
            if cached is None or cached[0] != version:
                try:
                    cached = (version, parse_hotimageset(dict(obj), f"HotImageSet {name}"))
                except NodeagentError as exc:
                    log.error("invalid HotImageSet skipped", extra=fields(
                        hotimageset=name, resource_version=version,
                        error=redact_text(str(exc))))
                    cached = (version, None)
            parsed[name] = cached
            if cached[1] is None:
                invalid.append(name)
            else:
                valid.append(cached[1])
        self._parsed, self.invalid = parsed, invalid
        return valid

    def select(self, objects: Mapping[str, Mapping], labels: Mapping[str, str]
               ) -> list[DesiredImage]:
        sets = self.parse(objects)
        selected = sum(1 for s in sets if s.node_selector.matches(labels))
        metrics.AGENT_HOTIMAGESETS.labels(state="selected").set(selected)
        metrics.AGENT_HOTIMAGESETS.labels(state="not_selected").set(len(sets) - selected)
        metrics.AGENT_HOTIMAGESETS.labels(state="invalid").set(len(self.invalid))
        return select_and_merge(sets, labels)


class EngineFeed:
    """The engine's ProgressReporter: wakes the control loop on state changes."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self.changes: list[tuple[str, str, str | None, str]] = []

    def update(self, states: Sequence[ImageState], fs: Any) -> None:
        return  # counts are read from engine.snapshot() when the loop runs

    def event(self, state: ImageState) -> None:
        self.changes.append((state.image, state.state, state.reason, state.message))
        self._wake()

    def close(self) -> None:
        return
