"""Fetch one blob with concurrent HTTP range requests into a staging file.

A single HTTP stream to a registry or S3 is capped well below what a node's NIC can take,
and containerd fetches each layer over one stream. Here a blob is cut into ``chunk_bytes``
ranges fetched over up to ``connections`` connections at once, in increasing order, each
written at its offset (``pwrite``), so memory holds one read buffer per connection and
no more. The contiguous written prefix is published through a ``Watermark`` so the unpack
worker decompresses while the rest arrives. Completed chunks are appended to a sidecar
file: after a crash the next run fetches only what is missing (the digest is checked on
the whole blob anyway). A server that ignores ``Range`` gets one sequential stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp

from nodeagent.log import fields
from nodeagent.pull.watermark import Watermark
from nodeagent.registry.endpoints import Endpoint
from nodeagent.registry.errors import RegistryError, most_useful
from nodeagent.registry.session import RegistrySession, Request

DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_CONNECTIONS = 8
log = logging.getLogger(__name__)
_READ_BYTES = 1 << 20
_LOG_EVERY = 256 << 10  # a chunk in flight records its progress this often (resume)
_CHUNK_ATTEMPTS = 3
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class BlobSource:
    """Where a blob comes from: endpoints in containerd's order (mirrors first)."""

    digest: str
    size: int
    endpoints: tuple[Endpoint, ...]
    registry: str
    repository: str
    request: Request


@dataclass(frozen=True)
class FetchOptions:
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    connections: int = DEFAULT_CONNECTIONS  # per blob; the session caps the node


class _NoRanges(Exception):
    """The server answered 200 to a range request: it serves whole blobs only."""


class BlobFetcher:
    def __init__(self, session: RegistrySession, options: FetchOptions | None = None) -> None:
        self.session = session
        self.options = options or FetchOptions()

    async def fetch(self, source: BlobSource, path: str, watermark: Watermark,
                    on_bytes: Callable[[int], None]) -> None:
        """Fill ``path`` with the blob (resuming what a previous run left), advancing
        ``watermark``; raises RegistryError naming the blob and host on failure."""
        chunks = _ChunkLog(path, source.size, self.options.chunk_bytes)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            watermark.advance(chunks.prefix())
            errors: list[RegistryError] = []
            for endpoint in source.endpoints:
                if "pull" not in endpoint.capabilities:
                    continue
                try:
                    await self._fetch_from(endpoint, source, fd, chunks, watermark, on_bytes)
                    watermark.complete(source.size)
                    return
                except RegistryError as exc:
                    errors.append(exc)
            if not errors:
                raise RegistryError(f"{source.request.subject}: no host in hosts.toml can "
                                    f"pull blob {source.digest}")
            raise most_useful(errors)
        finally:
            os.close(fd)
            chunks.close()

    async def _fetch_from(self, endpoint: Endpoint, source: BlobSource, fd: int,
                          chunks: _ChunkLog, watermark: Watermark,
                          on_bytes: Callable[[int], None]) -> None:
        url = endpoint.url(source.repository, "blobs", source.digest, source.registry)
        pending = iter(chunks.missing())
        lanes = max(1, min(self.options.connections, chunks.missing_count()))
        # The other lanes start once the first range is answered with a range: a server
        # that ignores Range (a cold pull-through cache streams the whole blob) then gets
        # one request, not one per lane (each of which it would fetch upstream).
        ranges_served = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                for lane in range(lanes):
                    group.create_task(self._lane(endpoint, url, source, fd, pending, chunks,
                                                 watermark, on_bytes, ranges_served,
                                                 first=lane == 0))
        except* _NoRanges:
            await self._whole(endpoint, url, source, fd, chunks, watermark, on_bytes)
        except* RegistryError as group_error:
            raise group_error.exceptions[0] from None

    async def _lane(self, endpoint: Endpoint, url: str, source: BlobSource, fd: int,
                    pending: Iterator[int], chunks: _ChunkLog, watermark: Watermark,
                    on_bytes: Callable[[int], None], ranges_served: asyncio.Event,
                    first: bool) -> None:
        if not first:
            await ranges_served.wait()
        for index in pending:
            start, end = chunks.bounds(index)
            for attempt in range(_CHUNK_ATTEMPTS):
                start = chunks.bounds(index)[0] + chunks.written(index)  # resume in the chunk
                try:
                    await self._range(endpoint, url, source, fd, start, end, chunks, index,
                                      watermark, on_bytes, ranges_served)
                    break
                except RegistryError as exc:
                    if exc.reason != "registry_unreachable" or attempt == _CHUNK_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.5 * 2 ** attempt)
            chunks.done(index)
            watermark.advance(chunks.prefix())
            start_writeback(fd, *chunks.bounds(index))

    async def _range(self, endpoint: Endpoint, url: str, source: BlobSource, fd: int,
                     start: int, end: int, chunks: _ChunkLog, index: int,
                     watermark: Watermark, on_bytes: Callable[[int], None],
                     ranges_served: asyncio.Event) -> None:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        log.debug("range request", extra=fields(blob=source.digest, start=start, end=end,
                                                host=endpoint.host))
        async with self.session.open(endpoint, url, source.request, headers) as response:
            if response.status == 200 and (start, end) != (0, source.size):
                raise _NoRanges()
            _check_range(response, start, end, source, endpoint)
            ranges_served.set()
            offset = start
            async for data in _body(response, source, endpoint):
                if offset + len(data) > end:
                    raise RegistryError(f"{source.request.subject}: {endpoint.host} sent more "
                                        f"than the range asked for blob {source.digest}")
                offset += os.pwrite(fd, data, offset)
                chunks.progress(index, offset - chunks.bounds(index)[0])
                watermark.advance(chunks.prefix())
                on_bytes(len(data))
        if offset != end:
            raise RegistryError(f"{source.request.subject}: {endpoint.host} ended blob "
                                f"{source.digest} early ({offset - start} of {end - start} "
                                "bytes of a range)", reason="registry_unreachable")

    async def _whole(self, endpoint: Endpoint, url: str, source: BlobSource, fd: int,
                     chunks: _ChunkLog, watermark: Watermark,
                     on_bytes: Callable[[int], None]) -> None:
        """One stream from byte 0 (the server does not do ranges)."""
        chunks.reset()
        offset = 0
        async with self.session.open(endpoint, url, source.request) as response:
            async for data in _body(response, source, endpoint):
                offset += os.pwrite(fd, data, offset)
                watermark.advance(min(offset, source.size))
                on_bytes(len(data))
        if offset != source.size:
            raise RegistryError(f"{source.request.subject}: {endpoint.host} sent {offset} of "
                                f"{source.size} bytes of blob {source.digest}",
                                reason="registry_unreachable")


async def _body(response: aiohttp.ClientResponse, source: BlobSource, endpoint: Endpoint):
    try:
        async for data in response.content.iter_chunked(_READ_BYTES):
            yield data
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise RegistryError(f"{source.request.subject}: download of blob {source.digest} from "
                            f"{endpoint.host} broke off: {exc or type(exc).__name__}",
                            reason="registry_unreachable") from None


def _check_range(response: aiohttp.ClientResponse, start: int, end: int,
                 source: BlobSource, endpoint: Endpoint) -> None:
    if response.status != 206:
        return
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != start or int(match.group(2)) != end - 1:
        raise RegistryError(f"{source.request.subject}: {endpoint.host} answered a range of "
                            f"blob {source.digest} with another range")


class _ChunkLog:
    """What of a staged blob is written (sidecar file ``<path>.chunks``): a line "<index>"
    per complete chunk, "<index>:<bytes>" as a chunk in flight passes each 256 KiB. Data is
    written before its line, so after a crash (not a power loss; the digest check catches
    that) a chunk resumes where it stopped."""

    def __init__(self, path: str, size: int, chunk_bytes: int) -> None:
        self.size, self.chunk_bytes = size, chunk_bytes
        self.count = max(1, -(-size // chunk_bytes))
        self.path = path + ".chunks"
        header = f"nodeagent-chunks size={size} chunk={chunk_bytes}\n"
        self._done: set[int] = set()
        self._partial: dict[int, int] = {}  # chunk -> bytes written from its start
        self._logged: dict[int, int] = {}
        lines = _read_lines(self.path)
        if lines and lines[0] == header.strip():
            self._load(lines[1:])
            self._file = open(self.path, "a", encoding="ascii")  # noqa: SIM115
        else:
            self._file = open(self.path, "w", encoding="ascii")  # noqa: SIM115
            self._file.write(header)
            self._file.flush()

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_bytes
        return start, min(self.size, start + self.chunk_bytes)

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self._done]

    def missing_count(self) -> int:
        return self.count - len(self._done)

    def _load(self, lines: list[str]) -> None:
        for line in lines:
            index, _, written = line.partition(":")
            if not index.isdigit() or int(index) >= self.count:
                continue
            if not written:
                self._done.add(int(index))
            elif written.isdigit():
                start, end = self.bounds(int(index))
                self._partial[int(index)] = min(end - start, max(
                    self._partial.get(int(index), 0), int(written)))
        for index in self._done:
            self._partial.pop(index, None)
        self._logged = dict(self._partial)

    def written(self, index: int) -> int:
        return self._partial.get(index, 0)

    def progress(self, index: int, written: int) -> None:
        self._partial[index] = written
        if written - self._logged.get(index, 0) >= _LOG_EVERY:
            self._logged[index] = written
            self._file.write(f"{index}:{written}\n")
            self._file.flush()

    def done(self, index: int) -> None:
        self._done.add(index)
        self._partial.pop(index, None)
        self._file.write(f"{index}\n")
        self._file.flush()

    def reset(self) -> None:
        self._done.clear()
        self._partial.clear()

    def prefix(self) -> int:
        """Bytes from 0 that are written: complete chunks, then the next one's progress."""
        index = 0
        while index in self._done:
            index += 1
        if index >= self.count:
            return self.size
        return index * self.chunk_bytes + self._partial.get(index, 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def start_writeback(fd: int, start: int, end: int) -> None:
    """Ask the kernel to start writing a finished chunk to disk now (sync_file_range,
    SYNC_FILE_RANGE_WRITE: it does not wait), so the blob's final flush before containerd
    records it has little left to do. A no-op where the call is missing."""
    if _LIBC is not None:
        _LIBC.sync_file_range(fd, ctypes.c_int64(start), ctypes.c_int64(end - start),
                              _SYNC_FILE_RANGE_WRITE)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                         ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


_SYNC_FILE_RANGE_WRITE = 2
_LIBC = _libc()


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
