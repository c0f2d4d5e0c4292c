"""Sequential access to a stream that arrives in chunks: exact reads for headers, skips,
and zero-copy writes of file data straight from the chunks to a file descriptor."""

from __future__ import annotations

import os
from collections.abc import Callable


class TarFormatError(ValueError):
    """The stream is not a valid tar archive (Go: archive/tar: invalid tar header)."""


class ChunkSource:
    """Sequential bytes from ``next_chunk()`` (b"" at the end) with exact reads, skips
    and zero-copy writes to a file descriptor."""

    def __init__(self, next_chunk: Callable[[], bytes]) -> None:
        self._next_chunk = next_chunk
        self._view = memoryview(b"")
        self._eof = False
        self.consumed = 0

    def _fill(self) -> bool:
        while not self._view and not self._eof:
            chunk = self._next_chunk()
            if not chunk:
                self._eof = True
            else:
                self._view = memoryview(chunk)
        return bool(self._view)

    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of the stream)."""
        parts: list[bytes] = []
        while n > 0 and self._fill():
            take = self._view[:n]
            parts.append(bytes(take))
            self._view = self._view[len(take):]
            n -= len(take)
            self.consumed += len(take)
        return b"".join(parts)

    def read_exact(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise TarFormatError("unexpected end of the tar stream")
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            if not self._fill():
                raise TarFormatError("unexpected end of the tar stream")
            take = min(n, len(self._view))
            self._view = self._view[take:]
            n -= take
            self.consumed += take

    def write_to(self, fd: int, n: int, offset: int | None = None) -> None:
        """Copy the next n bytes to fd (at ``offset`` with pwrite, else at its position)."""
        while n > 0:
            if not self._fill():
                raise TarFormatError("unexpected end of the tar stream in file data")
            take = self._view[: min(n, len(self._view))]
            written = os.pwrite(fd, take, offset) if offset is not None else os.write(fd, take)
            if offset is not None:
                offset += written
            self._view = self._view[written:]
            n -= written
            self.consumed += written

    def drain(self) -> int:
        """Consume the rest of the stream (trailing data after the archive); bytes read."""
        total = 0
        while self._fill():
            total += len(self._view)
            self.consumed += len(self._view)
            self._view = memoryview(b"")
        return total
