"""The object store: objects, the global resourceVersion, the compacted history of changes,
and the routing of each change to the open watches that want it."""

from __future__ import annotations

import bisect
import copy
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .kinds import Kind

if TYPE_CHECKING:
    from .selectors import Selector
    from .watch import Watcher


@dataclass
class Event:
    rv: int
    kind: Kind
    type: str
    obj: dict
    _line: bytes | None = None

    def line(self) -> bytes:
        """The event as one watch-stream line, encoded once for every watcher."""
        if self._line is None:
            self._line = json.dumps({"type": self.type, "object": self.obj}).encode() + b"\n"
        return self._line


class Store:
    """Objects + history of changes, guarded by one lock; watchers are woken by routing."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.objects: dict[tuple[Kind, str, str], dict] = {}
        self.history: list[Event] = []
        self.history_rvs: list[int] = []
        self.rv = 100
        self.compacted_rv = 100
        self.max_history = 10_000
        self.watchers: dict[Kind, set[Watcher]] = {}

    def _record(self, kind: Kind, event_type: str, obj: dict) -> None:
        event = Event(self.rv, kind, event_type, copy.deepcopy(obj))
        self.history.append(event)
        self.history_rvs.append(event.rv)
        if len(self.history) > self.max_history:
            cut = len(self.history) - self.max_history
            self.compacted_rv = self.history[cut - 1].rv
            del self.history[:cut]
            del self.history_rvs[:cut]
        for watcher in self.watchers.get(kind, ()):
            if watcher.wants(event):
                watcher.pending.append(event)
                watcher.wake.notify()

    def events_after(self, kind: Kind, rv: int) -> list[Event]:
        """Recorded events of ``kind`` newer than ``rv`` (a watch resuming from it)."""
        start = bisect.bisect_right(self.history_rvs, rv)
        return [ev for ev in self.history[start:] if ev.kind == kind]

    def wake_all(self) -> None:
        for watchers in self.watchers.values():
            for watcher in watchers:
                watcher.wake.notify()

    def write(self, kind: Kind, obj: dict, event_type: str) -> dict:
        """Store ``obj`` at a new resourceVersion; record the event. Caller holds lock."""
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        key = (kind, meta.get("namespace", ""), meta["name"])
        if event_type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._record(kind, event_type, obj)
        return copy.deepcopy(obj)

    def items(self, kind: Kind, namespace: str, selector: Selector | None = None) -> list[dict]:
        """Copies of the stored objects (sorted by namespace and name), selected first."""
        chosen = [((ns, name), o) for (k, ns, name), o in self.objects.items()
                  if k == kind and (not namespace or ns == namespace)
                  and (selector is None or selector.matches(o))]
        return [copy.deepcopy(o) for _, o in sorted(chosen, key=lambda kv: kv[0])]

    def compact(self) -> None:
        with self.lock:
            self.compacted_rv = self.rv
            self.history.clear()
            self.history_rvs.clear()
