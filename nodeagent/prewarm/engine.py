"""The prewarm engine: keeps this node's hot images pulled and pinned in containerd.

Effects and orchestration only; decisions live in ``plan`` (what to pull/pin/unpin/
remove), ``diskguard`` (may this pull fill the disk?) and ``progress`` (bytes done).

API (used by ``nodeagent prewarm`` and by the DaemonSet agent)::

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

``reporter`` (``nodeagent.console.ProgressReporter``: ``update(states, fs)`` about once
a second, ``event(state)`` on every state change, ``close()``) is how callers follow
along: the CLI draws bars or logs JSON lines; the agent can update Node conditions and
HotImageSet status from ``event``. ``secret_keyring`` turns an image's pull secrets into
a keyring (asked before the node keyring); ``pull_gate(key)`` is an async context manager
held around each CRI pull (cluster-wide rollout limit). Do not call reconcile() while
run() is active: run() owns the engine then; use set_desired().

Pulls go through CRI PullImage (so kubelet sees exactly what it would have pulled),
at most ``concurrency`` at a time, highest priority first. There is no overall pull
timeout: a pull is cancelled and retried (exponential backoff, ``max_retries``) only
when no byte arrives for ``stall_timeout_s`` while it is still downloading.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodeagent import metrics
from nodeagent.aio import wait_any
from nodeagent.containerd.model import (
    ContainerdError,
    ContainerdUnavailable,
    ImagePullError,
    quote_filter_value,
    scrub,
)
from nodeagent.errors import NodeagentError
from nodeagent.log import fields, redact_text
from nodeagent.prewarm import diskguard, plan
from nodeagent.prewarm.config import EngineConfig
from nodeagent.prewarm.progress import DOWNLOADING, ImageProgress, IngestMonitor
from nodeagent.prewarm.state import (
    ACTIVE_STATES,
    BACKOFF,
    FAILED,
    PENDING,
    PRESENT,
    PULLING,
    SKIPPED,
    ImageState,
)

if TYPE_CHECKING:
    from nodeagent.api.hotimageset import SecretRef
    from nodeagent.console import ProgressReporter
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.containerd.model import AuthConfig, ImageRecord
    from nodeagent.prewarm.auth import Keyring
    from nodeagent.prewarm.desired import DesiredImage

log = logging.getLogger(__name__)

# Failures worth retrying; auth, not_found and no_space will not fix themselves.
RETRYABLE = frozenset({"registry_unreachable", "stalled", "containerd_unavailable",
                       "cancelled", "other"})
HISTORY = 5

SecretKeyringFactory = Callable[[Sequence["SecretRef"]], Awaitable["Keyring | None"]]
PullGate = Callable[[str], contextlib.AbstractAsyncContextManager[object]]


@dataclass
class PrewarmSummary:
    """Outcome of a reconcile pass."""

    states: list[ImageState]
    unpinned: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.state == PRESENT for s in self.states)

    @property
    def missing(self) -> list[ImageState]:
        return [s for s in self.states if s.state != PRESENT]

    def text(self) -> str:
        pulled = sum(1 for s in self.states if s.state == PRESENT and s.attempts)
        present = sum(1 for s in self.states if s.state == PRESENT)
        head = (f"prewarm: {present}/{len(self.states)} images present ({pulled} pulled, "
                f"{present - pulled} already there)")
        counts = {k: sum(1 for s in self.states if s.state == k) for k in (FAILED, SKIPPED)}
        head += "".join(f", {n} {k}" for k, n in counts.items() if n)
        lines = [head]
        for s in self.missing:
            optional = "" if s.required else " (optional)"
            lines.append(f"  {s.state:<8} {s.image}{optional}: {s.message or s.reason}")
        lines += [f"  unpinned {name}" for name in self.unpinned]
        lines += [f"  removed  {name}" for name in self.removed]
        return "\n".join(lines)


class _Stalled(Exception):
    pass


@dataclass
class _Prepared:
    """What a pull attempt needs before it takes a slot."""

    auth: AuthConfig | None
    layers: dict[str, int] | None  # None: manifest not readable (progress without total)
    error: str | None = None  # credentials could not be obtained


class _Slots:
    """At most ``size`` pulls at once; who goes next is plan.pick_next's decision.

    Grants are made on the next loop iteration, so pulls spawned together are considered
    together rather than first come, first served.
    """

    def __init__(self, size: int):
        self.size = size
        self.busy: dict[str, dict[str, int]] = {}  # key -> layers of pulls in flight
        self._waiting: list[tuple[str, plan.Candidate, asyncio.Future[None]]] = []
        self._scheduled = False

    @contextlib.asynccontextmanager
    async def slot(self, key: str, candidate: plan.Candidate):
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, candidate, future))
        self._schedule()
        try:
            await future
        except asyncio.CancelledError:
            self._waiting = [w for w in self._waiting if w[2] is not future]
            if future.done() and not future.cancelled():
                self._release(key)
            raise
        try:
            yield
        finally:
            self._release(key)

    def _release(self, key: str) -> None:
        self.busy.pop(key, None)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._grant)

    def _grant(self) -> None:
        self._scheduled = False
        self._waiting = [w for w in self._waiting if not w[2].done()]
        while self._waiting and len(self.busy) < self.size:
            busy_layers = {d: n for layers in self.busy.values() for d, n in layers.items()}
            index = plan.pick_next([c for _, c, _ in self._waiting], busy_layers)
            key, candidate, future = self._waiting.pop(index)
            self.busy[key] = dict(candidate.layers or {})
            future.set_result(None)


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
        ``statvfs`` replaces os.statvfs (tests). ``pull_gate`` (agent): ``pull_gate(key)``
        is an async context manager held around each CRI pull (cluster-wide rollout limit)."""
        self.client = client
        self.keyring = keyring
        self.config = config or EngineConfig()
        self.reporter = reporter
        self.secret_keyring = secret_keyring
        self._statvfs = statvfs
        self.pull_gate = pull_gate
        self.monitor = IngestMonitor(client, self.config.poll_interval_s,
                                     on_bytes=metrics.PREWARM_PULLED_BYTES.inc)
        self._desired: list[DesiredImage] = []
        self._states: dict[str, ImageState] = {}
        self._pulls: dict[str, asyncio.Task[None]] = {}
        self._slots = _Slots(self.config.concurrency)
        self._prepared: dict[str, _Prepared] = {}  # first attempt's credentials + layers
        self._needed: dict[str, int] = {}  # in-flight pulls: estimated bytes they add
        self._not_before: dict[str, float] = {}  # given-up images: no new try before
        self._wake = asyncio.Event()
        self._fs: diskguard.FsStatus | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._ticker_users = 0
        self._unpinned: list[str] = []
        self._removed: list[str] = []

    # ------------------------------------------------------------------ public API

    async def reconcile(self, desired: Sequence[DesiredImage] | None = None) -> PrewarmSummary:
        """One pass: pin what is present, pull what is missing (and pin it), unpin what
        left the list; return once every pull succeeded or gave up."""
        if desired is not None:
            self._desired = list(desired)
        self._unpinned, self._removed = [], []
        async with self._ticking():
            await self._sync(retry_given_up=True)
            while self._pulls:
                await asyncio.gather(*self._pulls.values(), return_exceptions=True)
        self._publish()
        return PrewarmSummary(list(self.snapshot().values()), self._unpinned, self._removed)

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
        events = asyncio.create_task(self._watch_events(stop), name="prewarm-events")
        try:
            async with self._ticking():
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
            if self.reporter:
                self.reporter.close()

    def snapshot(self) -> dict[str, ImageState]:
        """Current state of every desired image, keyed by normalized reference (copies)."""
        return {k: dataclasses.replace(s, history=list(s.history))
                for k, s in self._states.items()}

    # ------------------------------------------------------------------ reconcile

    async def _sync(self, retry_given_up: bool) -> None:
        records = await self.client.list_image_records()
        decided = plan.make_plan(
            self._desired, records, unpin_removed=self.config.unpin_removed,
            remove_unlisted=self.config.remove_unlisted,
        )
        self._refresh_states(decided, records)
        await self._apply_labels(decided.pins, pin=True)
        await self._apply_labels(decided.unpins, pin=False)
        for removal in decided.removals:
            await self._remove(removal)
        now = time.monotonic()
        start = [image for image in decided.pulls if _key(image) not in self._pulls and (
            retry_given_up or self._not_before.get(_key(image), 0) <= now)]
        # Read every manifest first so the scheduler sees all layer sets at once.
        limit = asyncio.Semaphore(8)

        async def prepare(image: DesiredImage) -> None:
            async with limit:
                self._prepared[_key(image)] = await self._prepare(image)

        await asyncio.gather(*(prepare(image) for image in start))
        order = {_key(d): i for i, d in enumerate(self._desired)}
        for image in start:
            key = _key(image)
            self._pulls[key] = asyncio.create_task(self._pull(image, order[key]),
                                                   name=f"pull {key}")
        desired_keys = {_key(d) for d in self._desired}
        for key, task in list(self._pulls.items()):
            if key not in desired_keys:
                task.cancel()  # left the list while pulling
        self._publish()

    def _refresh_states(self, decided: plan.Plan, records: Sequence[ImageRecord]) -> None:
        groups = plan.group_by_target(records)
        states: dict[str, ImageState] = {}
        for image in self._desired:
            key = _key(image)
            state = self._states.get(key) or ImageState(image=key)
            state.required, state.pin = image.required, image.pin
            state.priority, state.sets = image.priority, image.sets
            states[key] = state
        for image, target in decided.present:
            state = states[_key(image)]
            recs = groups.get(target, [])
            state.digest = target
            state.image_id = next((r.name for r in recs if r.name.startswith("sha256:")),
                                  state.image_id)
            state.pinned = image.pin  # pins for present images are applied right after
            if state.state != PRESENT:
                self._change(state, PRESENT, reason=None, message="")
        for image in decided.pulls:
            state = states[_key(image)]
            if state.state == PRESENT:  # deleted behind our back: pull it again
                state.attempts, state.started_at, state.finished_at = 0, None, None
                log.warning("hot image disappeared from containerd; pulling it again",
                            extra=fields(image=state.image))
                self._change(state, PENDING, reason=None, message="")
        self._states = states

    async def _apply_labels(self, updates: Sequence[plan.LabelUpdate], pin: bool) -> None:
        done: set[str] = set()
        for update in updates:
            try:
                await self.client.update_image_labels(update.name, update.labels)
            except ContainerdError as exc:
                if isinstance(exc, ContainerdUnavailable):
                    raise
                log.warning("cannot update image labels", extra=fields(
                    record=update.name, error=redact_text(str(exc))))
                continue
            if update.image not in done:
                done.add(update.image)
                log.info("pinned image" if pin else "unpinned image (left the hot list)",
                         extra=fields(image=update.image))
                if not pin:
                    self._unpinned.append(update.image)

    async def _remove(self, removal: plan.Removal) -> None:
        name = next((n for n in removal.names if "@" not in n and ":" in n), removal.ref)
        try:
            await self.client.remove_image(removal.ref)
        except ContainerdError as exc:
            log.warning("cannot remove unlisted image", extra=fields(
                image=name, error=redact_text(str(exc))))
            return
        log.info("removed image that left the hot list (--remove-unlisted)",
                 extra=fields(image=name, digest=removal.target_digest))
        self._removed.append(name)

    # ------------------------------------------------------------------ pulls

    async def _pull(self, image: DesiredImage, order: int) -> None:
        """Pull one image with retries; always ends in PRESENT, FAILED or SKIPPED."""
        key = _key(image)
        state = self._states.get(key) or ImageState(image=key)
        state.attempts, state.history = 0, []
        state.started_at, state.finished_at = time.time(), None
        self._change(state, PENDING, reason=None, message="")
        try:
            for attempt in range(self.config.max_retries + 1):
                prepared = self._prepared.pop(key, None) or await self._prepare(image)
                candidate = plan.Candidate(image.priority, order, prepared.layers)
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
            self._needed.pop(key, None)
            self.monitor.untrack(key)
            self._publish()

    def _give_up(self, key: str, state: ImageState, reason: str) -> None:
        attempts = f" after {state.attempts} attempts" if state.attempts > 1 else ""
        self._not_before[key] = time.monotonic() + self.config.backoff_max_s
        state.finished_at = time.time()
        self._change(state, FAILED, reason=reason, message=f"{state.message}{attempts}")

    async def _prepare(self, image: DesiredImage) -> _Prepared:
        """Credentials and the manifest's layers, before taking a pull slot."""
        try:
            auth = await self._credentials(image)
        except NodeagentError as exc:  # docker config, credential provider plugin
            return _Prepared(None, None, f"credentials for {_key(image)}: {exc}")
        return _Prepared(auth, await self._resolve(image, auth))

    async def _attempt(
        self, image: DesiredImage, state: ImageState, prepared: _Prepared
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
        except _Stalled:
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
        key = _key(image)
        progress = await self.monitor.track(key, layers)
        state.bytes_total = progress.total
        state.bytes_done = progress.bytes_done
        skip = await self._disk_guard(key, progress.done, layers)
        if skip is not None:
            self.monitor.untrack(key)
            state.finished_at = time.time()
            self._not_before[key] = time.monotonic() + self.config.backoff_max_s
            metrics.PREWARM_PULL_FAILURES.labels(reason="disk_guard").inc()
            log.warning("skipped pull: disk-space guard", extra=fields(
                image=state.image, reason=skip))
            self._change(state, SKIPPED, reason="disk_guard", message=skip)
            return "disk_guard"
        state.phase = DOWNLOADING
        async with self.pull_gate(key) if self.pull_gate else contextlib.nullcontext():
            image_id = await self._pull_watched(image, auth, progress)
        await self._after_pull(image, state, image_id)
        return None

    def _failed(self, state: ImageState, reason: str, message: str) -> str:
        message = redact_text(message)
        state.message = message
        state.history = [*state.history[-(HISTORY - 1):], f"{reason}: {message}"]
        metrics.PREWARM_PULL_FAILURES.labels(reason=metrics.failure_reason(reason)).inc()
        log.warning("pull attempt failed", extra=fields(
            image=state.image, attempt=state.attempts, reason=reason, error=message))
        return reason

    async def _credentials(self, image: DesiredImage) -> AuthConfig | None:
        if image.pull_secrets and self.secret_keyring is not None:
            secret_ring = await self.secret_keyring(image.pull_secrets)
            if secret_ring is not None:
                found = await secret_ring.credentials_for(image.reference)
                if found is not None:
                    return found
        if self.keyring is None:
            return None
        return await self.keyring.credentials_for(image.reference)

    async def _resolve(
        self, image: DesiredImage, auth: AuthConfig | None
    ) -> dict[str, int] | None:
        """Layer digests and sizes from the registry, or None (progress without total)."""
        from nodeagent.registry.resolve import resolve_manifest

        try:
            resolved = await asyncio.wait_for(
                resolve_manifest(image.reference, auth, image.platform, self.config.hosts_dir),
                timeout=min(60.0, self.config.stall_timeout_s),
            )
        except (Exception, TimeoutError) as exc:
            log.info("cannot read the manifest; progress will show bytes without a total",
                     extra=fields(image=_key(image), error=redact_text(scrub(str(exc), auth))))
            return None
        layers: dict[str, int] = {}
        for digest, size in resolved.layers:
            layers[digest] = size
        return layers

    async def _disk_guard(
        self, key: str, done: set[str], layers: dict[str, int] | None
    ) -> str | None:
        """None to go ahead, else the skip message."""
        missing = sum(size for d, size in (layers or {}).items() if d not in done)
        needed = diskguard.estimate_needed(missing, self.config.unpacked_ratio)
        if self.config.high_water_percent >= 100:
            self._needed[key] = needed
            return None
        try:
            fs = await self._read_fs()
        except diskguard.DiskGuardError as exc:
            return str(exc)
        reserved = self._reserved(exclude=key)
        decision = diskguard.check(key, needed, fs, self.config.high_water_percent, reserved)
        if decision.allowed:
            self._needed[key] = needed
            return None
        return decision.message

    def _reserved(self, exclude: str) -> int:
        """What pulls in flight will still add (their estimate minus what they wrote)."""
        total = 0
        for key, needed in self._needed.items():
            progress = self.monitor.images.get(key)
            written = progress.bytes_done * (1 + self.config.unpacked_ratio) if progress else 0
            if key != exclude:
                total += max(0, int(needed - written))
        return total

    async def _read_fs(self) -> diskguard.FsStatus:
        usages = await self.client.image_fs_info()
        kwargs = {"statvfs": self._statvfs} if self._statvfs else {}
        fs = diskguard.read_fs_status(usages, self.config.host_root, **kwargs)
        self._fs = fs
        metrics.IMAGE_FS_USED.set(fs.used_bytes)
        metrics.IMAGE_FS_CAPACITY.set(fs.capacity_bytes)
        metrics.IMAGE_FS_CONTAINERD_USED.set(fs.containerd_used_bytes)
        return fs

    async def _pull_watched(
        self, image: DesiredImage, auth: AuthConfig | None, progress: ImageProgress
    ) -> str:
        """CRI PullImage, cancelled when the download stalls."""
        pull = asyncio.create_task(self.client.pull_image(str(image.reference), auth))
        progress.reset_clock(time.monotonic())
        try:
            while True:
                done, _ = await asyncio.wait({pull}, timeout=self.config.poll_interval_s)
                if done:
                    return pull.result()
                if progress.stalled(time.monotonic(), self.config.stall_timeout_s):
                    raise _Stalled()
        finally:
            if not pull.done():
                pull.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pull

    async def _after_pull(self, image: DesiredImage, state: ImageState, image_id: str) -> None:
        """Label every record of the pulled image: pulled marker, and the pin."""
        record = await self.client.get_image_record(image_id)
        target = record.target_digest if record else state.digest
        records = await self.client.list_image_records(
            [f"target.digest=={quote_filter_value(target)}"]) if target else []
        for rec in records:
            labels = {plan.PULLED_LABEL: plan.MARKER_VALUE}
            if image.pin and rec.labels.get(plan.CRI_PINNED_LABEL) != plan.CRI_PINNED_VALUE:
                labels.update(plan.PIN_LABELS)
            await self.client.update_image_labels(rec.name, labels)
        state.digest, state.image_id, state.pinned = target, image_id, image.pin
        state.finished_at = time.time()
        if state.bytes_total is not None:
            state.bytes_done = state.bytes_total
        state.phase, state.eta_s = None, None
        if state.duration_s is not None:
            metrics.PREWARM_PULL_DURATION.observe(state.duration_s)
        self._change(state, PRESENT, reason=None, message="")

    # ------------------------------------------------------------------ watch mode

    async def _watch_events(self, stop: asyncio.Event) -> None:
        """Wake a reconcile when containerd deletes an image; resubscribe after restarts."""
        delay = self.config.backoff_initial_s
        while not stop.is_set():
            try:
                async for event in self.client.subscribe_image_events():
                    delay = self.config.backoff_initial_s
                    if event.topic == "/images/delete":
                        log.debug("image deleted", extra=fields(record=event.name))
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # stream broken (containerd restart): resubscribe
                log.debug("event stream ended: %s", exc)
            self._wake.set()  # events may have been missed meanwhile
            await asyncio.sleep(delay)
            delay = min(self.config.backoff_max_s, delay * 2)

    def _next_wake(self) -> float:
        """Seconds until the next scheduled reconcile (resync or a given-up image's retry)."""
        now = time.monotonic()
        waits = [t - now for t in self._not_before.values() if t > now]
        return max(0.5, min([self.config.resync_interval_s, *waits]))

    # ------------------------------------------------------------------ progress

    @contextlib.asynccontextmanager
    async def _ticking(self):
        self._ticker_users += 1
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name="prewarm-progress")
        try:
            yield
        finally:
            self._ticker_users -= 1
            if self._ticker_users == 0 and self._ticker is not None:
                self._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ticker
                self._ticker = None

    async def _tick_loop(self) -> None:
        last_fs = 0.0
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            if self.monitor.images:
                try:
                    await self.monitor.poll_once()
                except Exception as exc:  # containerd away: progress just pauses
                    log.debug("progress poll failed: %s", exc)
            self._fold_progress()
            if time.monotonic() - last_fs > 10:
                last_fs = time.monotonic()
                with contextlib.suppress(Exception):
                    await self._read_fs()
            self._publish()

    def _fold_progress(self) -> None:
        for key, progress in self.monitor.images.items():
            state = self._states.get(key)
            if state is None or state.state != PULLING:
                continue
            state.bytes_done = progress.bytes_done
            state.bytes_total = progress.total
            state.rate_bps = progress.rate()
            state.eta_s = progress.eta()
            if state.phase != "resolving":
                state.phase = progress.phase

    def _publish(self) -> None:
        states = list(self._states.values())
        metrics.set_image_states(s.state for s in states)
        metrics.PREWARM_PINNED_IMAGES.set(sum(1 for s in states if s.state == PRESENT
                                              and s.pinned))
        if self.reporter:
            self.reporter.update(states, self._fs)

    def _change(self, state: ImageState, new: str, reason: str | None, message: str) -> None:
        changed = state.state != new
        state.state, state.reason, state.message = new, reason, message
        if new not in ACTIVE_STATES:
            state.phase, state.rate_bps, state.eta_s = None, 0.0, None
        if changed and self.reporter:
            self.reporter.event(state)
        if changed:
            self._publish()


def _key(image: DesiredImage) -> str:
    return str(image.reference) if image.platform is None else (
        f"{image.reference} ({image.platform})")

