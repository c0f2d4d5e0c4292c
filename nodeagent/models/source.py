"""The source interface the engine downloads through, and the objects it lists.

An S3 prefix (s3.py) implements it now; an OCI artifact source (layers titled by
``org.opencontainers.image.title``, verified by their sha256 digests, i.e. a FULL_OBJECT
SHA256 ``Checksum``) plugs in the same way in phase 2.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from nodeagent.models.checksums import Checksum


@dataclass(frozen=True)
class RemoteObject:
    path: str  # where it lands, relative to the model's directory
    key: str  # the source's name for it (S3 key, layer digest)
    size: int
    etag: str = ""  # without quotes
    version_id: str = ""
    checksum_algorithm: str = ""  # as listed (the value needs details())

    def same_content(self, other: RemoteObject) -> bool:
        """Unchanged for re-sync: same size, ETag and (when both know it) version."""
        return (self.size == other.size and self.etag == other.etag and (
            not self.version_id or not other.version_id or self.version_id == other.version_id))


@dataclass(frozen=True)
class ObjectDetails:
    checksum: Checksum | None = None
    parts: tuple[int, ...] | None = None  # upload part sizes (multipart), when learned
    version_id: str = ""


class RangeReader(Protocol):
    def readinto(self, buffer: memoryview) -> int:
        """Fill the start of ``buffer``; 0 at the end of the stream."""

    def close(self) -> None:
        """Release the connection (back to the pool when the body was read to its end)."""


class ModelSource(Protocol):
    url: str

    def list_objects(self) -> list[RemoteObject]:
        """Every object of the model (raises ModelError naming model and source)."""

    def details(self, obj: RemoteObject) -> ObjectDetails:
        """What verification needs beyond the listing (checksum value, part layout)."""

    def open_range(self, obj: RemoteObject, start: int, length: int,
                   whole: bool) -> tuple[RangeReader, Checksum | None]:
        """A stream of ``length`` bytes at ``start``; with ``whole`` (one request for the
        whole object) also the object's checksum when the source returns it."""


def safe_relative_path(path: str) -> str | None:
    """The path if it stays inside the model's directory, else None."""
    if not path or path.startswith("/") or "\x00" in path or "\\" in path:
        return None
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return posixpath.join(*parts)


def path_conflicts(paths: list[str]) -> Iterator[tuple[str, str]]:
    """Pairs where one object's path is a directory of another's ("a" and "a/b")."""
    files = set(paths)
    for path in paths:
        parent = posixpath.dirname(path)
        while parent:
            if parent in files:
                yield parent, path
            parent = posixpath.dirname(parent)
