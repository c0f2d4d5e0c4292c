"""Work shared between images pulled at the same time (they often share base layers).

A layer (chain ID) is unpacked and committed by the first image that needs it; the others
wait for that commit. A blob is fetched once into its staging file, however many layers
read it; the file is removed when its last reader is done (and only kept for a resume
when the fetch did not finish).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nodeagent.pull.staging import Staging
from nodeagent.pull.watermark import Watermark


@dataclass
class StagedBlob:
    digest: str
    path: str
    watermark: Watermark
    fetch: asyncio.Task[None]
    users: int = 1
    bad: bool = False  # the content is wrong: remove it, fetch afresh next time
    synced: asyncio.Task[None] | None = field(default=None)


class Sharing:
    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self._chains: dict[str, asyncio.Future[None]] = {}
        self._blobs: dict[str, StagedBlob] = {}

    # -- layers

    def claim(self, chain_id: str) -> asyncio.Future[None] | None:
        """None: the caller owns the layer (and must call ``settle``); else the future of
        the image that does, done once the layer is committed (or failed)."""
        if chain_id in self._chains:
            return self._chains[chain_id]
        self._chains[chain_id] = asyncio.get_running_loop().create_future()
        return None

    def settle(self, chain_id: str, error: BaseException | None = None) -> None:
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
        fetched = not staged.fetch.cancelled() and staged.fetch.exception() is None
        if staged.bad or fetched:
            self.staging.discard_blob(staged.digest)  # registered, or wrong: not needed
