"""``gc``: drop models no longer listed (never one listed, never one in use), stale
staging dirs and trash.

``free_bytes=None`` evicts every unlisted model that nobody uses; a number evicts just
enough of them (orphans, then lowest priority, then oldest) to free that much.
``dry_run`` only plans. The report says what was evicted and what was kept and why.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.models import cache
from nodeagent.models.evict import CachedModel, plan_eviction
from nodeagent.models.layout import CacheLayout, resolve_cache_dir


@dataclass
class GcReport:
    cache_dir: Path
    evicted: list[CachedModel] = field(default_factory=list)  # planned, with dry_run
    in_use: list[tuple[str, str]] = field(default_factory=list)  # (name, why) kept
    listed: list[str] = field(default_factory=list)  # kept: still listed
    skipped: list[str] = field(default_factory=list)  # planned, but in use by now
    dry_run: bool = False

    @property
    def evicted_names(self) -> list[str]:
        return [m.name for m in self.evicted]

    @property
    def freed_bytes(self) -> int:
        return sum(m.size_bytes for m in self.evicted)


def gc(listed: Collection[str], cache_dir: str | None = None,
       free_bytes: int | None = None, dry_run: bool = False) -> GcReport:
    layout = CacheLayout(resolve_cache_dir(cache_dir))
    report = GcReport(layout.root, dry_run=dry_run)
    if not layout.root.is_dir():
        return report  # no cache yet: nothing to collect (and nothing created)
    with cache.locked(layout):
        if not dry_run:
            cache.clean(layout, listed)
        models = cache.candidates(layout, listed)
        need = sum(m.size_bytes for m in models) + 1 if free_bytes is None else free_bytes
        plan = plan_eviction(models, need)
        report.listed = sorted(m.name for m in models if m.listed)
        report.in_use = list(plan.protected)
        if dry_run:
            report.evicted = list(plan.evict)
            return report
        done = set(cache.evict(layout, plan))
        report.evicted = [m for m in plan.evict if m.name in done]
        report.skipped = [m.name for m in plan.evict if m.name not in done]
        cache.export_metrics(layout)
    return report
