"""One image's fast pull, once its plan is known (see ``puller`` for the whole story).

Every missing layer starts at once: its blob is fetched into staging (``fetch``) while a
worker unpacks the written prefix (``workers``). Layers are committed in chain order, each
as soon as it is unpacked and its parent is committed (``commit``); layers another image
is already pulling are waited for (``sharing``). Then the config, manifest and index go
into the content store with containerd's labels and the image records are created last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.containerd.store import ContainerdStore
from nodeagent.log import fields
from nodeagent.pull import plan as p
from nodeagent.pull.commit import commit_layer
from nodeagent.pull.content import store_document, store_layer_blob, sync_file
from nodeagent.pull.fetch import BlobFetcher, BlobSource
from nodeagent.pull.preconditions import FastPathSetup
from nodeagent.pull.sharing import LayerWork, Sharing, StagedBlob
from nodeagent.pull.unpack import UnpackError, UnpackJob, UnpackResult
from nodeagent.pull.watermark import Watermark
from nodeagent.pull.workers import UnpackPool, UnpackProgress
from nodeagent.registry.endpoints import registry_endpoints
from nodeagent.registry.session import Request

log = logging.getLogger(__name__)


@dataclass
class PullProgress:
    """Live counters of one image's fast pull (read by the progress display)."""

    phase: str = "resolving"  # resolving, downloading, unpacking, committing
    total: int = 0  # compressed bytes of the image's layers
    fetched: int = 0  # compressed bytes on disk (layers present at the start included)
    unpacked_done: int = 0  # uncompressed bytes of finished layers
    stored: int = 0  # bytes streamed to containerd's content service (isolated policy)
    _unpacking: dict[str, UnpackProgress] = field(default_factory=dict, repr=False)
    _waiting: dict[str, LayerWork] = field(default_factory=dict, repr=False)

    @property
    def unpacked(self) -> int:
        return self.unpacked_done + sum(u.read()[1] for u in self._unpacking.values())

    def work(self) -> int:
        """Grows while anything moves for this image, including the layers it waits for
        another image to pull: what stall detection watches."""
        return (self.fetched + self.unpacked + self.stored
                + sum(work.amount() for work in self._waiting.values()))

    def downloading(self) -> bool:
        """Bytes are still to come, for this image or a layer it waits on: only then can
        the pull stall (a flush or commit after the last byte may take long)."""
        borrowed = sum(work.fetched for work in self._waiting.values())
        return self.phase == "downloading" and self.fetched + borrowed < self.total


@dataclass
class _Unpacked:
    layer: p.LayerPlan
    result: UnpackResult
    staged: StagedBlob | None  # fetched into staging (else the store already had it)


@dataclass(frozen=True)
class PullTools:
    """What every image's pull uses, kept by the FastPuller between images."""

    store: ContainerdStore
    setup: FastPathSetup
    fetcher: BlobFetcher
    pool: UnpackPool
    sharing: Sharing


class ImagePull:
    def __init__(self, tools: PullTools, plan: p.ImagePlan, request: Request, config: bytes,
                 lease: str, progress: PullProgress) -> None:
        self.tools, self.plan, self.request = tools, plan, request
        self.config, self.lease, self.progress = config, lease, progress
        self.store, self.setup, self.sharing = tools.store, tools.setup, tools.sharing
        self._registrations: dict[str, asyncio.Task[None]] = {}  # chain -> its blob's

    async def run(self) -> None:
        snapshotter = self.setup.snapshotter
        present = {layer.chain_id for layer in self.plan.layers
                   if await self.store.snapshot(snapshotter, layer.chain_id) is not None}
        self.progress.total = sum(layer.blob.size for layer in self.plan.layers)
        self.progress.fetched = sum(layer.blob.size for layer in self.plan.layers
                                    if layer.chain_id in present)
        self.progress.phase = "downloading"
        missing = [layer for layer in self.plan.layers if layer.chain_id not in present]
        owned: dict[str, asyncio.Task[_Unpacked]] = {}
        others: dict[str, asyncio.Future[None]] = {}
        for layer in missing:
            future = self.sharing.claim(layer.chain_id)
            if future is None:
                owned[layer.chain_id] = asyncio.create_task(self._unpack(layer))
            else:
                others[layer.chain_id] = future
                self.progress._waiting[layer.chain_id] = self.sharing.work(layer.chain_id)
        try:
            for layer in missing:  # chain order: a layer's parent is committed before it
                await self._settle(layer, owned, others)
            for registration in self._registrations.values():
                await registration  # every blob in the content store before the records
        except BaseException as exc:
            await self._abandon(owned, exc)
            raise
        self.progress.phase = "committing"
        await self._documents()
        await self._records()

    async def _settle(self, layer: p.LayerPlan, owned: dict[str, asyncio.Task[_Unpacked]],
                      others: dict[str, asyncio.Future[None]]) -> None:
        chain = layer.chain_id
        if chain in others:
            await asyncio.shield(others[chain])  # another image commits it
            self.progress.fetched += layer.blob.size
            self.progress._waiting.pop(chain, None)
            return
        unpacked = await owned[chain]
        try:
            await self._commit(unpacked)
        except BaseException as exc:
            self.sharing.settle(chain, exc)
            raise

    async def _abandon(self, owned: dict[str, asyncio.Task[_Unpacked]],
                       error: BaseException) -> None:
        for task in [*owned.values(), *self._registrations.values()]:
            task.cancel()
        await asyncio.gather(*self._registrations.values(), return_exceptions=True)
        results = await asyncio.gather(*owned.values(), return_exceptions=True)
        for chain, result in zip(owned, results, strict=True):
            self.sharing.settle(chain, error)  # no-op for chains already settled
            if isinstance(result, _Unpacked):
                shutil.rmtree(result.result.target, ignore_errors=True)
                if result.staged is not None:
                    await self.sharing.release(result.staged)

    # -- one layer

    async def _unpack(self, layer: p.LayerPlan) -> _Unpacked:
        staging, digest = self.setup.staging, layer.blob.digest
        work = self.sharing.work(layer.chain_id)
        in_store = await self.store.content_info(digest) is not None or (
            self.setup.shared_content and os.path.exists(staging.stored_blob(digest)))
        staged = None if in_store else self.sharing.acquire(digest, self._fetcher(layer, work))
        blob = staging.stored_blob(digest) if staged is None else staged.path
        target = staging.new_unpack_dir(layer.chain_id)
        job = UnpackJob(blob, layer.blob.size, digest, layer.diff_id, target, layer.overlay,
                        staged.watermark.path if staged else None)
        progress = UnpackProgress(f"{staging.blob(digest)}.{uuid.uuid4().hex[:8]}.progress")
        self.progress._unpacking[progress.path] = work.unpacking = progress
        try:
            result = await self._fetch_and_unpack(job, staged, progress)
            work.unpacked = result.unpacked_bytes
        except BaseException as exc:
            shutil.rmtree(target, ignore_errors=True)
            if staged is not None:
                staged.bad = staged.bad or (isinstance(exc, UnpackError) and exc.bad_blob)
                await self.sharing.release(staged)
            raise
        finally:
            self.progress._unpacking.pop(progress.path, None)
            work.unpacking = None
            progress.close()
        if staged is None:
            self.progress.fetched += layer.blob.size
        self.progress.unpacked_done += result.unpacked_bytes
        log.debug("layer unpacked", extra=fields(
            layer=digest, chain=layer.chain_id, entries=result.entries,
            unpacked_bytes=result.unpacked_bytes, seconds=round(result.seconds, 3),
            fetched=staged is not None))
        return _Unpacked(layer, result, staged)

    def _fetcher(self, layer: p.LayerPlan, work: LayerWork):  # type: ignore[no-untyped-def]
        def fetched(count: int) -> None:
            self.progress.fetched += count
            work.fetched += count

        async def fetch(path: str, watermark: Watermark) -> None:
            await self.tools.fetcher.fetch(self._source(layer), path, watermark, fetched)
        return fetch

    async def _fetch_and_unpack(self, job: UnpackJob, staged: StagedBlob | None,
                                progress: UnpackProgress) -> UnpackResult:
        unpack = asyncio.create_task(self.tools.pool.unpack(job, progress))
        try:
            if staged is not None:
                fetch = asyncio.ensure_future(asyncio.shield(staged.fetch))
                done, _ = await asyncio.wait({fetch, unpack},
                                             return_when=asyncio.FIRST_EXCEPTION)
                if fetch in done and fetch.exception() is not None:
                    raise fetch.exception()  # type: ignore[misc]
                await fetch
                if staged.synced is None:
                    staged.synced = asyncio.create_task(asyncio.to_thread(sync_file, job.blob))
            return await unpack
        finally:
            if not unpack.done():
                unpack.cancel()
                with contextlib.suppress(BaseException):
                    await unpack

    def _source(self, layer: p.LayerPlan) -> BlobSource:
        reference = self.plan.reference
        hosts = Path(self.setup.hosts_dir) if self.setup.hosts_dir else None
        return BlobSource(layer.blob.digest, layer.blob.size,
                          tuple(registry_endpoints(reference.registry, hosts)),
                          reference.registry, reference.repository, self.request)

    async def _commit(self, unpacked: _Unpacked) -> None:
        """The snapshot now (the next layer waits for it); the blob's flush to disk and its
        registration in the content store go on in the background (``_register``)."""
        layer = unpacked.layer
        try:
            ours = await commit_layer(self.store, self.setup, layer, unpacked.result.target,
                                      unpacked.result.implicit_dirs, self.lease)
        except BaseException:
            shutil.rmtree(unpacked.result.target, ignore_errors=True)
            if unpacked.staged is not None:
                await self.sharing.release(unpacked.staged)
            raise
        log.debug("layer committed" if ours else "layer committed by someone else",
                  extra=fields(layer=layer.blob.digest, chain=layer.chain_id))
        registration = asyncio.create_task(self._register(unpacked))
        registration.add_done_callback(lambda task: self._registered(layer.chain_id, task))
        self._registrations[layer.chain_id] = registration

    def _registered(self, chain: str, task: asyncio.Task[None]) -> None:
        """Images waiting for this layer may go on once its blob is in the store too."""
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        self.sharing.settle(chain, error)

    async def _register(self, unpacked: _Unpacked) -> None:
        layer, staged = unpacked.layer, unpacked.staged
        try:
            if staged is not None and staged.synced is not None:
                await staged.synced
            if not self.setup.discard_unpacked_layers:
                labels = {p.UNCOMPRESSED_LABEL: layer.diff_id,
                          **await self._source_label(layer.blob.digest)}
                await store_layer_blob(self.store, self.setup, layer.blob.digest,
                                       layer.blob.size, staged.path if staged else None,
                                       labels, self.lease, self._stored)
            if staged is not None:
                staged.registered = True
        finally:
            if staged is not None:
                await self.sharing.release(staged)

    def _stored(self, count: int) -> None:
        self.progress.stored += count

    # -- documents and records

    async def _documents(self) -> None:
        plan, lease = self.plan, self.lease
        config_labels = {**p.config_labels(plan, self.setup.snapshotter),
                         **await self._source_label(plan.config.digest)}
        await store_document(self.store, "config", plan.config.digest, self.config,
                             config_labels, lease)
        manifest_labels = p.manifest_labels(plan, not self.setup.discard_unpacked_layers)
        manifest_labels.update(await self._source_label(plan.manifest.digest))
        await store_document(self.store, "manifest", plan.manifest.digest, plan.manifest.data,
                             manifest_labels, lease)
        if plan.index is not None:
            index_labels = {**p.index_labels(plan.index),
                            **await self._source_label(plan.index.digest)}
            await store_document(self.store, "index", plan.index.digest, plan.index.data,
                                 index_labels, lease)

    async def _source_label(self, digest: str) -> dict[str, str]:
        info = await self.store.content_info(digest)
        return p.merged_source(info.labels if info else {}, self.plan.reference)

    async def _records(self) -> None:
        target = self.plan.target
        labels = {p.CRI_MANAGED_LABEL: "managed"}
        for name in self.plan.names:
            created = await self.store.create_image(name, target.media_type, target.digest,
                                                    target.size, labels, self.lease)
            if created:
                continue
            record = await self.store.client.get_image_record(name)
            if record is not None and record.target_digest != target.digest:
                await self.store.update_image_target(name, target.media_type, target.digest,
                                                     target.size, labels)
