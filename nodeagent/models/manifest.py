"""The manifest beside each published model: ``<cache dir>/<name>.manifest.json``.

It records the source, every object (path, key, size, ETag, version id, how it was
verified and the value checked) and when the version was published. It also records the
inode of the tree it describes, so a manifest is only trusted beside that very tree
(``load_trusted``). Publishing writes the new manifest into the staging dir, swaps the
tree in, then renames the manifest beside it (publish.py): a crash between the two
renames leaves a staged manifest naming the published tree, which completes the pair.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nodeagent.models.source import RemoteObject

VERSION = 1


@dataclass(frozen=True)
class Entry:
    path: str
    key: str
    size: int
    etag: str
    version_id: str = ""
    verified: str = "size"  # e.g. "composite CRC32", "md5 MD5", "size"
    value: str = ""  # the checksum or ETag that the bytes matched

    def remote(self) -> RemoteObject:
        return RemoteObject(self.path, self.key, self.size, self.etag, self.version_id)


@dataclass
class Manifest:
    name: str
    source: str
    priority: int = 0
    required: bool = False
    published_at: float = field(default_factory=time.time)
    tree_inode: int = 0
    objects: list[Entry] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.objects)

    def by_path(self) -> dict[str, RemoteObject]:
        return {e.path: e.remote() for e in self.objects}

    def to_json(self) -> str:
        data = {"version": VERSION, **asdict(self)}
        data["published_at_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                 time.gmtime(self.published_at))
        return json.dumps(data, indent=1, sort_keys=True)


def read(path: Path) -> Manifest | None:
    try:
        data = json.loads(path.read_text())
        entries = [Entry(**e) for e in data["objects"]]
        return Manifest(data["name"], data["source"], int(data.get("priority", 0)),
                        bool(data.get("required", False)), float(data["published_at"]),
                        int(data.get("tree_inode", 0)), entries)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_trusted(path: Path, tree: Path) -> Manifest | None:
    """The manifest, if it describes the tree that is there now."""
    manifest = read(path)
    try:
        inode = tree.stat(follow_symlinks=False).st_ino
    except OSError:
        return None
    return manifest if manifest is not None and manifest.tree_inode == inode else None


def write(path: Path, manifest: Manifest) -> None:
    """Atomically and durably (temp file, fsync, rename, fsync of the directory)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
