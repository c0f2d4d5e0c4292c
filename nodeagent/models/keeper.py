"""Keep a changing list of models synced, from a thread: what the agent (and `models
prewarm --watch-file`) runs.

``sync`` is one blocking pass over a fixed list. ``ModelKeeper`` runs passes in its own
thread: one as soon as the list changes, one every ``resync_s`` (new object versions, a
model deleted by hand), and after a failure again with backoff. A pass is interrupted
(its partial downloads are kept and resume) only when a model it is downloading left the
list or changed source; any other change waits for the pass to end, so a long download
is never restarted for an unrelated edit. States per model are kept for the caller's
status (``states()``), and every state change is queued (``take_changes()``) and
signalled through ``on_change``, which may be called from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from nodeagent import metrics
from nodeagent.errors import NodeagentError
from nodeagent.log import fields, redact_text
from nodeagent.models.engine import SyncResult, sync
from nodeagent.models.options import SyncOptions
from nodeagent.models.progress import LogReporter, ModelProgress, Reporter
from nodeagent.models.spec import ModelSpec

log = logging.getLogger("nodeagent.models")

PENDING, DOWNLOADING, PRESENT, FAILED, SKIPPED = (
    "pending", "downloading", "present", "failed", "skipped")


@dataclass(frozen=True)
class ModelState:
    name: str
    source: str
    required: bool
    state: str = PENDING  # pending | downloading | present | failed | skipped
    reason: str = ""  # a failure reason (metrics label), when failed or skipped
    message: str = ""
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True)
class Change:
    name: str
    state: str
    reason: str
    message: str


class ModelKeeper:
    def __init__(self, options: SyncOptions, on_change: Callable[[], None] = lambda: None,
                 *, resync_s: float = 600.0, retry_initial_s: float = 30.0,
                 retry_max_s: float = 600.0,
                 reporter: Callable[[], Reporter] = LogReporter) -> None:
        self.options = options
        self.on_change = on_change
        self.resync_s, self.retry_initial_s, self.retry_max_s = (
            resync_s, retry_initial_s, retry_max_s)
        self._make_reporter = reporter
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._desired: list[ModelSpec] | None = None
        self._states: dict[str, ModelState] = {}
        self._changes: list[Change] = []
        self._running: dict[str, str] = {}  # name -> source of the pass in flight
        self._pass_stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self.problem: str | None = None  # the cache cannot be used (bad dir, locked)
        self.passes = 0
        self.last: SyncResult | None = None

    # ------------------------------------------------------------------ the caller's side
    def set_desired(self, specs: Sequence[ModelSpec]) -> None:
        wanted = list(specs)
        with self._lock:
            if wanted == self._desired:
                return
            self._desired = wanted
            now = {s.name: s for s in wanted}
            self._states = {s.name: self._carry(self._states.get(s.name), s) for s in wanted}
            metrics.set_model_states(s.state for s in self._states.values())
            gone = [n for n, src in self._running.items()
                    if n not in now or now[n].source != src]
            if gone and self._pass_stop is not None:
                log.info("model list changed under a running sync: interrupting it (the "
                         "partial downloads resume)", extra=fields(models=gone))
                self._pass_stop.set()
        self._wake.set()
        self.on_change()

    @staticmethod
    def _carry(old: ModelState | None, spec: ModelSpec) -> ModelState:
        if old is None or old.source != spec.source:
            return ModelState(spec.name, spec.source, spec.required)
        return replace(old, required=spec.required)

    def states(self) -> dict[str, ModelState]:
        with self._lock:
            return dict(self._states)

    @property
    def known(self) -> bool:
        """A list was given (an empty one counts)."""
        with self._lock:
            return self._desired is not None

    def take_changes(self) -> list[Change]:
        with self._lock:
            changes, self._changes = self._changes, []
        return changes

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="models-keeper", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop the thread (a pass in flight is cancelled); True when it ended in time."""
        with self._lock:
            self._stopping = True
            if self._pass_stop is not None:
                self._pass_stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        wait = 0.0
        failures = 0
        while True:
            self._wake.wait(timeout=wait if wait > 0 else None)
            self._wake.clear()
            with self._lock:
                if self._stopping:
                    return
                specs = self._desired
            if not specs:
                wait = 0.0  # nothing listed: nothing to sync (and no cache dir to create)
                continue
            ok = self._pass(specs)
            failures = 0 if ok else failures + 1
            wait = self.resync_s if ok else min(self.retry_max_s,
                                                 self.retry_initial_s * 2 ** (failures - 1))
            with self._lock:
                changed = self._desired != specs
            if changed:
                wait = 0.0  # the list changed during the pass: go again now
                self._wake.set()

    def _pass(self, specs: list[ModelSpec]) -> bool:
        stop = threading.Event()
        with self._lock:
            self._running = {s.name: s.source for s in specs}
            self._pass_stop = stop
        started = time.monotonic()
        try:
            result = sync(specs, replace(self.options, stop=stop), reporter=_Feed(
                self, self._make_reporter()))
        except NodeagentError as exc:
            self._set_problem(redact_text(str(exc)))
            return False
        except Exception as exc:  # never let the thread die: report and retry
            log.exception("model sync failed unexpectedly")
            self._set_problem(f"model sync failed: {type(exc).__name__}: "
                              f"{redact_text(str(exc))}")
            return False
        finally:
            with self._lock:
                self._running, self._pass_stop = {}, None
        self.passes += 1
        self.last = result
        self._set_problem(None)
        log.info("model sync pass done", extra=fields(
            models=len(specs), ok=result.ok, evicted=result.evicted or None,
            seconds=round(time.monotonic() - started, 2)))
        return all(m.state in ("present", "updated") or (
            m.error is not None and m.error.reason == "cancelled") for m in result.models)

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            self.problem = problem
            if problem:
                log.error("model cache unavailable", extra=fields(error=problem))
            self.on_change()

    # ------------------------------------------------------------------ from the engine
    def record(self, p: ModelProgress) -> None:
        state = {"present": PRESENT, "downloading": DOWNLOADING, "failed": FAILED,
                 "skipped": SKIPPED}.get(p.state, PENDING)
        if p.reason == "cancelled":
            state = PENDING  # interrupted: resumes on the next pass, not a failure
        with self._lock:
            old = self._states.get(p.name)
            if old is None or old.source != p.source:
                return  # no longer wanted
            new = replace(old, state=state, reason=p.reason if state in (FAILED, SKIPPED)
                          else "", message=p.message, bytes_done=p.bytes_done,
                          bytes_total=p.bytes_total)
            self._states[p.name] = new
            metrics.set_model_states(s.state for s in self._states.values())
            if (old.state, old.reason) != (new.state, new.reason):
                self._changes.append(Change(p.name, new.state, new.reason, new.message))
        self.on_change()

    def progress(self, models: Sequence[ModelProgress]) -> None:
        with self._lock:
            for p in models:
                old = self._states.get(p.name)
                if old is not None and old.source == p.source:
                    self._states[p.name] = replace(old, bytes_done=p.bytes_done,
                                                   bytes_total=p.bytes_total)


class _Feed:
    """The engine's reporter during a pass: the keeper's states, then the log/display."""

    def __init__(self, keeper: ModelKeeper, inner: Reporter):
        self.keeper, self.inner = keeper, inner

    def update(self, models: Sequence[ModelProgress]) -> None:
        self.keeper.progress(models)
        self.inner.update(models)

    def event(self, model: ModelProgress) -> None:
        self.keeper.record(model)
        self.inner.event(model)

    def close(self) -> None:
        self.inner.close()
