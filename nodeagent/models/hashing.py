"""Hashing the bytes of one range as they arrive (or as they are read back from disk).

What is computed follows the object's ``Expected``: a digest per upload part (composite
checksums, multipart ETags), one CRC for the range (full-object CRCs, combined later), or
whole-object digests when the range is the whole object. Multi-range objects checked by
an ordered hash (MD5, SHA) compute nothing here: they are read back once complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nodeagent.models.checksums import Checksum, Expected, Hasher, new_hasher
from nodeagent.models.plan import Range

READ_CHUNK = 1 << 20


@dataclass
class RangeResult:
    part_digests: list[bytes] = field(default_factory=list)
    crc: tuple[int, int] | None = None  # (value, length)
    whole: dict[str, bytes] = field(default_factory=dict)  # algorithm -> digest
    checksum: Checksum | None = None  # returned by a whole-object GET


class RangeHashing:
    def __init__(self, rng: Range, expected: Expected | None, whole_algorithms: tuple[str, ...]):
        self.expected = expected
        self._parts = list(rng.parts) if expected is not None and expected.per_part else []
        self._part_left = self._parts.pop(0) if self._parts else 0
        self._part = new_hasher(expected.algorithm) if (
            expected is not None and expected.per_part) else None
        self.result = RangeResult()
        self._crc = new_hasher(expected.algorithm) if expected is not None and (
            expected.combinable) else None
        self._whole: dict[str, Hasher] = {a: new_hasher(a) for a in whole_algorithms}

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._part is not None:
            self._update_parts(view)
        if self._crc is not None:
            self._crc.update(view)
        for h in self._whole.values():
            h.update(view)

    def _update_parts(self, view: memoryview) -> None:
        assert self._part is not None and self.expected is not None
        while len(view):
            take = min(len(view), self._part_left)
            self._part.update(view[:take])
            self._part_left -= take
            view = view[take:]
            if self._part_left == 0:
                self.result.part_digests.append(self._part.digest())
                self._part = new_hasher(self.expected.algorithm)
                self._part_left = self._parts.pop(0) if self._parts else 0
                if not self._part_left:
                    break

    def finish(self, checksum: Checksum | None = None) -> RangeResult:
        if self._crc is not None:
            self.result.crc = (self._crc.value, self._crc.length)  # type: ignore[attr-defined]
        self.result.whole = {a: h.digest() for a, h in self._whole.items()}
        self.result.checksum = checksum
        return self.result


def hash_file_range(fd: int, start: int, length: int, hashing: RangeHashing) -> None:
    """Feed bytes [start, start+length) of a file to ``hashing`` (resume, read-back)."""
    pos, end = start, start + length
    while pos < end:
        data = os.pread(fd, min(READ_CHUNK, end - pos), pos)
        if not data:
            raise OSError(f"short file: {end - pos} bytes missing at {pos}")
        hashing.update(data)
        pos += len(data)
