"""The agent's model half: cluster HotModelSets -> this node's model cache, with status.

- a Mirror of all HotModelSets (optional: a cluster without the CRD, or an agent whose
  RBAC was not updated, counts as "no models" and is retried, so images never wait);
- selection on every control-loop pass: parse the objects (cached by resourceVersion;
  a malformed one is reported once and skipped), pick the sets whose nodeSelector
  matches the node's labels, merge them (models/desired.py);
- a ``ModelKeeper`` thread runs the syncs (boto3 and the registry client block or run
  their own loop there, never on the agent's event loop) and wakes the control loop on
  every state change, through ``call_soon_threadsafe``;
- the Node condition ``ModelsPrewarmed`` (agent/models_condition.py), reported once
  HotModelSets select this node (or the condition is already there), so clusters that
  do not use the model cache pay no extra status writes; deduplicated Events for
  failures and name conflicts; the startup taint's required models.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from nodeagent import metrics
from nodeagent.agent.config import AgentConfig
from nodeagent.agent.models_condition import CONDITION_TYPE, compute_models_condition
from nodeagent.api.hotmodelset import HotModelSet, parse_hotmodelset
from nodeagent.errors import NodeagentError
from nodeagent.kube.events import EventRecorder
from nodeagent.kube.nodestatus import Condition, NodeConditionReporter
from nodeagent.kube.watch import Mirror
from nodeagent.log import fields, redact_text
from nodeagent.models.desired import DesiredModels, select_and_merge
from nodeagent.models.keeper import FAILED, PRESENT, SKIPPED, ModelKeeper

log = logging.getLogger("nodeagent.agent")


class ModelSelection:
    """Parses HotModelSet objects (cached by resourceVersion), picks this node's models."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[str, HotModelSet | None]] = {}
        self.invalid: list[str] = []

    def select(self, objects: Mapping[str, Any], labels: Mapping[str, str]) -> DesiredModels:
        sets, invalid, parsed = [], [], {}
        for name, obj in sorted(objects.items()):
            raw = obj if isinstance(obj, Mapping) else dict(obj)
            version = (raw.get("metadata") or {}).get("resourceVersion") or ""
            cached = self._parsed.get(name)
            if cached is None or cached[0] != version:
                try:
                    cached = (version, parse_hotmodelset(dict(raw), f"HotModelSet {name}"))
                except NodeagentError as exc:
                    log.error("invalid HotModelSet skipped", extra=fields(
                        hotmodelset=name, resource_version=version,
                        error=redact_text(str(exc))))
                    cached = (version, None)
            parsed[name] = cached
            (invalid.append(name) if cached[1] is None else sets.append(cached[1]))
        self._parsed, self.invalid = parsed, invalid
        selected = sum(1 for s in sets if s.node_selector.matches(labels))
        metrics.AGENT_HOTMODELSETS.labels(state="selected").set(selected)
        metrics.AGENT_HOTMODELSETS.labels(state="not_selected").set(len(sets) - selected)
        metrics.AGENT_HOTMODELSETS.labels(state="invalid").set(len(invalid))
        return select_and_merge(sets, labels)


class ModelsAgent:
    def __init__(self, config: AgentConfig, kube: Any, events: EventRecorder,
                 wake: Callable[[], None], mirror: Callable[..., Mirror]) -> None:
        from nodeagent.api.group import HOTMODELSET
        from nodeagent.kube.client import api_resource

        assert config.models is not None
        self.config = config
        self.events = events
        self._wake = wake
        self.mirror = mirror(api_resource(HOTMODELSET), label=HOTMODELSET.name, optional=True)
        self.selection = ModelSelection()
        self.desired: DesiredModels | None = None
        self.status = NodeConditionReporter(kube, config.node_name, CONDITION_TYPE,
                                            heartbeat_s=config.heartbeat_s,
                                            min_interval_s=config.status_min_interval_s,
                                            gauge=metrics.AGENT_MODELS_PREWARMED)
        self.keeper = ModelKeeper(self._sync_options(), self._wake_threadsafe,
                                  resync_s=config.models.resync_s,
                                  retry_initial_s=config.models.retry_initial_s,
                                  retry_max_s=config.models.retry_max_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._conflicts_reported: set[str] = set()
        self._last: Condition | None = None

    def _sync_options(self) -> Any:
        from nodeagent.models.options import SyncOptions

        models, prewarm = self.config.models, self.config.prewarm
        assert models is not None
        return SyncOptions(cache_dir=models.cache_dir, concurrency=models.concurrency,
                           high_water_percent=prewarm.engine.high_water_percent,
                           hosts_dir=prewarm.engine.hosts_dir,
                           credentials=prewarm.credentials)

    def _wake_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    # -- selection -> keeper

    def select(self, node: Any) -> None:
        if not self.mirror.synced.is_set():
            return
        labels = dict(node.metadata.labels or {})
        desired = self.selection.select(self.mirror.items, labels)
        if desired == self.desired:
            return
        self.desired = desired
        self.keeper.set_desired(desired.specs)
        log.info("model list for this node", extra=fields(
            models=[m.name for m in desired.models],
            sets=sorted({s for m in desired.models for s in m.sets}),
            conflicts=[c.name for c in desired.conflicts] or None,
            invalid_sets=self.selection.invalid or None))
        for conflict in desired.conflicts:
            if conflict.name not in self._conflicts_reported:
                self.events.emit("Warning", "HotModelNameConflict",
                                 f"{conflict.describe()}: left out until the sets agree",
                                 key=conflict.name)
        self._conflicts_reported = {c.name for c in desired.conflicts}

    def start(self) -> None:
        """Once local storage is settled (the cache may live on it) and a list is known."""
        if self._started or self.desired is None:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self.keeper.start()

    async def stop(self) -> None:
        if self._started and not await asyncio.to_thread(self.keeper.stop):
            log.warning("model sync did not stop in time; its partial downloads resume "
                        "on the next start")

    # -- status

    def report_changes(self) -> None:
        for change in self.keeper.take_changes():
            source = self.keeper.states().get(change.name)
            where = f" ({source.source})" if source else ""
            if change.state == FAILED:
                self.events.emit("Warning", "HotModelSyncFailed",
                                 f"model {change.name}{where}: {change.message or change.reason}",
                                 key=f"{change.name}|{change.reason}")
            elif change.state == SKIPPED:
                self.events.emit("Warning", "HotModelSkipped",
                                 f"model {change.name}{where} not downloaded: {change.message}",
                                 key=f"{change.name}|{change.reason}")

    def condition(self, storage_problem: str | None) -> Condition | None:
        if self.desired is None:
            return None
        involved = self.desired.models or self.desired.conflicts or self.selection.invalid
        if not involved and self.status.last is None:
            return None  # this node never had models: no condition, no status writes
        states = self.keeper.states().values()
        return compute_models_condition(
            states, self.selection.invalid, [c.name for c in self.desired.conflicts],
            storage_problem, self.keeper.problem if self._started else None)

    async def report_condition(self, node: Any, storage_problem: str | None) -> None:
        if node is None:
            return
        self.status.adopt(node)
        cond = self.condition(storage_problem)
        if cond is None:
            return
        before = self._last
        if await self.status.report(cond) and cond.status == "True" \
                and (before is None or before.status != "True"):
            self.events.emit("Normal", "ModelsPrewarmed", cond.message, key="models")
        self._last = cond

    def next_due(self) -> float | None:
        return None if self._last is None else self.status.next_due(self._last)

    def taint_blockers(self) -> tuple[bool, list[str]]:
        """(the list is not known yet, required models not present)."""
        if self.desired is None:
            return True, []
        states = self.keeper.states()
        return False, [m.name for m in self.desired.models if m.spec.required and (
            states.get(m.name) is None or states[m.name].state != PRESENT)]
