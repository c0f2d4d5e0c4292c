"""The cache as a whole: its lock, what it holds, cleaning up after dead runs, eviction.

``entries`` is what ``nodeagent models ls`` shows; ``evict`` carries out an
evict.plan_eviction plan; ``clean`` removes staging dirs of models no longer wanted and
trash nobody uses. The lock (flock, released by the kernel when a run dies) makes sure
one run at a time works on a cache dir, so any staging dir found while holding it was left
by a dead run.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nodeagent import metrics
from nodeagent.log import fields
from nodeagent.models import inuse
from nodeagent.models.errors import ModelCacheError
from nodeagent.models.evict import CachedModel, EvictionPlan
from nodeagent.models.layout import CacheLayout
from nodeagent.models.publish import (
    finish_interrupted,
    move_to_trash,
    remove_tree,
    trusted_manifest,
)

log = logging.getLogger("nodeagent.models")


@contextmanager
def locked(layout: CacheLayout) -> Iterator[None]:
    layout.ensure()
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ModelCacheError(f"another nodeagent run (pid {holder}) is working on the "
                                  f"model cache {layout.root}; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Entry:
    name: str
    size_bytes: int
    priority: int
    source: str
    published_at: float
    orphan: bool  # a tree without a trusted manifest (a crash mid-publish)
    objects: int


def tree_bytes(tree: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name), follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def entries(layout: CacheLayout) -> list[Entry]:
    found = []
    for name in layout.model_names():
        tree = layout.tree(name)
        m = trusted_manifest(layout, name)
        if m is not None:
            found.append(Entry(name, m.total_bytes, m.priority, m.source, m.published_at,
                               False, len(m.objects)))
        elif tree.is_dir():
            found.append(Entry(name, tree_bytes(tree), 0, "", tree.stat().st_mtime, True, 0))
        else:  # a manifest whose tree is gone
            layout.manifest(name).unlink(missing_ok=True)
    return found


def export_metrics(layout: CacheLayout) -> None:
    current = entries(layout)
    metrics.MODELS_CACHED.set(len(current))
    metrics.MODELS_CACHE_BYTES.set(sum(e.size_bytes for e in current))


def candidates(layout: CacheLayout, listed: Collection[str]) -> list[CachedModel]:
    """Every cached model, with in-use checks for the unlisted ones (evictable)."""
    current = entries(layout)
    unlisted = [layout.tree(e.name) for e in current if e.name not in listed]
    busy = inuse.users(unlisted) if unlisted else {}
    return [CachedModel(e.name, e.size_bytes, e.priority, e.name in listed,
                        busy.get(layout.tree(e.name), ""), e.published_at, e.orphan)
            for e in current]


def evict(layout: CacheLayout, plan: EvictionPlan) -> list[str]:
    """Manifest first (the tree then reads as an orphan), then the tree, via the trash."""
    done = []
    for model in plan.evict:
        tree = layout.tree(model.name)
        still_busy = inuse.users([tree]) if tree.exists() else {}
        if still_busy:
            log.warning("not evicting: now in use", extra=fields(
                model=model.name, why=still_busy[tree]))
            continue
        layout.manifest(model.name).unlink(missing_ok=True)
        if tree.exists():
            remove_tree(move_to_trash(tree, layout.trash))
        metrics.MODELS_EVICTIONS.inc()
        metrics.MODELS_EVICTED_BYTES.inc(model.size_bytes)
        log.info("model evicted", extra=fields(model=model.name, bytes=model.size_bytes,
                                               priority=model.priority))
        done.append(model.name)
    return done


def clean(layout: CacheLayout, wanted: Collection[str]) -> None:
    """Publishes a dead run left half-done, staging dirs of models not wanted now (dead
    runs), and trash nobody uses."""
    for name in finish_interrupted(layout):
        log.info("finished publishing a model a dead run had swapped in",
                 extra=fields(model=name))
    for entry in _dirs(layout.staging_root):
        if entry.name not in wanted:
            log.info("removing a stale staging dir", extra=fields(path=str(entry)))
            remove_tree(entry)
    empty_trash(layout)


def empty_trash(layout: CacheLayout) -> None:
    trees = _dirs(layout.trash)
    busy = inuse.users(trees) if trees else {}
    for tree in trees:
        if tree in busy:
            log.info("old model version kept while in use", extra=fields(
                path=str(tree), why=busy[tree]))
        else:
            remove_tree(tree)


def _dirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []
