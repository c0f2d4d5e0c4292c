"""Unpack one layer blob into a new staging directory, verifying both digests.

Two threads: the decoder reads the blob (following its watermark while it is still
arriving), hashes it (the manifest's digest), decompresses it and hashes the tar (the
config's diff ID); the caller's thread parses the tar and writes the files
(``apply.LayerApplier``). Both hashes cover every byte, trailing data included, as
containerd's applier does. Nothing here talks to containerd: the staging directory is
committed as a snapshot by ``commit`` only once both digests matched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nodeagent.pull.apply import ApplyError, ImplicitDir, LayerApplier
from nodeagent.pull.chunks import ChunkSource, TarFormatError
from nodeagent.pull.decompress import DecompressError, decompressed
from nodeagent.pull.tarstream import TarReader
from nodeagent.pull.watermark import BlobAbandoned, read_blob

_QUEUE_PIECES = 4  # decoded pieces of <= 1 MiB waiting for the writer: bounds memory
_END = object()


class UnpackError(Exception):
    """The layer could not be unpacked; the message names the layer and the reason.
    ``bad_blob``: the blob itself is wrong (digest, compression), fetch it again."""

    def __init__(self, message: str, bad_blob: bool = False) -> None:
        super().__init__(message)
        self.bad_blob = bad_blob

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (UnpackError, (str(self), self.bad_blob))  # crosses the process boundary


@dataclass(frozen=True)
class UnpackJob:
    blob: str  # path of the compressed blob (being fetched, or complete)
    size: int
    digest: str  # "sha256:<hex>" from the manifest
    diff_id: str  # "sha256:<hex>" from the image config
    target: str  # staging directory to create (must not exist)
    overlay: bool  # the layer has a parent: whiteouts become overlayfs markers
    watermark: str | None = None  # set while the blob is still arriving


@dataclass
class UnpackResult:
    digest: str
    diff_id: str
    target: str
    entries: int = 0
    unpacked_bytes: int = 0
    seconds: float = 0.0
    implicit_dirs: list[ImplicitDir] = field(default_factory=list)


Progress = Callable[[int, int], None]  # (compressed bytes read, uncompressed bytes written)


def unpack_layer(job: UnpackJob, progress: Progress | None = None) -> UnpackResult:
    """Unpack ``job``; on any failure the target directory is left for the caller to
    remove and UnpackError says why (a blob that does not match its digest is reported
    as that, whatever it broke first)."""
    started = time.monotonic()
    os.mkdir(job.target, 0o755)
    os.chmod(job.target, 0o755)
    decoder = _Decoder(job, progress)
    decoder.start()
    source = ChunkSource(decoder.next_piece)
    failure: str | None = None
    try:
        applied = LayerApplier(job.target, job.overlay).apply(TarReader(source))
        source.drain()  # trailing data counts for the diff ID too
    except (ApplyError, TarFormatError) as exc:
        failure = str(exc)
        with contextlib.suppress(_DecoderFailed):
            source.drain()  # read the rest: a wrong blob digest is the better explanation
    except _DecoderFailed as exc:
        failure = str(exc)
    finally:
        decoder.stop()
    decoder.check_blob(job)
    if failure is not None:
        raise UnpackError(f"layer {job.digest}: {failure}", bad_blob=decoder.failed)
    decoder.check_diff_id(job)
    return UnpackResult(
        digest=job.digest, diff_id=job.diff_id, target=job.target, entries=applied.entries,
        unpacked_bytes=decoder.uncompressed, seconds=time.monotonic() - started,
        implicit_dirs=applied.implicit_dirs)


class _DecoderFailed(Exception):
    pass


class _Hasher(threading.Thread):
    """Hashes the blob and the tar on a third thread (hashlib releases the GIL), so the
    decoder's work per byte is only read + decompress: the slowest of the three stages
    sets a layer's speed."""

    def __init__(self) -> None:
        super().__init__(name="hash", daemon=True)
        self.work: queue.Queue[tuple[Any, bytes] | None] = queue.Queue(_QUEUE_PIECES * 2)

    def run(self) -> None:
        while (item := self.work.get()) is not None:
            digest, data = item
            digest.update(data)

    def finish(self) -> None:
        if self.is_alive():
            self.work.put(None)
            self.join()


class _Decoder(threading.Thread):
    def __init__(self, job: UnpackJob, progress: Progress | None) -> None:
        super().__init__(name=f"decode {job.digest[7:19]}", daemon=True)
        self.job = job
        self.progress = progress
        self.pieces: queue.Queue[object] = queue.Queue(_QUEUE_PIECES)
        self.blob_hash = hashlib.sha256()
        self.tar_hash = hashlib.sha256()
        self.compressed = 0
        self.uncompressed = 0
        self._stopping = threading.Event()
        self.failed = False  # the compressed stream is corrupt
        self._hasher = _Hasher()
        self._hasher.start()

    def run(self) -> None:
        chunks = self._blob_chunks()
        try:
            for piece in decompressed(chunks):
                self._hasher.work.put((self.tar_hash, piece))
                self.uncompressed += len(piece)
                if not self._put(piece):
                    return
                if self.progress:
                    self.progress(self.compressed, self.uncompressed)
            self._put(_END)
        except DecompressError as exc:
            self.failed = True
            with contextlib.suppress(Exception):
                for _ in chunks:  # hash the rest: is the blob what the manifest names?
                    pass
            self._put(_DecoderFailed(str(exc)))
        except Exception as exc:  # reported to the writer thread, which raises it
            self._put(_DecoderFailed(_describe(exc)))

    def _blob_chunks(self) -> Iterator[bytes]:
        for chunk in read_blob(self.job.blob, self.job.size, self.job.watermark):
            self._hasher.work.put((self.blob_hash, chunk))
            self.compressed += len(chunk)
            yield chunk

    def _put(self, item: object) -> bool:
        while not self._stopping.is_set():
            try:
                self.pieces.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next_piece(self) -> bytes:
        item = self.pieces.get()
        if item is _END:
            self.pieces.put(_END)  # later calls see the end too
            return b""
        if isinstance(item, _DecoderFailed):
            raise item
        assert isinstance(item, bytes)
        return item

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        self._hasher.finish()  # every queued byte is hashed before anyone reads a digest

    def check_blob(self, job: UnpackJob) -> None:
        """Once the whole blob was read: is it the one the manifest names?"""
        blob = "sha256:" + self.blob_hash.hexdigest()
        if self.compressed == job.size and blob != job.digest:
            raise UnpackError(f"layer {job.digest}: the blob's content does not match its "
                              f"digest (got {blob})", bad_blob=True)

    def check_diff_id(self, job: UnpackJob) -> None:
        if self.compressed != job.size:
            raise UnpackError(f"layer {job.digest}: read {self.compressed} of {job.size} "
                              "bytes of the blob", bad_blob=True)
        tar = "sha256:" + self.tar_hash.hexdigest()
        if tar != job.diff_id:
            raise UnpackError(f"layer {job.digest}: uncompressed content {tar} does not "
                              f"match the image config's diff ID {job.diff_id}", bad_blob=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BlobAbandoned):
        return "download abandoned"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read the blob: {exc.strerror}"
    return str(exc)
