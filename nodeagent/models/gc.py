"""``gc``: drop models no longer listed (never one in use), stale staging and trash.

``free_bytes=None`` evicts every unlisted model that nobody uses; a number evicts just
enough of them (lowest priority first) to free that much. Returns the names evicted.
"""

from __future__ import annotations

from collections.abc import Collection

from nodeagent.models import cache
from nodeagent.models.evict import plan_eviction
from nodeagent.models.layout import CacheLayout, resolve_cache_dir


def gc(listed: Collection[str], cache_dir: str | None = None,
       free_bytes: int | None = None) -> list[str]:
    layout = CacheLayout(resolve_cache_dir(cache_dir))
    with cache.locked(layout):
        cache.clean(layout, listed)
        models = cache.candidates(layout, listed)
        need = sum(m.size_bytes for m in models) + 1 if free_bytes is None else free_bytes
        evicted = cache.evict(layout, plan_eviction(models, need))
        cache.export_metrics(layout)
    return evicted
