"""The prewarm engine: keeps this node's hot images pulled and pinned in containerd.

Orchestration only. Decisions live in ``plan`` (what to pull/pin/unpin/remove, which
waiting pull goes next) and ``diskguard`` (may this pull fill the disk?); the engine's
collaborators do the rest: ``prepare`` (credentials, manifest layers), ``slots`` (at most
``concurrency`` pulls), ``gate`` (the rollout limit, told of mirrors), ``apply`` (labels,
removals, one watched CRI pull, the watch on image deletions), ``progress`` (bytes done)
and ``reporting`` (the ticker that publishes to the ProgressReporter port).

API (used by ``nodeagent prewarm``, ``snapshot build`` and the DaemonSet agent)::

    engine = PrewarmEngine(client, keyring, EngineConfig(...), reporter)
    summary = await engine.reconcile(desired)   # one pass: pull what is missing, pin,
                                                # unpin what left the list; returns when
                                                # every pull has finished or given up
    engine.set_desired(desired)                 # watch mode: replace the desired list
    await engine.run(stop)                      # watch mode until stop is set: reconcile
                                                # on set_desired(), when containerd says a
                                                # hot image was deleted (self-heal), and
                                                # every resync_interval_s
    engine.snapshot()                           # {image: ImageState}: current status of
                                                # every desired image (copies)

Do not call reconcile() while run() is active: run() owns the engine then; use
set_desired(). Pulls go through CRI PullImage (so kubelet sees exactly what it would
have pulled), highest priority first. There is no overall pull timeout: a pull is
cancelled and retried (exponential backoff, ``max_retries``) only when no byte arrives
for ``stall_timeout_s`` while it is still downloading.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nodeagent import metrics
from nodeagent.aio import wait_any
from nodeagent.containerd.model import (
    ContainerdError,
    ContainerdUnavailable,
    ImagePullError,
    scrub,
)
from nodeagent.log import fields, redact_text
from nodeagent.prewarm import apply, plan
from nodeagent.prewarm.config import EngineConfig
from nodeagent.prewarm.diskguard import DiskGuard
from nodeagent.prewarm.gate import GatedPulls, PullGate
from nodeagent.prewarm.prepare import Prepared, Preparer, SecretKeyringFactory
from nodeagent.prewarm.progress import DOWNLOADING, IngestMonitor
from nodeagent.prewarm.pullpath import PullPath
from nodeagent.prewarm.reporting import ProgressTicker
from nodeagent.prewarm.slots import PullSlots
from nodeagent.prewarm.state import (
    ACTIVE_STATES,
    BACKOFF,
    FAILED,
    PENDING,
    PRESENT,
    PULLING,
    SKIPPED,
    ImageState,
    PrewarmSummary,
)

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.containerd.model import AuthConfig, ImageRecord
    from nodeagent.credentials.keyring import Keyring
    from nodeagent.prewarm.desired import DesiredImage
    from nodeagent.prewarm.reporting import ProgressReporter

log = logging.getLogger(__name__)

# Failures worth retrying; auth, not_found and no_space will not fix themselves.
RETRYABLE = frozenset({"registry_unreachable", "stalled", "containerd_unavailable",
                       "cancelled", "other"})
HISTORY = 5
PREPARE_AT_ONCE = 8


class PrewarmEngine:
    """Pulls, pins and self-heals this node's hot images. See the module docstring."""

    def __init__(
        self,
        client: ContainerdClient,
        keyring: Keyring | None,
        config: EngineConfig | None = None,
        reporter: ProgressReporter | None = None,
        secret_keyring: SecretKeyringFactory | None = None,
        statvfs: Callable[[str], object] | None = None,
        pull_gate: PullGate | None = None,
    ):
        """``secret_keyring`` (agent): builds a keyring from an image's pull secrets; it
        is asked first, then ``keyring`` (docker config files, credential providers).
        ``statvfs`` replaces os.statvfs (tests). ``pull_gate`` (agent): ``pull_gate(key,
        mirrored=)`` is held around each pull (cluster-wide rollout limit; prewarm/gate)."""
        self.client = client
        self.config = config = config or EngineConfig()
        self.reporter = reporter
        self.pull_gate = pull_gate
        self.gated = GatedPulls(client, config)
        self.monitor = IngestMonitor(client, config.poll_interval_s,
                                     on_bytes=metrics.PREWARM_PULLED_BYTES.inc)
        self.preparer = Preparer(keyring, secret_keyring, config.hosts_dir,
                                 timeout_s=min(60.0, config.stall_timeout_s))
        self.guard = DiskGuard(client, self.monitor, config.high_water_percent,
                               config.unpacked_ratio, config.host_root, statvfs)
        self.ticker = ProgressTicker(lambda: self._states, self.monitor, self.guard, reporter,
                                     config.poll_interval_s)
        self._slots = PullSlots(config.concurrency)
        self.pull_path = PullPath(client, config)
        self._desired: list[DesiredImage] = []
        self._states: dict[str, ImageState] = {}
        self._pulls: dict[str, asyncio.Task[None]] = {}
        self._prepared: dict[str, Prepared] = {}  # first attempt's credentials + layers
        self._not_before: dict[str, float] = {}  # given-up images: no new try before
        self._wake = asyncio.Event()
        self._unpinned: list[str] = []
        self._removed: list[str] = []
        self._not_removed: list[tuple[str, str]] = []  # (image, why) asked but refused

    # ------------------------------------------------------------------ public API

    async def reconcile(self, desired: Sequence[DesiredImage] | None = None) -> PrewarmSummary:
        """One pass: pin what is present, pull what is missing (and pin it), unpin what
        left the list; return once every pull succeeded or gave up."""
        if desired is not None:
            self._desired = list(desired)
        self._unpinned, self._removed, self._not_removed = [], [], []
        try:
            async with self.ticker.running():
                await self._sync(retry_given_up=True)
                while self._pulls:
                    await asyncio.gather(*self._pulls.values(), return_exceptions=True)
        finally:
            await self.close()  # a pass is self-contained: nothing kept for the next one
        self.ticker.publish()
        return PrewarmSummary(list(self.snapshot().values()), self._unpinned, self._removed,
                              self._not_removed)

    async def close(self) -> None:
        """Release what pulls keep between images (the fast path's connections, workers
        and staging lock). reconcile() and run() do it when they end."""
        await self.pull_path.close()

    def set_desired(self, desired: Sequence[DesiredImage]) -> None:
        """Replace the desired images (watch mode); run() reconciles promptly."""
        desired = list(desired)
        if desired != self._desired:
            self._not_before.clear()  # a changed list deserves a fresh try
        self._desired = desired
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the desired images present until ``stop`` is set.

        Reconciles after set_desired(), when containerd reports an image deletion (a hot
        image deleted behind our back is pulled again), and every resync_interval_s.
        Survives containerd restarts. Pulls in flight are cancelled when stop is set.
        """
        events = asyncio.create_task(
            apply.watch_image_deletions(self.client, self._wake, stop,
                                        self.config.backoff_initial_s, self.config.backoff_max_s),
            name="prewarm-events")
        try:
            async with self.ticker.running():
                retry_s = self.config.backoff_initial_s
                while not stop.is_set():
                    self._wake.clear()
                    wait_s = None
                    try:
                        await self._sync(retry_given_up=False)
                        metrics.PREWARM_RECONCILES.inc()
                        metrics.PREWARM_LAST_RECONCILE.set(time.time())
                        retry_s = self.config.backoff_initial_s
                    except ContainerdError as exc:  # e.g. containerd restarting
                        log.warning("reconcile failed; retrying", extra=fields(
                            error=redact_text(str(exc)), retry_s=retry_s))
                        wait_s, retry_s = retry_s, min(60.0, retry_s * 2)
                    await wait_any(stop, self._wake, wait_s or self._next_wake())
        finally:
            events.cancel()
            for task in list(self._pulls.values()):
                task.cancel()
            await asyncio.gather(events, *self._pulls.values(), return_exceptions=True)
            await self.close()
            if self.reporter:
                self.reporter.close()

    def snapshot(self) -> dict[str, ImageState]:
        """Current state of every desired image, keyed by normalized reference (copies)."""
        return {k: dataclasses.replace(s, history=list(s.history))
                for k, s in self._states.items()}

    # ------------------------------------------------------------------ reconcile

    async def _sync(self, retry_given_up: bool) -> None:
        records = await self.client.list_image_records()
        decided = plan.plan_images(
            self._desired, records, unpin_removed=self.config.unpin_removed,
            remove_unlisted=self.config.remove_unlisted,
        )
        self._refresh_states(decided, records)
        await apply.apply_labels(self.client, decided.pins, pin=True)
        self._unpinned += await apply.apply_labels(self.client, decided.unpins, pin=False)
        for removal in decided.removals:
            name, error = await apply.remove_image(self.client, removal)
            self._removed += [] if error else [name]
            self._not_removed += [(name, error)] if error else []
        now = time.monotonic()
        start = [image for image in decided.pulls if image.name not in self._pulls and (
            retry_given_up or self._not_before.get(image.name, 0) <= now)]
        await self._prepare_all(start)
        order = {d.name: i for i, d in enumerate(self._desired)}
        for image in start:
            self._pulls[image.name] = asyncio.create_task(
                self._pull(image, order[image.name]), name=f"pull {image.name}")
        desired_keys = {d.name for d in self._desired}
        for key, task in list(self._pulls.items()):
            if key not in desired_keys:
                task.cancel()  # left the list while pulling
        self.ticker.publish()

    async def _prepare_all(self, images: Sequence[DesiredImage]) -> None:
        """Read every manifest first so the scheduler sees all layer sets at once."""
        limit = asyncio.Semaphore(PREPARE_AT_ONCE)

        async def prepare(image: DesiredImage) -> None:
            async with limit:
                self._prepared[image.name] = await self.preparer.prepare(image)

        await asyncio.gather(*(prepare(image) for image in images))

    def _refresh_states(self, decided: plan.ImagePlan, records: Sequence[ImageRecord]) -> None:
        groups = plan.group_by_target(records)
        states: dict[str, ImageState] = {}
        for image in self._desired:
            state = self._states.get(image.name) or ImageState(image=image.name)
            state.required, state.pin = image.required, image.pin
            state.priority, state.sets = image.priority, image.sets
            states[image.name] = state
        for image, target in decided.present:
            state = states[image.name]
            recs = groups.get(target, [])
            state.digest = target
            state.image_id = next((r.name for r in recs if r.name.startswith("sha256:")),
                                  state.image_id)
            state.pinned = image.pin  # pins for present images are applied right after
            if state.state != PRESENT:
                self._change(state, PRESENT, reason=None, message="")
        for image in decided.pulls:
            state = states[image.name]
            if state.state == PRESENT:  # deleted behind our back: pull it again
                state.attempts, state.started_at, state.finished_at = 0, None, None
                log.warning("hot image disappeared from containerd; pulling it again",
                            extra=fields(image=state.image))
                self._change(state, PENDING, reason=None, message="")
        self._states = states

    # ------------------------------------------------------------------ pulls

    async def _pull(self, image: DesiredImage, order: int) -> None:
        """Pull one image with retries; always ends in PRESENT, FAILED or SKIPPED."""
        key = image.name
        state = self._states.get(key) or ImageState(image=key)
        state.attempts, state.history = 0, []
        state.started_at, state.finished_at = time.time(), None
        self._change(state, PENDING, reason=None, message="")
        try:
            for attempt in range(self.config.max_retries + 1):
                prepared = self._prepared.pop(key, None) or await self.preparer.prepare(image)
                candidate = plan.PullCandidate(image.priority, order, prepared.layers)
                async with self._slots.slot(key, candidate):
                    reason = await self._attempt(image, state, prepared)
                if reason is None or reason == "disk_guard":
                    return
                if reason not in RETRYABLE or attempt == self.config.max_retries:
                    self._give_up(key, state, reason)
                    return
                metrics.PREWARM_RETRIES.inc()
                delay = min(self.config.backoff_max_s,
                            self.config.backoff_initial_s * 2 ** attempt)
                self._change(state, BACKOFF, reason=reason,
                             message=f"{state.message} (retry in {delay:.0f}s)")
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the image "pulling" forever
            log.exception("unexpected error while pulling", extra=fields(image=key))
            self._failed(state, "other", f"unexpected error: {exc!r}")
            self._give_up(key, state, "other")
        finally:
            self._pulls.pop(key, None)
            self.guard.release(key)
            self.monitor.untrack(key)
            self.ticker.publish()

    def _give_up(self, key: str, state: ImageState, reason: str) -> None:
        attempts = f" after {state.attempts} attempts" if state.attempts > 1 else ""
        self._not_before[key] = time.monotonic() + self.config.backoff_max_s
        state.finished_at = time.time()
        self._change(state, FAILED, reason=reason, message=f"{state.message}{attempts}")

    async def _attempt(self, image: DesiredImage, state: ImageState, prepared: Prepared
                       ) -> str | None:
        """One attempt; returns None on success, else the failure reason."""
        state.attempts += 1
        state.phase = "resolving"
        self._change(state, PULLING, reason=None, message="")
        if prepared.error is not None:
            return self._failed(state, "auth", prepared.error)
        auth = prepared.auth
        try:
            return await self._attempt_with(image, state, auth, prepared.layers)
        except apply.Stalled:
            return self._failed(state, "stalled", (
                f"no progress for {self.config.stall_timeout_s:g}s while downloading "
                f"{state.image} ({state.bytes_done} bytes done); cancelled the pull"))
        except ImagePullError as exc:
            return self._failed(state, exc.reason, scrub(str(exc), auth))
        except ContainerdUnavailable as exc:
            return self._failed(state, "containerd_unavailable", str(exc))
        except ContainerdError as exc:
            return self._failed(state, "other", scrub(str(exc), auth))

    async def _attempt_with(
        self, image: DesiredImage, state: ImageState, auth: AuthConfig | None,
        layers: dict[str, int] | None,
    ) -> str | None:
        key = image.name
        progress = await self.monitor.track(key, layers)
        state.bytes_total = progress.total
        state.bytes_done = progress.bytes_done
        skip = await self.guard.admit(key, progress.done, layers)
        if skip is not None:
            self._skip(key, state, skip)
            return "disk_guard"
        state.phase = DOWNLOADING
        async with self.gated.held(self.pull_gate, image, layers):
            image_id, path = await self.pull_path.pull(image, auth, progress)
        target = await apply.label_pulled(self.client, image, image_id, state.digest)
        state.pull_path = path
        metrics.PREWARM_PULLS.labels(path=path).inc()
        self._pulled(image, state, image_id, target)
        return None

    def _skip(self, key: str, state: ImageState, why: str) -> None:
        self.monitor.untrack(key)
        state.finished_at = time.time()
        self._not_before[key] = time.monotonic() + self.config.backoff_max_s
        metrics.PREWARM_PULL_FAILURES.labels(reason="disk_guard").inc()
        log.warning("skipped pull: disk-space guard", extra=fields(image=state.image, reason=why))
        self._change(state, SKIPPED, reason="disk_guard", message=why)

    def _pulled(self, image: DesiredImage, state: ImageState, image_id: str,
                target: str | None) -> None:
        state.digest, state.image_id, state.pinned = target, image_id, image.pin
        state.finished_at = time.time()
        if state.bytes_total is not None:
            state.bytes_done = state.bytes_total
        state.phase, state.eta_s = None, None
        if state.duration_s is not None:
            metrics.PREWARM_PULL_DURATION.observe(state.duration_s)
        self._change(state, PRESENT, reason=None, message="")

    def _failed(self, state: ImageState, reason: str, message: str) -> str:
        message = redact_text(message)
        state.message = message
        state.history = [*state.history[-(HISTORY - 1):], f"{reason}: {message}"]
        metrics.PREWARM_PULL_FAILURES.labels(reason=metrics.failure_reason(reason)).inc()
        log.warning("pull attempt failed", extra=fields(
            image=state.image, attempt=state.attempts, reason=reason, error=message))
        return reason

    # ------------------------------------------------------------------ timers, state changes

    def _next_wake(self) -> float:
        """Seconds until the next scheduled reconcile (resync or a given-up image's retry)."""
        now = time.monotonic()
        waits = [t - now for t in self._not_before.values() if t > now]
        return max(0.5, min([self.config.resync_interval_s, *waits]))

    def _change(self, state: ImageState, new: str, reason: str | None, message: str) -> None:
        changed = state.state != new
        state.state, state.reason, state.message = new, reason, message
        if new not in ACTIVE_STATES:
            state.phase, state.rate_bps, state.eta_s = None, 0.0, None
        if changed and self.reporter:
            self.reporter.event(state)
        if changed:
            self.ticker.publish()
