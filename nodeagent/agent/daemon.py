"""The agent's daemon: cluster hot list -> this node's containerd, with status.

Tasks (one asyncio loop, one process):

- two Mirrors (kube/watch.py): all HotImageSets, and this Node (``NODE_NAME``);
- the control loop: on any change, select the sets whose nodeSelector matches the node's
  labels, merge them and hand the result to the engine (a set or label change reaches
  the engine within milliseconds); then patch the ``ImagesPrewarmed`` condition if due,
  send Events for failures and remove the startup taint when its time has come;
- the prewarm engine (pulls, pins, self-heals), started only once the first selection
  is known, so a restart never unpins images for want of a list;
- the model cache (agent/models.py): HotModelSets -> a sync thread, condition
  ``ModelsPrewarmed``, Events; the startup taint also waits for ``required`` models;
- local storage: ``nodeagent disks setup --restart-services`` only while the node still
  carries the startup taint (no workload can be running yet), in a child process;
- /metrics, /healthz, /readyz on one port.

SIGTERM/SIGINT: the engine cancels pulls in flight (rollout Leases are released), the
last Events are flushed, and the process exits 0 (agent/process.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from nodeagent import metrics
from nodeagent.agent.condition import CONDITION_TYPE, compute_condition
from nodeagent.agent.config import AgentConfig
from nodeagent.agent.selection import EngineFeed, Selection
from nodeagent.agent.storage import Storage, disk_snapshot, run_disks_setup
from nodeagent.aio import sleep_unless, wait_any
from nodeagent.errors import NodeagentError
from nodeagent.kube.events import EventRecorder
from nodeagent.kube.nodestatus import Condition, NodeConditionReporter
from nodeagent.kube.taint import TaintSpec, decide, has_taint, remove_taint, taint_dicts
from nodeagent.kube.watch import Backoff, Mirror, describe_error
from nodeagent.log import fields, redact_text
from nodeagent.prewarm.state import FAILED, PRESENT, SKIPPED

if TYPE_CHECKING:
    from nodeagent.prewarm.desired import DesiredImage

log = logging.getLogger("nodeagent.agent")

SHUTDOWN_GRACE_S = 20.0


class Agent:
    def __init__(self, config: AgentConfig, kube: Any, containerd: Any,
                 health: metrics.HealthState | None = None) -> None:
        from nodeagent.api.group import HOTIMAGESET
        from nodeagent.kube.client import api_resource
        from nodeagent.kube.secrets import PullSecrets

        self.config = config
        self.kube = kube
        self.containerd = containerd
        self.health = health or metrics.HealthState()
        self._wake = asyncio.Event()
        self.node_mirror = self._mirror(_node_resource(), name=config.node_name, label="Node")
        self.sets_mirror = self._mirror(api_resource(HOTIMAGESET), label=HOTIMAGESET.name)
        self.selection = Selection()
        self.secrets = PullSecrets(kube, ttl_s=config.secret_ttl_s)
        self.events = EventRecorder(kube, config.node_name)
        self.status = NodeConditionReporter(kube, config.node_name, CONDITION_TYPE,
                                            heartbeat_s=config.heartbeat_s,
                                            min_interval_s=config.status_min_interval_s)
        self.feed = EngineFeed(self._wake.set)
        self.limiter = self._rollout_limiter()
        self.engine = self._engine()
        self.storage = Storage()
        self.storage_settled = asyncio.Event()
        self.desired: list[DesiredImage] | None = None
        self.taint_done = config.startup_taint is None
        self.started = time.monotonic()
        self._engine_task: asyncio.Task | None = None
        self._engine_stop = asyncio.Event()
        self._last_condition: Condition | None = None
        self._fatal: str | None = None
        self._taint_backoff = Backoff(initial_s=1.0, max_s=60.0)
        self._taint_retry_at = 0.0

        self.models = self._models()

    def _mirror(self, resource: type, label: str, name: str | None = None,
                optional: bool = False) -> Mirror:
        return Mirror(self.kube, resource, name=name, on_change=self._wake.set,
                      backoff=self.config.backoff(), timing=self.config.watch_timing,
                      label=label, optional=optional)

    def _models(self) -> Any:
        if self.config.models is None:
            return None
        from nodeagent.agent.models import ModelsAgent

        return ModelsAgent(self.config, self.kube, self.events, self._wake.set, self._mirror)

    def _rollout_limiter(self) -> Any:
        """The cluster-wide rollout limit (None: off); with a registry mirror, a seed wave."""
        config = self.config
        if config.rollout_limit <= 0:
            return None
        from nodeagent.kube.lease import RolloutLimiter

        return RolloutLimiter(self.kube, config.lease_namespace, config.node_name,
                              config.rollout_limit, lease_duration_s=config.lease_duration_s,
                              seed_wave=config.rollout_seed_nodes)

    def _engine(self) -> Any:
        from nodeagent.credentials.options import build_keyring
        from nodeagent.prewarm.engine import PrewarmEngine

        gate = self.limiter.gate if self.limiter is not None else None
        prewarm = self.config.prewarm
        return PrewarmEngine(self.containerd, build_keyring(prewarm.credentials), prewarm.engine,
                             self.feed, secret_keyring=self.secrets, pull_gate=gate)

    # -- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then shut down cleanly (pulls cancelled)."""
        mirror_stop = asyncio.Event()
        tasks = [self._spawn(self.node_mirror.run(mirror_stop), "watch-node"),
                 self._spawn(self.sets_mirror.run(mirror_stop), "watch-sets"),
                 *([self._spawn(self.models.mirror.run(mirror_stop), "watch-models")]
                   if self.models else []),
                 self._spawn(self._storage(stop), "storage"),
                 self._spawn(self._disk_metrics(stop), "disk-metrics")]
        try:
            await self._control(stop)
        finally:
            await self._shutdown(tasks, mirror_stop)
        if self._fatal is not None:
            raise NodeagentError(f"agent stopped after an internal error: {self._fatal}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        """A task that, should it die of an unexpected error, stops the agent (the pod
        restarts it) instead of leaving a half-working agent behind."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None or self._fatal is not None:
            return
        exc = task.exception()
        log.error("agent task failed", exc_info=exc, extra=fields(task=task.get_name()))
        self._fatal = f"{task.get_name()}: {type(exc).__name__}: {redact_text(str(exc))}"
        self.health.set_live(False, self._fatal)
        self._wake.set()

    async def _shutdown(self, tasks: list[asyncio.Task], mirror_stop: asyncio.Event) -> None:
        self.health.set_ready(False, "shutting down")
        self._engine_stop.set()
        models = asyncio.create_task(self.models.stop()) if self.models else None  # meanwhile
        if self._engine_task is not None:
            done, _ = await asyncio.wait({self._engine_task}, timeout=SHUTDOWN_GRACE_S)
            if not done:
                log.warning("engine did not stop in time; cancelling")
                self._engine_task.cancel()
                await asyncio.gather(self._engine_task, return_exceptions=True)
        if models is not None:
            await models
        if self.limiter is not None:  # coordinator Leases released: others take over at once
            await self.limiter.aclose()
        mirror_stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.events.flush()
        log.info("agent stopped", extra=fields(node=self.config.node_name))

    async def _control(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and self._fatal is None:
            self._wake.clear()
            try:
                await self.step()
            except Exception:  # one bad pass must not kill the agent
                log.exception("agent control loop error")
            self.health.beat()
            await wait_any(stop, self._wake, self._next_timer())

    async def step(self) -> None:
        """One pass of the control loop (also called by tests)."""
        node = self.node()
        if node is not None:
            self.events.node_uid = node.metadata.uid
            self.status.adopt(node)
            self._select(node)
            if self.models is not None:
                self.models.select(node)
                self._start_models()
        self._report_engine_changes()
        await self._report_condition()
        if self.models is not None:
            self.models.report_changes()
            await self.models.report_condition(node, self._storage_problem())
        await self._startup_taint(node)

    def node(self) -> Any:
        return self.node_mirror.items.get(self.config.node_name)

    # -- selection -> engine

    def _select(self, node: Any) -> None:
        if not self.sets_mirror.synced.is_set():
            return
        labels = dict(node.metadata.labels or {})
        desired = self.selection.select(self.sets_mirror.items, labels)
        if desired == self.desired:
            return
        first = self.desired is None
        self.desired = desired
        self.secrets.retain({ref for d in desired for ref in d.pull_secrets})
        self.engine.set_desired(desired)
        log.info("hot list for this node", extra=fields(
            images=len(desired), sets=sorted({s for d in desired for s in d.sets}),
            invalid_sets=self.selection.invalid))
        if first:
            self._start_engine()

    def _start_engine(self) -> None:
        """Once the first hot list is known and local storage is settled (setup may
        restart containerd and move its root: no pull may run across that)."""
        if self._engine_task is not None or self.desired is None \
                or not self.storage_settled.is_set():
            return
        self._engine_task = self._spawn(self.engine.run(self._engine_stop), "engine")
        # After a restore from an EBS snapshot: read the hot images' blocks first, once
        # per boot (NODEAGENT_HYDRATE*, see agent/hydration.py); it never raises.
        from nodeagent.agent.hydration import boot_hydration

        self._spawn(boot_hydration(self.containerd, self.desired, self._engine_stop), "hydrate")
        self.health.set_ready(True, "watching")

    def _start_models(self) -> None:
        if self.models is not None and self.storage_settled.is_set():
            self.models.start()

    def _storage_problem(self) -> str | None:
        return None if self.storage.ready else self.storage.problem

    def images_known(self) -> bool:
        """The engine has states for exactly the current desired list."""
        if self.desired is None or self._engine_task is None:
            return False
        return len(self.engine.snapshot()) == len(self.desired)

    # -- status, events, taint

    def _report_engine_changes(self) -> None:
        changes, self.feed.changes = self.feed.changes, []
        for image, state, reason, message in changes:
            if state == FAILED:
                self.events.emit("Warning", "HotImagePullFailed",
                                 f"hot image {image}: {message or reason}",
                                 key=f"{image}|{reason}")
            elif state == SKIPPED:
                self.events.emit("Warning", "HotImageSkipped",
                                 f"hot image {image} not pulled: {message}",
                                 key=f"{image}|{reason}")

    def condition(self) -> Condition | None:
        if not self.images_known():
            return None
        return compute_condition(self.engine.snapshot().values(), self.selection.invalid,
                                 self._storage_problem())

    async def _report_condition(self) -> None:
        cond = self.condition()
        if cond is None or self.node() is None:
            return
        before = self._last_condition
        if await self.status.report(cond) and cond.status == "True" \
                and (before is None or before.status != "True"):
            self.events.emit("Normal", "ImagesPrewarmed", cond.message, key="prewarmed")
        self._last_condition = cond

    async def _startup_taint(self, node: Any) -> None:
        spec = self.config.startup_taint
        if self.taint_done or spec is None or node is None \
                or time.monotonic() < self._taint_retry_at:
            return
        if not has_taint(taint_dicts(node), spec):
            self.taint_done = True
            return
        states = self.engine.snapshot().values()
        missing = [s.image for s in states if s.required and s.state != PRESENT]
        waiting_models, models_missing = (self.models.taint_blockers() if self.models
                                          else (False, []))
        decision = decide(self.storage.ready, missing, time.monotonic() - self.started,
                          self.config.startup_taint_timeout_s,
                          waiting_for_images=not self.images_known(),
                          required_models_missing=models_missing,
                          waiting_for_models=waiting_models)
        if decision.remove:
            await self._remove_taint(spec, decision.why or "ready", decision.message)

    async def _remove_taint(self, spec: TaintSpec, why: str, message: str) -> None:
        try:
            await remove_taint(self.kube, self.config.node_name, spec)
        except Exception as exc:
            delay = self._taint_backoff.delay()
            self._taint_retry_at = time.monotonic() + delay
            log.warning("cannot remove the startup taint; will retry", extra=fields(
                taint=str(spec), error=describe_error(exc), retry_in_s=round(delay, 1)))
            return
        self.taint_done = True
        metrics.AGENT_STARTUP_TAINT_REMOVED.labels(why=why).inc()
        if why == "timeout":
            log.warning("startup taint removed on timeout", extra=fields(
                taint=str(spec), why=message))
            self.events.emit("Warning", "StartupTaintTimeout",
                             f"removed startup taint {spec} anyway: {message}", key="taint")
        else:
            log.info("startup taint removed", extra=fields(taint=str(spec), why=message))
            self.events.emit("Normal", "StartupTaintRemoved",
                             f"removed startup taint {spec}: {message}", key="taint")

    def _next_timer(self) -> float:
        waits = [30.0]
        if self.node() is None:
            return waits[0]  # nothing to report or patch before the node is known
        cond = self._last_condition
        if cond is not None:
            waits.append(self.status.next_due(cond) + 0.05)
        models_due = self.models.next_due() if self.models else None
        if models_due is not None:
            waits.append(models_due + 0.05)
        if not self.taint_done and self.config.startup_taint is not None:
            now = time.monotonic()
            left = self.config.startup_taint_timeout_s - (now - self.started)
            waits.append(max(0.05, left, self._taint_retry_at - now))
        if self._engine_task is not None and not self.images_known():
            waits.append(0.2)  # engine's first pass on a new list is about to land
        return max(0.05, min(waits))

    # -- storage

    async def _storage(self, stop: asyncio.Event) -> None:
        try:
            await self._storage_setup()
        finally:
            self.storage_settled.set()
            self._start_engine()
            self._start_models()
            self._wake.set()

    async def _disk_metrics(self, stop: asyncio.Event) -> None:
        """`disks status` figures as metrics, always (cheap: sysfs and statvfs only)."""
        while not stop.is_set():
            try:
                snapshot = await asyncio.to_thread(disk_snapshot, self.config.disks)
                metrics.set_disk_metrics(snapshot)
            except Exception as exc:  # metrics must never take the agent down
                log.warning("cannot read local disk status", extra=fields(
                    error=redact_text(str(exc))))
            await sleep_unless(stop, self.config.disks_status_interval_s)

    async def _storage_setup(self) -> None:
        spec, setup = self.config.startup_taint, self.config.disks_setup
        if setup is None:
            return
        await self.node_mirror.synced.wait()
        node = self.node()
        if node is None or spec is None or not has_taint(taint_dicts(node), spec):
            log.info("not setting up local storage: the node does not carry the startup "
                     "taint, so workloads may already use its disks",
                     extra=fields(taint=str(spec) if spec else None))
            return
        self.storage = Storage(ready=False, problem="local storage setup in progress")
        self.storage = await run_disks_setup(setup.args)
        if not self.storage.ready:
            log.error("local storage setup failed", extra=fields(problem=self.storage.problem))
            self.events.emit("Warning", "LocalStorageSetupFailed", self.storage.problem or "",
                             key="disks")


def _node_resource() -> type:
    from lightkube.resources.core_v1 import Node

    return Node
