"""Helpers for the ContainerdClient tests (tests/test_containerd_*.py): the `client`
fixture on the per-test private containerd, polling, and a throttling TCP proxy that
slows a real registry's downloads so progress and cancellation can be observed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from nodeagent.containerd.client import ContainerdClient
from nodeagent.sandbox.containerd import PrivateContainerd

# The label the CRI plugin puts on every image it pulls.
MANAGED = {"io.cri-containerd.image": "managed"}


@contextlib.asynccontextmanager
async def closing(client: ContainerdClient) -> AsyncIterator[ContainerdClient]:
    """Close a client made without `async with` (one that has yet to connect) on leaving."""
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def client(containerd: PrivateContainerd) -> AsyncIterator[ContainerdClient]:
    async with ContainerdClient(containerd.address) as c:
        yield c


async def until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns something truthy (returned); fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


class ThrottlingProxy:
    """TCP proxy on 127.0.0.1 that slows registry→client bytes to `rate` bytes/s."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.bytes_down = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ThrottlingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # EOF ends both pumps of each connection
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer, throttle=False),
                                 self._pump(up_reader, writer, throttle=True))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    throttle: bool) -> None:
        chunk_size = 32 << 10
        while data := await src.read(chunk_size):
            if dst.is_closing():
                return
            dst.write(data)
            await dst.drain()
            if throttle:
                self.bytes_down += len(data)
                await asyncio.sleep(len(data) / self.rate)
        dst.close()
