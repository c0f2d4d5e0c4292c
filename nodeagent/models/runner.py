"""One model's download: details, ranged GETs, verification, then ``on_complete``.

Tasks run on the shared WorkerPool, the model's rank first in their priority, so the most
important model gets every connection. A range is retried (5 attempts, backoff) on
network errors; an object whose bytes do not verify is downloaded again (3 attempts in
all); a permanent error (credentials, access, not found, no space) fails the model at
once. Every finished range goes to the journal, so a killed run resumes from it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent import metrics
from nodeagent.models.checksums import MULTIPART_ETAG, expected_for
from nodeagent.models.errors import CorruptObject, ModelError, scrub
from nodeagent.models.hashing import hash_file_range
from nodeagent.models.journal import Done, Journal
from nodeagent.models.objects import ObjectJob, verify
from nodeagent.models.plan import RANGE_BYTES, Range, split
from nodeagent.models.pool import WorkerPool
from nodeagent.models.progress import ModelProgress
from nodeagent.models.source import ModelSource, RemoteObject

PERMANENT = ("no_credentials", "access_denied", "not_found", "invalid_source", "no_space",
             "source_changed")
RANGE_ATTEMPTS = 5
OBJECT_ATTEMPTS = 3
CHUNK = 1 << 20
SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def start_writeback(fd: int, start: int, length: int) -> None:
    """Let the kernel write a finished range now, so the fsync before publishing has
    little left to do (Python has no os.sync_file_range)."""
    _libc.sync_file_range(fd, ctypes.c_int64(start), ctypes.c_int64(length),
                          SYNC_FILE_RANGE_WRITE)


_local = threading.local()


def _buffer() -> memoryview:
    """This worker thread's read buffer (one per thread: memory stays bounded)."""
    if not hasattr(_local, "buffer"):
        _local.buffer = memoryview(bytearray(CHUNK))
    return _local.buffer


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


@dataclass
class ModelJob:
    name: str
    source: ModelSource
    tree: Path  # the staging tree
    journal: Journal
    progress: ModelProgress
    rank: int
    fetch: tuple[RemoteObject, ...]
    resumed: dict[tuple[str, int], Done]  # (path, start) -> journalled range
    on_complete: Callable[[ModelJob], None]
    on_fail: Callable[[ModelJob], None]
    stop: threading.Event
    range_bytes: int = RANGE_BYTES
    durable: bool = True  # start writeback of each finished range (see options.SyncOptions)
    verified: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (how, value)
    details: dict[str, str] = field(default_factory=dict)  # path -> version id
    error: ModelError | None = None
    downloaded: int = 0
    objects: list[ObjectJob] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ state
    def fail(self, error: ModelError) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = error
        self.on_fail(self)

    @property
    def failed(self) -> bool:
        return self.error is not None or self.stop.is_set()

    def _received(self, n: int) -> None:
        """n bytes arrived from the source: the progress bar, the model's figure and the
        downloaded-bytes counter move at once (a 150 GB model shows progress in /metrics)."""
        self.progress.add(n)
        metrics.MODELS_DOWNLOADED_BYTES.inc(n)
        with self._lock:
            self.downloaded += n

    def _discard(self, shown: int, received: int) -> None:
        """Bytes to fetch again (a broken range, an object that failed verification):
        the bar goes back by ``shown``, the model's figure by the ``received`` part of
        it; the counter does not, since those bytes did cross the network (see
        metrics.MODELS_DOWNLOADED_BYTES)."""
        self.progress.add(-shown)
        with self._lock:
            self.downloaded -= received

    # ------------------------------------------------------------------ tasks
    def start(self, pool: WorkerPool) -> None:
        if not self.fetch:
            pool.submit((self.rank, 0), lambda: self.on_complete(self))
        for obj in self.fetch:
            pool.submit((self.rank, 0), lambda o=obj: self._prepare(pool, o))

    def _prepare(self, pool: WorkerPool, obj: RemoteObject) -> None:
        if self.failed:
            return
        try:
            # One GET that learns the check from its response, for objects uploaded in
            # one part; a multipart one's composite checksum or ETag needs its part
            # layout (details), however small it is.
            if obj.size <= self.range_bytes and not MULTIPART_ETAG.fullmatch(obj.etag):
                job = ObjectJob(obj, self.tree / obj.path, None,
                                (Range(obj.path, 0, obj.size),))
            else:
                details = self.source.details(obj)
                self.details[obj.path] = details.version_id
                expected = expected_for(obj.size, obj.etag, details.checksum, details.parts)
                job = ObjectJob(obj, self.tree / obj.path, expected,
                                split(obj, expected, self.range_bytes))
            self.objects.append(job)
            job.open()
        except ModelError as exc:
            self.fail(exc)
            return
        except OSError as exc:
            self.fail(self._os_error(exc, obj))
            return
        self._submit_ranges(pool, job)

    def _submit_ranges(self, pool: WorkerPool, job: ObjectJob) -> None:
        for rng in job.ranges:
            done = self.resumed.pop((rng.path, rng.start), None)
            if done is not None and done.length == rng.length and done.etag == job.obj.etag:
                pool.submit((self.rank, 1), lambda r=rng, d=done: self._rehash(pool, job, r, d))
            else:
                pool.submit((self.rank, 2), lambda r=rng: self._fetch(pool, job, r))

    def _rehash(self, pool: WorkerPool, job: ObjectJob, rng: Range, done: Done) -> None:
        """A range an earlier run finished: hash it from the staged file, no download."""
        if self.failed:
            return
        hashing = job.hashing(rng)
        try:
            hash_file_range(job.fd, rng.start, rng.length, hashing)
        except OSError:
            pool.submit((self.rank, 2), lambda: self._fetch(pool, job, rng))
            return
        self.progress.add(rng.length)
        metrics.MODELS_RESUMED_BYTES.inc(rng.length)
        if job.add(rng, hashing.finish(done.checksum)):
            self._complete(pool, job)

    def _fetch(self, pool: WorkerPool, job: ObjectJob, rng: Range) -> None:
        last: BaseException | None = None
        buffer = _buffer()
        for attempt in range(RANGE_ATTEMPTS):
            if self.failed:
                return
            written = 0
            try:
                reader, checksum = self.source.open_range(job.obj, rng.start, rng.length,
                                                          job.whole_get)
                try:
                    hashing = job.hashing(rng)
                    pos = rng.start
                    while pos < rng.end:
                        n = reader.readinto(buffer[: min(CHUNK, rng.end - pos)])
                        if not n:
                            raise ConnectionError(f"stream ended {rng.end - pos} bytes early")
                        _pwrite_all(job.fd, buffer[:n], pos)
                        hashing.update(buffer[:n])
                        pos += n
                        written += n
                        self._received(n)
                        if self.failed:
                            return
                    reader.readinto(buffer[:1])  # the end of the body: frees the connection
                finally:
                    reader.close()
                result = hashing.finish(checksum)
            except ModelError as exc:
                if exc.reason in PERMANENT:
                    self.fail(exc)
                    return
                last = exc
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.fail(self._os_error(exc, job.obj))
                    return
                last = exc
            except Exception as exc:  # botocore/urllib3 streaming errors: retried
                last = exc
            else:
                if rng.length and self.durable:
                    start_writeback(job.fd, rng.start, rng.length)
                self.journal.record(Done(rng.path, job.obj.etag, job.obj.size, rng.start,
                                         rng.length, checksum))
                if job.add(rng, result, received=rng.length):
                    self._complete(pool, job)
                return
            self._discard(written, written)
            self.stop.wait(min(8.0, 0.5 * 2**attempt))
        self.fail(ModelError(self.name, self.source.url, "unreachable", (
            f"{job.obj.path}: bytes {rng.start}-{rng.end - 1} failed {RANGE_ATTEMPTS} times "
            f"(last: {type(last).__name__}: {scrub(str(last))})")))

    def _complete(self, pool: WorkerPool, job: ObjectJob) -> None:
        try:
            how = verify(job)
        except CorruptObject as exc:
            metrics.MODELS_CORRUPT_DOWNLOADS.inc()
            if job.attempts >= OBJECT_ATTEMPTS:
                self.fail(ModelError(self.name, self.source.url, "corrupt", (
                    f"the bytes received do not match the object ({exc}), "
                    f"{job.attempts} downloads in a row; nothing was published")))
                return
            job.attempts += 1
            with job.lock:
                job.results.clear()
                received, job.received = job.received, 0
            self._discard(job.obj.size, received)  # resumed ranges were shown, not received
            for rng in job.ranges:
                pool.submit((self.rank, 2), lambda r=rng: self._fetch(pool, job, r))
            return
        except OSError as exc:
            self.fail(self._os_error(exc, job.obj))
            return
        with self._lock:
            self.verified[job.obj.path] = how
            all_done = len(self.verified) == len(self.fetch)
        job.close()
        if all_done and not self.failed:
            self.on_complete(self)

    def close_files(self) -> None:
        for job in self.objects:
            job.close()

    def _os_error(self, exc: OSError, obj: RemoteObject) -> ModelError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ModelError(self.name, self.source.url, "no_space", (
                f"no space left on the cache filesystem writing {obj.path} "
                f"({obj.size} bytes); the partial download is kept and resumes once "
                "space is freed"))
        return ModelError(self.name, self.source.url, "other",
                          f"writing {obj.path}: {exc.strerror or exc}")
