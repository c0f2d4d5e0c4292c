"""``sync``: make the cache hold exactly the listed models, complete and verified.

For each model, highest priority first: list the source (S3 or OCI, sources.py),
compare with the published manifest (plan.diff), and if anything changed build a new
version in the staging dir (unchanged files hard-linked from the published tree, the
rest downloaded in ranges, resuming what a killed run had finished), check disk space
first (evicting unlisted models when allowed), verify every object, then publish it
atomically (publish.py). One pool of connections serves all models. ``sync`` blocks;
the agent calls it in a thread (keeper.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent import metrics
from nodeagent.log import fields
from nodeagent.models import cache, manifest, plan, space
from nodeagent.models.errors import ModelError
from nodeagent.models.evict import plan_eviction
from nodeagent.models.journal import Journal
from nodeagent.models.layout import CacheLayout, resolve_cache_dir
from nodeagent.models.options import SyncOptions
from nodeagent.models.pool import WorkerPool
from nodeagent.models.progress import ModelProgress, Reporter
from nodeagent.models.publish import fsync_tree, publish, remove_tree, trusted_manifest
from nodeagent.models.runner import ModelJob
from nodeagent.models.source import ModelSource
from nodeagent.models.sources import Sources
from nodeagent.models.spec import ModelSpec
from nodeagent.prewarm.diskguard import default_high_water_percent

log = logging.getLogger("nodeagent.models")
@dataclass
class ModelResult:
    name: str
    state: str  # present (already up to date) | updated | failed | skipped
    downloaded_bytes: int = 0
    seconds: float = 0.0
    error: ModelError | None = None


@dataclass
class SyncResult:
    cache_dir: Path
    models: list[ModelResult]
    evicted: list[str]

    @property
    def ok(self) -> bool:
        return all(m.state in ("present", "updated") for m in self.models)


SourceFactory = Callable[[ModelSpec], ModelSource]


def sync(specs: Sequence[ModelSpec], options: SyncOptions | None = None,
         reporter: Reporter | None = None, source_factory: SourceFactory | None = None,
         ) -> SyncResult:
    options = options or SyncOptions()
    if len({s.name for s in specs}) != len(specs):
        dup = next(s.name for s in specs if sum(x.name == s.name for x in specs) > 1)
        raise ModelError(dup, "", "invalid_source", "listed twice: names must be unique")
    high_water = (options.high_water_percent if options.high_water_percent is not None
                  else default_high_water_percent())
    layout = CacheLayout(resolve_cache_dir(options.cache_dir))
    own = Sources(options) if source_factory is None else None
    run = _Run(layout, specs, options, high_water, reporter, source_factory or own)
    try:
        with cache.locked(layout):
            cache.clean(layout, {s.name for s in specs})
            return run.execute()
    finally:
        if own is not None:
            own.close()


class _Run:
    def __init__(self, layout: CacheLayout, specs: Sequence[ModelSpec], options: SyncOptions,
                 high_water: float, reporter: Reporter | None, factory: SourceFactory):
        self.layout, self.options, self.high_water = layout, options, high_water
        self.specs = sorted(specs, key=lambda s: -s.priority)
        self.reporter, self.factory = reporter, factory
        self.progress = {s.name: ModelProgress(s.name, s.source) for s in self.specs}
        self.results: dict[str, ModelResult] = {}
        self.evicted: list[str] = []
        self.reserved = 0
        self.jobs: list[ModelJob] = []
        self._lock = threading.Lock()
        self._done = threading.Event()

    def execute(self) -> SyncResult:
        pool = WorkerPool(self.options.concurrency)
        ticker = threading.Thread(target=self._tick, daemon=True)
        ticker.start()
        try:
            # Plan every model (and check space) before any byte moves, so the guard
            # sees the filesystem as it is plus what the planned downloads reserve.
            for rank, spec in enumerate(self.specs):
                if self.options.stop.is_set():
                    self._finish(spec.name, "skipped", "cancelled", "stopped before it began")
                    continue
                self._plan(rank, spec)
            for job in self.jobs:
                job.progress.state, job.progress.started = "downloading", time.monotonic()
                self._event(job.progress)
                job.start(pool)
            pool.wait()
            for spec in self.specs:  # stopped (options.stop) before it could finish
                if spec.name not in self.results:
                    self._failed(spec.name, ModelError(
                        spec.name, spec.source, "cancelled",
                        "stopped; the partial download is kept and resumes on the next run"))
        finally:
            self._done.set()
            pool.close()
            for job in self.jobs:
                job.journal.close()
                job.close_files()
            ticker.join(timeout=5)
            if self.reporter is not None:
                self.reporter.update(list(self.progress.values()))
                self.reporter.close()
        cache.export_metrics(self.layout)
        return SyncResult(self.layout.root, [self.results[s.name] for s in self.specs],
                          self.evicted)

    def _tick(self) -> None:
        while not self._done.wait(0.25):
            if self.reporter is not None:
                self.reporter.update(list(self.progress.values()))

    # ------------------------------------------------------------------ one model
    def _plan(self, rank: int, spec: ModelSpec) -> None:
        source = self.factory(spec)
        progress = self.progress[spec.name]
        try:
            listing = source.list_objects()
        except ModelError as exc:
            return self._failed(spec.name, exc)
        tree = self.layout.tree(spec.name)
        current = trusted_manifest(self.layout, spec.name)
        present = _sizes(tree, current) if current else {}
        diff = plan.diff(listing, current.by_path() if current else None, present)
        if diff.up_to_date and current is not None:
            if (current.priority, current.required) != (spec.priority, spec.required):
                current.priority, current.required = spec.priority, spec.required
                manifest.write(self.layout.manifest(spec.name), current)
            progress.bytes_total = progress.bytes_done = 0
            return self._finish(spec.name, "present", "", "up to date")
        staging = self.layout.staging(spec.name)
        journal = Journal(staging / "journal.jsonl", spec.source)
        fetch_keys = {(o.path, o.etag, o.size) for o in diff.fetch}
        kept = [d for d in journal.load() if (d.path, d.etag, d.size) in fetch_keys]
        if not kept:
            remove_tree(staging)
        (staging / "tree").mkdir(parents=True, exist_ok=True)
        _prune(staging / "tree", {o.path for o in (*diff.fetch, *diff.reuse)})
        journal.open(kept)
        _link_unchanged(tree, staging / "tree", diff)
        resumed = sum(d.length for d in kept)
        needed = max(0, plan.ModelPlan(spec.name, diff).fetch_bytes - resumed)
        refusal = self._make_room(spec, needed)
        if refusal:
            journal.close()
            return self._failed(spec.name, ModelError(spec.name, spec.source, "disk_guard",
                                                      refusal), state="skipped")
        with self._lock:
            self.reserved += needed
        progress.bytes_total = sum(o.size for o in diff.fetch)
        job = ModelJob(spec.name, source, staging / "tree", journal, progress, rank,
                       diff.fetch, {(d.path, d.start): d for d in kept},
                       lambda j, s=spec, c=current: self._publish(j, s, c, needed),
                       self._job_failed, self.options.stop,
                       range_bytes=self.options.range_bytes, durable=self.options.durable)
        self.jobs.append(job)

    def _make_room(self, spec: ModelSpec, needed: int) -> str:
        fs = space.fs_status(self.layout.root)
        over = space.over_by(fs, needed, self.reserved, self.high_water)
        if not over:
            return ""
        freed = 0
        if self.options.evict:
            listed = {s.name for s in self.specs}
            eviction = plan_eviction(cache.candidates(self.layout, listed), over)
            if eviction.short_bytes == 0:
                done = cache.evict(self.layout, eviction)
                self.evicted += done
                # Counted from the plan: filesystems free deleted blocks lazily (XFS).
                freed = sum(m.size_bytes for m in eviction.evict if m.name in done)
            else:
                freed = eviction.freed_bytes  # what evicting could free: too little
        if freed >= over:
            return ""
        return space.refusal(spec.name, needed, fs, self.high_water, self.reserved, freed)

    def _publish(self, job: ModelJob, spec: ModelSpec, old: manifest.Manifest | None,
                 reserved: int) -> None:
        try:
            new_tree = self.layout.staging(spec.name) / "tree"
            if self.options.durable:
                fsync_tree(new_tree)
            entries = [manifest.Entry(e.path, e.key, e.size, e.etag, e.version_id, "reused",
                                      "") for e in _reused(old, job)]
            for obj in job.fetch:
                how, value = job.verified[obj.path]
                entries.append(manifest.Entry(obj.path, obj.key, obj.size, obj.etag,
                                              job.details.get(obj.path, obj.version_id),
                                              how, value))
            if old is not None:  # keep how reused objects were verified back then
                before = {e.path: e for e in old.objects}
                entries = [before.get(e.path, e) if e.verified == "reused" else e
                           for e in entries]
            m = manifest.Manifest(spec.name, spec.source, spec.priority, spec.required,
                                  tree_inode=new_tree.stat().st_ino,
                                  objects=sorted(entries, key=lambda e: e.path))
            job.journal.close()
            old_tree = publish(self.layout, spec.name, m)
            remove_tree(self.layout.staging(spec.name))
            if old_tree is not None:
                cache.empty_trash(self.layout)
        except OSError as exc:
            return job.fail(ModelError(spec.name, spec.source, "other",
                                       f"publishing failed: {exc.strerror or exc}"))
        with self._lock:
            self.reserved -= reserved
        seconds = time.monotonic() - job.progress.started
        metrics.MODELS_SYNC_DURATION.observe(seconds)
        self.results[spec.name] = ModelResult(spec.name, "updated", job.downloaded, seconds)
        job.progress.finished = time.monotonic()
        job.progress.message = f"published {len(m.objects)} files in {seconds:.1f}s"
        job.progress.state = "present"
        self._event(job.progress)

    # ------------------------------------------------------------------ outcomes
    def _job_failed(self, job: ModelJob) -> None:
        assert job.error is not None
        self._failed(job.name, job.error)

    def _failed(self, name: str, error: ModelError, state: str = "failed") -> None:
        metrics.MODELS_FAILURES.labels(reason=error.reason).inc()
        log.debug("model failed", extra=fields(model=name, reason=error.reason))
        self.results[name] = ModelResult(name, state, error=error)
        p = self.progress[name]
        p.state, p.reason, p.message, p.finished = state, error.reason, error.detail, (
            time.monotonic())
        self._event(p)

    def _finish(self, name: str, state: str, reason: str, message: str) -> None:
        self.results[name] = ModelResult(name, state)
        p = self.progress[name]
        p.state, p.reason, p.message, p.finished = state, reason, message, time.monotonic()
        self._event(p)

    def _event(self, progress: ModelProgress) -> None:
        if self.reporter is not None:
            self.reporter.event(progress)


def _sizes(tree: Path, current: manifest.Manifest) -> dict[str, int]:
    sizes = {}
    for e in current.objects:
        try:
            sizes[e.path] = os.stat(tree / e.path, follow_symlinks=False).st_size
        except OSError:
            continue
    return sizes


def _prune(staged: Path, wanted: set[str]) -> None:
    """Drop files an interrupted run left that the new version must not contain."""
    for dirpath, _dirs, files in os.walk(staged, topdown=False):
        for name in files:
            path = Path(dirpath) / name
            if str(path.relative_to(staged)) not in wanted:
                path.unlink()
        if dirpath != str(staged) and not os.listdir(dirpath):
            os.rmdir(dirpath)


def _link_unchanged(published: Path, staged: Path, diff: plan.Diff) -> None:
    """Hard-link unchanged files into the new version: no copy, no download."""
    for obj in diff.reuse:
        target = staged / obj.path
        if target.exists():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(published / obj.path, target)


def _reused(old: manifest.Manifest | None, job: ModelJob) -> list[Any]:
    if old is None:
        return []
    fetched = {o.path for o in job.fetch}
    listed = {p for p in old.by_path()}
    return [e for e in old.objects if e.path not in fetched and e.path in listed
            and (job.tree / e.path).exists()]
