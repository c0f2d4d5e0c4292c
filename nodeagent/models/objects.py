"""One object being downloaded: its file in the staging tree, its ranges, its verification.

``ObjectJob`` collects the ranges' hash results; ``verify`` decides, once every range is
in, whether the bytes are the object (raising CorruptObject otherwise) and says how.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.models.checksums import (
    PLAIN_MD5,
    Expected,
    combine_ranges,
    compose,
    computable,
    encode,
    expected_for,
    matches,
)
from nodeagent.models.errors import CorruptObject
from nodeagent.models.hashing import RangeHashing, RangeResult, hash_file_range
from nodeagent.models.plan import Range
from nodeagent.models.source import RemoteObject


@dataclass
class ObjectJob:
    obj: RemoteObject
    file: Path
    expected: Expected | None  # None: one whole-object GET, decided from its response
    ranges: tuple[Range, ...]
    results: dict[int, RangeResult] = field(default_factory=dict)
    attempts: int = 1
    received: int = 0  # bytes of this attempt's ranges downloaded (not resumed from disk)
    fd: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def whole_get(self) -> bool:
        return self.expected is None

    def whole_algorithms(self) -> tuple[str, ...]:
        """What to hash in-stream when the range is the whole object."""
        if self.whole_get:
            algs = [self.obj.checksum_algorithm] if self.obj.checksum_algorithm and (
                computable(self.obj.checksum_algorithm)) else []
            return (*algs, *(["MD5"] if PLAIN_MD5.fullmatch(self.obj.etag) else []))
        e = self.expected
        assert e is not None
        if len(self.ranges) == 1 and e.method in ("full", "md5") and not e.combinable:
            return (e.algorithm,)
        return ()

    def hashing(self, rng: Range) -> RangeHashing:
        return RangeHashing(rng, self.expected, self.whole_algorithms())

    def open(self) -> None:
        """Open (creating and reserving space for) the staged file."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self.fd).st_size
        if size != self.obj.size:
            os.ftruncate(self.fd, self.obj.size)
        if self.obj.size:
            try:  # fails early with ENOSPC rather than halfway through
                os.posix_fallocate(self.fd, 0, self.obj.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def add(self, rng: Range, result: RangeResult, received: int = 0) -> bool:
        """Record a finished range (``received``: its bytes were downloaded, not re-hashed
        from disk); True when it was the last one."""
        with self.lock:
            self.results[rng.start] = result
            self.received += received
            return len(self.results) == len(self.ranges)


def verify(job: ObjectJob) -> tuple[str, str]:
    """(how, value) when the file is the object; raises CorruptObject when not."""
    size = os.fstat(job.fd).st_size
    if size != job.obj.size:
        raise CorruptObject(f"{job.obj.path}: {size} bytes instead of {job.obj.size}")
    results = [job.results[r.start] for r in job.ranges]
    expected = job.expected or _expected_from_response(job, results[0])
    if expected.method == "size":
        return "size", str(job.obj.size)
    if expected.per_part:
        got = compose(expected, [d for r in results for d in r.part_digests])
    elif len(results) == 1 and expected.algorithm in results[0].whole:
        got = encode(expected, results[0].whole[expected.algorithm])
    elif expected.combinable and all(r.crc for r in results):
        got = encode(expected, combine_ranges(expected.algorithm,
                                              [r.crc for r in results if r.crc]))
    else:  # ordered hash of a multi-range object: read it back once
        hashing = RangeHashing(Range(job.obj.path, 0, job.obj.size), None,
                               (expected.algorithm,))
        hash_file_range(job.fd, 0, job.obj.size, hashing)
        got = encode(expected, hashing.finish().whole[expected.algorithm])
    if not matches(expected, got):
        raise CorruptObject(f"{job.obj.path}: {expected.describe()} is {got}, the source "
                            f"says {expected.value}")
    return expected.describe(), expected.value


def _expected_from_response(job: ObjectJob, result: RangeResult) -> Expected:
    checksum = result.checksum
    if checksum is not None and checksum.type == "FULL_OBJECT" and (
            checksum.algorithm in result.whole):
        return Expected("full", checksum.algorithm, checksum.value)
    return expected_for(job.obj.size, job.obj.etag, None, None)
