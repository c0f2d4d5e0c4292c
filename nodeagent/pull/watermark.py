"""How far a blob that is still arriving can be read: a 16-byte file beside it, mapped
into memory by the fetcher (writer) and by the unpack worker (reader, another process).

Range requests land out of order, so the file has holes until they are filled; the
watermark is the length of the contiguous prefix that is written. The reader never reads
past it, and waits (polling every few milliseconds) while the fetcher is behind.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Iterator

_LAYOUT = struct.Struct("<qq")  # watermark, state
ARRIVING, COMPLETE, ABANDONED = 0, 1, 2
_POLL_S = 0.003


class BlobAbandoned(Exception):
    """The fetcher gave up on the blob (its error is reported on the fetch side)."""


def shared_map(path: str, size: int, create: bool) -> mmap.mmap:
    """A small file mapped in memory, shared with another process: created zeroed (the
    writer) or opened as it is (the reader; read-write so it can also raise a flag)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_TRUNC if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class Watermark:
    """The writer side (fetcher). ``close()`` unmaps; the file is removed by the owner."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._map = shared_map(path, _LAYOUT.size, create=True)
        self.value = 0

    def advance(self, offset: int) -> None:
        self.value = offset
        _LAYOUT.pack_into(self._map, 0, offset, ARRIVING)

    def complete(self, size: int) -> None:
        self.value = size
        _LAYOUT.pack_into(self._map, 0, size, COMPLETE)

    def abandon(self) -> None:
        _LAYOUT.pack_into(self._map, 0, self.value, ABANDONED)

    def close(self) -> None:
        self._map.close()


def read_blob(path: str, size: int, watermark: str | None, chunk: int = 1 << 20
              ) -> Iterator[bytes]:
    """The bytes of ``path`` in order, up to ``size``; with a ``watermark`` file, never
    past the written prefix (waits for the fetcher)."""
    state = shared_map(watermark, _LAYOUT.size, create=False) if watermark else None
    try:
        with open(path, "rb", buffering=0) as blob:
            offset = 0
            while offset < size:
                limit = size if state is None else _wait_for(state, offset)
                data = blob.read(min(chunk, limit - offset))
                if not data:
                    raise EOFError(f"{path} ends at {offset} of {size} bytes")
                offset += len(data)
                yield data
    finally:
        if state is not None:
            state.close()


def _wait_for(state: mmap.mmap, offset: int) -> int:
    """The watermark once it is past ``offset``."""
    while True:
        value, status = _LAYOUT.unpack_from(state, 0)
        if value > offset:
            return value
        if status == ABANDONED:
            raise BlobAbandoned()
        if status == COMPLETE:
            raise EOFError(f"blob complete at {value} bytes, {offset} already read")
        time.sleep(_POLL_S)
