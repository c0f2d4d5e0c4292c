"""The fast pull: resolve, fetch, unpack, commit, record.

    puller = FastPuller(client, setup, PullOptions())
    image_id = await puller.pull(reference, auth, platform, progress)   # several at once
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nodeagent.containerd.client import AuthConfig, ContainerdClient
from nodeagent.containerd.store import ContainerdStore
from nodeagent.pull import plan as p
from nodeagent.pull.fetch import BlobFetcher, FetchOptions
from nodeagent.pull.image_pull import ImagePull, PullProgress, PullTools
from nodeagent.pull.preconditions import FastPathSetup
from nodeagent.pull.sharing import Sharing
from nodeagent.pull.workers import UnpackPool
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
        self.sharing = Sharing(setup.staging)
        self.tools = PullTools(self.store, setup, self.fetcher, self.pool, self.sharing)

    async def close(self) -> None:
        await self.session.close()
        await self.pool.close()
        self.sharing.discard_kept()

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
            await ImagePull(self.tools, plan, request, config, lease, progress).run()
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
