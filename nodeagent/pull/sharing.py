"""Work shared between images pulled at the same time (they often share base layers).

A layer (chain ID) is unpacked and committed by the first image that needs it; the others
wait for that commit, and count the owner's progress on it (``LayerWork``) as their own,
so a long shared layer is no stall for them. A blob is fetched once into its staging
file, however many layers read it; once its last reader is done the file is removed if it
was registered in the content store (or is wrong), and kept otherwise: a retry resumes a
partial fetch, and does not fetch a complete one again (complete ones go when the puller
closes; partial ones stay for a later run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nodeagent.pull.staging import Staging
from nodeagent.pull.watermark import Watermark
from nodeagent.pull.workers import UnpackProgress


@dataclass
class LayerWork:
    """Bytes the image that owns a layer has fetched and unpacked for it so far."""

    fetched: int = 0
    unpacked: int = 0  # of a finished unpack
    unpacking: UnpackProgress | None = None  # the live counters while it runs

    def amount(self) -> int:
        live = self.unpacking.read()[1] if self.unpacking is not None else 0
        return self.fetched + max(self.unpacked, live)


@dataclass
class StagedBlob:
    digest: str
    path: str
    watermark: Watermark
    fetch: asyncio.Task[None]
    users: int = 1
    bad: bool = False  # the content is wrong: remove it, fetch afresh next time
    registered: bool = False  # in the content store (or not wanted there): remove it
    synced: asyncio.Task[None] | None = field(default=None)


class Sharing:
    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self._chains: dict[str, asyncio.Future[None]] = {}
        self._work: dict[str, LayerWork] = {}
        self._kept: set[str] = set()  # fetched whole, not registered: for a retry
        self._blobs: dict[str, StagedBlob] = {}

    # -- layers

    def claim(self, chain_id: str) -> asyncio.Future[None] | None:
        """None: the caller owns the layer (and must call ``settle``); else the future of
        the image that does, done once the layer is committed (or failed)."""
        if chain_id in self._chains:
            return self._chains[chain_id]
        self._chains[chain_id] = asyncio.get_running_loop().create_future()
        self._work[chain_id] = LayerWork()
        return None

    def work(self, chain_id: str) -> LayerWork:
        """The owner's progress on a claimed layer (a fresh record once it is settled)."""
        return self._work.get(chain_id) or LayerWork()

    def settle(self, chain_id: str, error: BaseException | None = None) -> None:
        self._work.pop(chain_id, None)
        future = self._chains.pop(chain_id, None)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(RuntimeError(f"layer {chain_id}: {error}"))
            future.exception()  # retrieved: waiters report their own failure

    # -- blobs

    def acquire(self, digest: str, start_fetch: Callable[[str, Watermark], Awaitable[None]]
                ) -> StagedBlob:
        staged = self._blobs.get(digest)
        if staged is not None:
            staged.users += 1
            return staged
        self._kept.discard(digest)
        path = self.staging.blob(digest)
        watermark = Watermark(path + ".watermark")
        task = asyncio.ensure_future(start_fetch(path, watermark))
        task.add_done_callback(lambda t: t.cancelled() or (t.exception() and watermark.abandon()))
        staged = StagedBlob(digest, path, watermark, task)
        self._blobs[digest] = staged
        return staged

    async def release(self, staged: StagedBlob) -> None:
        staged.users -= 1
        if staged.users > 0:
            return
        self._blobs.pop(staged.digest, None)
        if not staged.fetch.done():
            staged.watermark.abandon()
            staged.fetch.cancel()
        with contextlib.suppress(BaseException):
            await staged.fetch
        if staged.synced is not None:
            with contextlib.suppress(BaseException):
                await staged.synced
        staged.watermark.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged.watermark.path)
        if staged.bad or staged.registered:
            self.staging.discard_blob(staged.digest)
        elif not staged.fetch.cancelled() and staged.fetch.exception() is None:
            self._kept.add(staged.digest)

    def discard_kept(self) -> None:
        """Blobs fetched whole for pulls that then failed: a retry in this run would have
        reused them; nothing else will (a partial fetch stays, for a later resume)."""
        for digest in self._kept - set(self._blobs):
            self.staging.discard_blob(digest)
        self._kept.clear()
