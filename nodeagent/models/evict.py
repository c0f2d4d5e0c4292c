"""Which cached models to evict when the cache must shrink: a pure plan, then apply.

Only models no longer listed are candidates, never one in use (inuse.py). Orphans (a tree
without a trusted manifest, left by a crash) go first, then the lowest priority, then the
least recently published, until enough bytes are freed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedModel:
    name: str
    size_bytes: int
    priority: int
    listed: bool
    in_use: str = ""  # why it is in use ("" when not)
    published_at: float = 0.0
    orphan: bool = False  # no trusted manifest


@dataclass(frozen=True)
class EvictionPlan:
    evict: tuple[CachedModel, ...]
    freed_bytes: int
    short_bytes: int  # still missing after evicting every candidate (0: enough)
    protected: tuple[tuple[str, str], ...]  # (name, why it is kept) for unlisted models


def plan_eviction(models: Sequence[CachedModel], need_bytes: int) -> EvictionPlan:
    protected = tuple((m.name, f"in use: {m.in_use}") for m in models
                      if not m.listed and m.in_use)
    candidates = sorted((m for m in models if not m.listed and not m.in_use),
                        key=lambda m: (not m.orphan, m.priority, m.published_at,
                                       -m.size_bytes, m.name))
    chosen, freed = [], 0
    for model in candidates:
        if freed >= need_bytes:
            break
        chosen.append(model)
        freed += model.size_bytes
    return EvictionPlan(tuple(chosen), freed, max(0, need_bytes - freed), protected)
