"""What `nodeagent models ls` shows: each cached model with its size, source, how it was
verified, whether a process or a mount uses it and whether the given lists name it.

Read-only (no lock, nothing removed), so it can run while a sync works on the cache.
``verified`` is ``yes`` when every file was checked against a checksum, an MD5 ETag or
an OCI digest, ``size only`` or ``partly`` when some files could only be checked by
size (S3 objects without checksum or MD5 ETag), ``no`` for a tree without a trusted
manifest (left by a crash, re-fetched by the next sync), and ``damaged`` when a file is
missing or no longer has the size it was published with.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.console import fmt_bytes
from nodeagent.models import inuse, manifest
from nodeagent.models.cache import tree_bytes
from nodeagent.models.layout import CacheLayout
from nodeagent.models.publish import trusted_manifest


@dataclass
class Row:
    name: str
    size_bytes: int
    source: str
    verified: str  # yes | size only | partly | no | damaged
    in_use: str  # why ("" when not)
    listed: bool | None  # None: no list given
    priority: int = 0
    required: bool = False
    files: int = 0
    published_at: float | None = None
    checks: dict[str, int] = field(default_factory=dict)  # how many files each way

    def to_json(self) -> dict:
        return {"name": self.name, "sizeBytes": self.size_bytes, "source": self.source,
                "verified": self.verified, "verification": self.checks,
                "inUse": bool(self.in_use), "inUseBy": self.in_use or None,
                "listed": self.listed, "priority": self.priority, "required": self.required,
                "files": self.files, "publishedAt": self.published_at}


def inventory(layout: CacheLayout, listed: Collection[str] | None) -> list[Row]:
    rows = [_row(layout, name, listed) for name in layout.model_names()]
    rows = [r for r in rows if r is not None]
    busy = inuse.users([layout.tree(r.name) for r in rows]) if rows else {}
    for row in rows:
        row.in_use = busy.get(layout.tree(row.name), "")
    return rows


def _row(layout: CacheLayout, name: str, listed: Collection[str] | None) -> Row | None:
    tree = layout.tree(name)
    if not tree.is_dir():
        return None  # a manifest whose tree is gone: nothing cached (sync tidies it)
    is_listed = None if listed is None else name in listed
    m = trusted_manifest(layout, name)
    if m is None:
        return Row(name, tree_bytes(tree), "", "no", "", is_listed)
    checks = Counter(e.verified.split(" ")[0] for e in m.objects)
    return Row(name, m.total_bytes, m.source, _verified(tree, m, checks), "", is_listed,
               m.priority, m.required, len(m.objects), m.published_at, dict(checks))


def _verified(tree: Path, m: manifest.Manifest, checks: Counter) -> str:
    for entry in m.objects:
        try:
            if os.stat(tree / entry.path, follow_symlinks=False).st_size != entry.size:
                return "damaged"
        except OSError:
            return "damaged"
    sized = checks.get("size", 0)
    if not sized:
        return "yes"
    return "size only" if sized == len(m.objects) else "partly"


def table(rows: list[Row], cache_dir: Path) -> str:
    if not rows:
        return f"no models in {cache_dir}"
    head = ("NAME", "SIZE", "VERIFIED", "IN-USE", "LISTED", "SOURCE")
    lines = [head] + [(r.name, fmt_bytes(r.size_bytes), r.verified,
                       "yes" if r.in_use else "no",
                       "-" if r.listed is None else ("yes" if r.listed else "no"),
                       r.source or "(incomplete: no trusted manifest)") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    out = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  "
           + line[-1] for line in lines]
    total = sum(r.size_bytes for r in rows)
    return "\n".join([*out, f"{len(rows)} models, {fmt_bytes(total)} in {cache_dir}"])
