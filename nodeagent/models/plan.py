"""Pure decisions of a sync: what is unchanged, what to fetch, and in which ranges.

``diff`` compares the source's listing with the published manifest: an object with the
same path, size, ETag (and version, when both know it) whose file is still there is
reused (hard-linked into the new version, no byte downloaded); everything else is
fetched. ``split`` cuts an object into ranged GETs: aligned to its upload parts when
the verification is per part (composite checksum, multipart ETag), else fixed-size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nodeagent.models.checksums import Expected
from nodeagent.models.source import RemoteObject

MiB = 2**20
RANGE_BYTES = 32 * MiB  # measured: 16-32 MiB ranges were fastest behind a 40 MiB/s link


@dataclass(frozen=True)
class Range:
    path: str
    start: int
    length: int
    parts: tuple[int, ...] = ()  # part sizes inside the range, for per-part hashing

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Diff:
    reuse: tuple[RemoteObject, ...] = ()  # unchanged: link from the published tree
    fetch: tuple[RemoteObject, ...] = ()
    removed: tuple[str, ...] = ()  # paths in the published tree no longer in the source

    @property
    def up_to_date(self) -> bool:
        return not self.fetch and not self.removed


@dataclass
class ModelPlan:
    """One model's work, filled in as the facts arrive (details of fetched objects)."""

    name: str
    diff: Diff
    expected: dict[str, Expected] = field(default_factory=dict)  # path -> check
    ranges: dict[str, tuple[Range, ...]] = field(default_factory=dict)

    @property
    def fetch_bytes(self) -> int:
        return sum(o.size for o in self.diff.fetch)


def diff(listing: Sequence[RemoteObject], published: Mapping[str, RemoteObject] | None,
         present: Mapping[str, int]) -> Diff:
    """``published``: the manifest's objects (None: nothing trusted is published);
    ``present``: sizes of the files now in the published tree."""
    reuse, fetch = [], []
    for obj in listing:
        old = (published or {}).get(obj.path)
        if old is not None and old.same_content(obj) and present.get(obj.path) == obj.size:
            reuse.append(old)
        else:
            fetch.append(obj)
    listed = {o.path for o in listing}
    removed = tuple(sorted(p for p in (published or {}) if p not in listed))
    return Diff(tuple(reuse), tuple(fetch), removed)


def split(obj: RemoteObject, expected: Expected, range_bytes: int = RANGE_BYTES) -> tuple[
        Range, ...]:
    """Ranges covering the object; whole upload parts per range when checked per part."""
    if obj.size == 0:
        return (Range(obj.path, 0, 0),)
    if expected.per_part:
        ranges, start, group = [], 0, []
        for size in expected.parts:
            group.append(size)
            if sum(group) >= range_bytes:
                ranges.append(Range(obj.path, start, sum(group), tuple(group)))
                start += sum(group)
                group = []
        if group:
            ranges.append(Range(obj.path, start, sum(group), tuple(group)))
        return tuple(ranges)
    return tuple(Range(obj.path, s, min(range_bytes, obj.size - s))
                 for s in range(0, obj.size, range_bytes))


def order_models(names_by_priority: Mapping[str, int]) -> list[str]:
    """Highest priority first; ties in the order given."""
    return sorted(names_by_priority, key=lambda n: -names_by_priority[n])
