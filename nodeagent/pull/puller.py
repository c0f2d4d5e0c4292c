"""The fast pull of one image: resolve, fetch, unpack, commit, record.

    puller = FastPuller(client, setup, PullOptions())
    image_id = await puller.pull(reference, auth, platform, progress)
    await puller.close()

Layers whose snapshot already exists are skipped, as containerd's unpacker skips them.
Every other layer is fetched with concurrent range requests into a staging file while
a worker process unpacks it from the written prefix (``fetch``, ``unpack``, ``workers``);
both digests are verified before anything becomes visible. Snapshots are committed in
chain order (``commit``), blobs and documents land in the content store with containerd's
labels (``content``), and the image records are created last, so containerd never lists a
half image: until the records exist, nothing refers to the new content but the pull's
lease, which expires on its own if nodeagent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodeagent.containerd.client import AuthConfig, ContainerdClient
from nodeagent.containerd.store import ContainerdStore
from nodeagent.pull import plan as p
from nodeagent.pull.commit import commit_layer
from nodeagent.pull.content import store_document, store_layer_blob, sync_file
from nodeagent.pull.fetch import BlobFetcher, BlobSource, FetchOptions
from nodeagent.pull.preconditions import FastPathSetup
from nodeagent.pull.unpack import UnpackError, UnpackJob, UnpackResult
from nodeagent.pull.watermark import Watermark
from nodeagent.pull.workers import UnpackPool, UnpackProgress
from nodeagent.registry.endpoints import registry_endpoints
from nodeagent.registry.errors import RegistryError
from nodeagent.registry.reference import ImageReference
from nodeagent.registry.resolve import ResolvedImage, resolve_manifest
from nodeagent.registry.session import RegistrySession, Request

LEASE_PREFIX = "nodeagent-pull-"
LEASE_LABEL = "nodeagent.io/pull"
LEASE_EXPIRY = timedelta(hours=24)


@dataclass(frozen=True)
class PullOptions:
    chunk_bytes: int = 16 << 20
    connections_per_blob: int = 8
    max_connections: int = 16  # per node, all blobs and images together
    unpack_workers: int = max(1, os.cpu_count() or 1)


@dataclass
class PullProgress:
    """Live counters of one image's fast pull (read by the progress display)."""

    phase: str = "resolving"  # resolving, downloading, unpacking, committing
    total: int = 0  # compressed bytes of the image's layers
    fetched: int = 0  # compressed bytes on disk (layers present at the start included)
    unpacked_done: int = 0  # uncompressed bytes of finished layers
    _unpacking: dict[str, UnpackProgress] = field(default_factory=dict, repr=False)

    @property
    def unpacked(self) -> int:
        return self.unpacked_done + sum(u.read()[1] for u in self._unpacking.values())


@dataclass
class _Unpacked:
    layer: p.LayerPlan
    result: UnpackResult
    staged_blob: str | None  # fetched into staging (else the store already had it)
    synced: asyncio.Task[None] | None = None  # the staged blob's flush to disk


class FastPuller:
    def __init__(self, client: ContainerdClient, setup: FastPathSetup,
                 options: PullOptions | None = None) -> None:
        self.setup = setup
        self.options = options or PullOptions()
        self.store = ContainerdStore(client)
        self.session = RegistrySession(self.options.max_connections)
        self.fetcher = BlobFetcher(self.session, FetchOptions(
            self.options.chunk_bytes, self.options.connections_per_blob))
        self.pool = UnpackPool(self.options.unpack_workers)

    async def close(self) -> None:
        await self.session.close()
        await self.pool.close()

    async def resolve(self, reference: ImageReference, auth: AuthConfig | None,
                      platform: str | None) -> ResolvedImage:
        return await resolve_manifest(reference, auth, platform, self.setup.hosts_dir,
                                      self.session)

    async def pull(self, reference: ImageReference, auth: AuthConfig | None,
                   platform: str | None, progress: PullProgress | None = None,
                   resolved: ResolvedImage | None = None) -> str:
        """Pull ``reference``; returns the image ID (config digest), as CRI does.
        Raises plan.Unsupported (pull it through CRI instead), RegistryError,
        UnpackError or ContainerdError."""
        progress = progress or PullProgress()
        resolved = resolved or await self.resolve(reference, auth, platform)
        request = Request(f'image "{reference}"', reference.repository, auth)
        config = await self._config(reference, resolved, request)
        plan = p.plan_image(reference, resolved, config)
        lease = await self._lease(plan)
        try:
            await _ImagePull(self, plan, resolved, request, config, lease, progress).run()
        finally:
            # Success: the image records now hold everything. Failure: whatever this
            # attempt committed goes with the lease (staged blobs stay for the retry).
            # A killed process never gets here: its lease keeps the committed layers for
            # the next run, which reuses the same lease, or expires.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.delete_lease(lease))
        return plan.image_id

    async def _config(self, reference: ImageReference, resolved: ResolvedImage,
                      request: Request) -> bytes:
        digest = resolved.config_digest
        if await self.store.content_info(digest) is not None:
            return await self.store.client.read_content(digest)
        assert resolved.endpoint is not None
        url = resolved.endpoint.url(reference.repository, "blobs", digest, reference.registry)
        _, data = await self.session.read(resolved.endpoint, url, request)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f'image "{reference}": config blob from '
                                f"{resolved.endpoint.host} does not match digest {digest}")
        return data

    async def _lease(self, plan: p.ImagePlan) -> str:
        key = f"{plan.target.digest} {plan.manifest.digest}".encode()
        lease = LEASE_PREFIX + hashlib.sha256(key).hexdigest()[:24]
        expires = (datetime.now(UTC) + LEASE_EXPIRY).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.store.create_lease(lease, {"containerd.io/gc.expire": expires,
                                              LEASE_LABEL: str(plan.reference)[:63]})
        return lease


class _ImagePull:
    """One image's pull; see the module docstring for the order of things."""

    def __init__(self, puller: FastPuller, plan: p.ImagePlan, resolved: ResolvedImage,
                 request: Request, config: bytes, lease: str, progress: PullProgress) -> None:
        self.puller, self.plan, self.resolved = puller, plan, resolved
        self.request, self.config, self.lease, self.progress = request, config, lease, progress
        self.store, self.setup = puller.store, puller.setup
        self._syncs: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        snapshotter = self.setup.snapshotter
        present = {layer.chain_id for layer in self.plan.layers
                   if await self.store.snapshot(snapshotter, layer.chain_id) is not None}
        self.progress.total = sum(layer.blob.size for layer in self.plan.layers)
        self.progress.fetched = sum(layer.blob.size for layer in self.plan.layers
                                    if layer.chain_id in present)
        self.progress.phase = "downloading"
        missing = [layer for layer in self.plan.layers if layer.chain_id not in present]
        tasks = {layer.chain_id: asyncio.create_task(self._unpack(layer)) for layer in missing}
        try:
            for layer in missing:  # commit in chain order, each as soon as it is ready
                unpacked = await tasks[layer.chain_id]
                await self._commit(unpacked)
        except BaseException:
            for task in tasks.values():
                task.cancel()
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
            for result in results:
                if isinstance(result, _Unpacked):
                    shutil.rmtree(result.result.target, ignore_errors=True)
            raise
        self.progress.phase = "committing"
        await self._documents()
        await self._records()

    # -- one layer

    async def _unpack(self, layer: p.LayerPlan) -> _Unpacked:
        staging, digest = self.setup.staging, layer.blob.digest
        in_store = (await self.store.content_info(digest) is not None
                    or os.path.exists(staging.stored_blob(digest)))
        blob = staging.stored_blob(digest) if in_store else staging.blob(digest)
        watermark = None if in_store else Watermark(blob + ".watermark")
        target = staging.new_unpack_dir(layer.chain_id)
        job = UnpackJob(blob, layer.blob.size, digest, layer.diff_id, target, layer.overlay,
                        watermark.path if watermark else None)
        progress = UnpackProgress(staging.blob(digest) + ".progress")
        self.progress._unpacking[digest] = progress
        try:
            result = await self._fetch_and_unpack(layer, job, watermark, progress)
        except BaseException as exc:
            shutil.rmtree(target, ignore_errors=True)
            if isinstance(exc, UnpackError) and exc.bad_blob and not in_store:
                staging.discard_blob(digest)  # fetch it afresh next time
            raise
        finally:
            self.progress._unpacking.pop(digest, None)
            progress.close()
            if watermark is not None:
                watermark.close()
        self.progress.unpacked_done += result.unpacked_bytes
        return _Unpacked(layer, result, None if in_store else blob,
                         None if in_store else self._syncs.pop(digest, None))

    async def _fetch_and_unpack(self, layer: p.LayerPlan, job: UnpackJob,
                                watermark: Watermark | None, progress: UnpackProgress
                                ) -> UnpackResult:
        unpack = asyncio.create_task(self.puller.pool.unpack(job, progress))
        if watermark is None:
            self.progress.fetched += layer.blob.size
            return await unpack
        fetch = asyncio.create_task(self.puller.fetcher.fetch(
            self._source(layer), job.blob, watermark, self._fetched))
        try:
            done, _ = await asyncio.wait({fetch, unpack}, return_when=asyncio.FIRST_EXCEPTION)
            if fetch in done and fetch.exception() is not None:
                watermark.abandon()
                raise fetch.exception()  # type: ignore[misc]
            await fetch
            self._syncs[layer.blob.digest] = asyncio.create_task(
                asyncio.to_thread(sync_file, job.blob))
            return await unpack
        finally:
            for task in (fetch, unpack):
                if not task.done():
                    watermark.abandon()
                    task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(fetch, unpack, return_exceptions=True)

    def _fetched(self, count: int) -> None:
        self.progress.fetched += count

    def _source(self, layer: p.LayerPlan) -> BlobSource:
        reference = self.plan.reference
        endpoints = registry_endpoints(
            reference.registry, _path(self.setup.hosts_dir))
        return BlobSource(layer.blob.digest, layer.blob.size, tuple(endpoints),
                          reference.registry, reference.repository, self.request)

    async def _commit(self, unpacked: _Unpacked) -> None:
        layer = unpacked.layer
        labels = {p.UNCOMPRESSED_LABEL: layer.diff_id, **await self._source_label(
            layer.blob.digest)}
        if unpacked.synced is not None:
            await unpacked.synced
        if not self.setup.discard_unpacked_layers:
            await store_layer_blob(self.store, self.setup, layer.blob.digest, layer.blob.size,
                                   unpacked.staged_blob, labels, self.lease)
        await commit_layer(self.store, self.setup, layer, unpacked.result.target,
                           unpacked.result.implicit_dirs, self.lease)
        if unpacked.staged_blob is not None:
            self.setup.staging.discard_blob(layer.blob.digest)

    # -- documents and records

    async def _documents(self) -> None:
        plan, lease = self.plan, self.lease
        config_labels = {**p.config_labels(plan, self.setup.snapshotter),
                         **await self._source_label(plan.config.digest)}
        await store_document(self.store, "config", plan.config.digest, self.config,
                             config_labels, lease)
        manifest_labels = p.manifest_labels(plan)
        if self.setup.discard_unpacked_layers:
            manifest_labels = {k: v for k, v in manifest_labels.items() if ".l." not in k}
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


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None
