"""containerd's write side, as the fast pull uses it: content, snapshots, leases, image
records, plus the facts that decide whether the fast pull can run (CRI config, plugin
roots, content sharing policy).

Every call that creates something takes the ``lease`` it belongs to (gRPC metadata
``containerd-lease``), so a pull that dies leaves nothing that outlives the lease.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from google.protobuf import field_mask_pb2

from nodeagent.containerd.api.containerd.services.content.v1 import content_pb2
from nodeagent.containerd.api.containerd.services.images.v1 import images_pb2
from nodeagent.containerd.api.containerd.services.introspection.v1 import introspection_pb2
from nodeagent.containerd.api.containerd.services.leases.v1 import leases_pb2
from nodeagent.containerd.api.containerd.services.snapshots.v1 import snapshots_pb2
from nodeagent.containerd.api.containerd.types import descriptor_pb2
from nodeagent.containerd.api.runtime.v1 import api_pb2 as cri_pb2
from nodeagent.containerd.model import ContainerdError

if TYPE_CHECKING:
    from nodeagent.containerd.grpc_client import ContainerdClient

WRITE_MESSAGE_BYTES = 4 << 20
# Yields a blob's bytes from the given offset on (what containerd does not have yet).
BlobChunks = Callable[[int], AsyncIterator[bytes]]


@dataclass(frozen=True)
class CriConfig:
    """What containerd's CRI plugin is configured with (CRI Status, verbose)."""

    snapshotter: str
    config_path: str  # registry hosts.toml directory ("" when unset)
    root_dir: str
    discard_unpacked_layers: bool


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # VIEW, ACTIVE, COMMITTED
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContentInfo:
    digest: str
    size: int
    labels: dict[str, str] = field(default_factory=dict)


class ContainerdStore:
    """Write-side calls on one client's channel and namespace."""

    def __init__(self, client: ContainerdClient) -> None:
        self.client = client

    # -- facts

    async def cri_config(self) -> CriConfig:
        response = await self.client.call(
            "CRI runtime status", self.client.stubs().runtime.Status,
            cri_pb2.StatusRequest(verbose=True))
        try:
            config = json.loads(response.info["config"])
            containerd = config.get("containerd", {})
            return CriConfig(
                snapshotter=str(containerd.get("snapshotter", "")),
                config_path=str(config.get("registry", {}).get("configPath", "") or ""),
                root_dir=str(config.get("containerdRootDir", "")),
                discard_unpacked_layers=bool(containerd.get("discardUnpackedLayers")))
        except (KeyError, ValueError, AttributeError):
            raise ContainerdError("containerd's CRI status has no readable config") from None

    async def plugin_exports(self, plugin_type: str, plugin_id: str) -> dict[str, str] | None:
        """A plugin's exports (e.g. a snapshotter's "root"), None if it isn't loaded."""
        response = await self.client.call(
            f"plugin list ({plugin_type})", self.client.stubs().introspection.Plugins,
            introspection_pb2.PluginsRequest(filters=[f'type=="{plugin_type}"']))
        for plugin in response.plugins:
            if plugin.id == plugin_id:
                return dict(plugin.exports)
        return None

    # -- content

    async def content_info(self, digest: str) -> ContentInfo | None:
        response = await self.client.call(
            f"content info of {digest}", self.client.stubs().content.Info,
            content_pb2.InfoRequest(digest=digest), none_if_not_found=True)
        if response is None:
            return None
        return ContentInfo(response.info.digest, response.info.size, dict(response.info.labels))

    async def set_content_labels(self, digest: str, labels: dict[str, str]) -> None:
        request = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels=labels),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]))
        await self.client.call(f"label update of content {digest}",
                               self.client.stubs().content.Update, request)

    async def write_content(self, ref: str, digest: str, size: int, labels: dict[str, str],
                            chunks: BlobChunks | None, lease: str) -> bool:
        """Store blob ``digest`` through the content service. containerd verifies size and
        digest on commit. An ingest already under way for ``ref`` is resumed from its
        offset (``chunks(offset)`` yields the rest); a blob containerd already has on disk
        (shared content policy) is committed without any data. Returns False if the blob
        already existed in the namespace."""
        call = self.client.stubs().content.Write(metadata=self.client.metadata(lease))
        what = f"write of content {digest}"
        try:
            await call.write(content_pb2.WriteContentRequest(
                action=content_pb2.STAT, ref=ref, total=size, expected=digest))
            status = await call.read()
            offset = status.offset
            if offset < size:
                if chunks is None:
                    raise ContainerdError(f"{what}: containerd has {offset} of {size} bytes "
                                          "and no data source was given")
                async for data in chunks(offset):
                    await call.write(content_pb2.WriteContentRequest(
                        action=content_pb2.WRITE, offset=offset, data=data))
                    offset = (await call.read()).offset
            await call.write(content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT, offset=offset, total=size, expected=digest,
                labels=labels))
            await call.read()
            await call.done_writing()
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return False
            raise self.client.error(exc, what) from None
        finally:
            call.cancel()

    async def abort_ingest(self, ref: str) -> None:
        await self.client.call(f"abort of ingest {ref}", self.client.stubs().content.Abort,
                               content_pb2.AbortRequest(ref=ref), none_if_not_found=True)

    # -- snapshots

    async def snapshot(self, snapshotter: str, key: str) -> SnapshotInfo | None:
        response = await self.client.call(
            f"stat of snapshot {key}", self.client.stubs().snapshots.Stat,
            snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=key),
            none_if_not_found=True)
        return _snapshot_info(response.info) if response is not None else None

    async def snapshots(self, snapshotter: str, filters: tuple[str, ...] = ()
                        ) -> list[SnapshotInfo]:
        stream = self.client.stubs().snapshots.List(
            snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters)),
            metadata=self.client.metadata(), timeout=self.client.timeout)
        found: list[SnapshotInfo] = []
        try:
            async for page in stream:
                found.extend(_snapshot_info(info) for info in page.info)
        except grpc.aio.AioRpcError as exc:
            raise self.client.error(exc, "snapshot list") from None
        return found

    async def prepare(self, snapshotter: str, key: str, parent: str, labels: dict[str, str],
                      lease: str) -> list[Mount] | None:
        """The mounts of new active snapshot ``key``; None when the snapshot named by the
        ``containerd.io/snapshot.ref`` label exists already (containerd answers
        ALREADY_EXISTS: someone else committed the same layer meanwhile)."""
        try:
            response = await self.client.stubs().snapshots.Prepare(
                snapshots_pb2.PrepareSnapshotRequest(snapshotter=snapshotter, key=key,
                                                     parent=parent, labels=labels),
                metadata=self.client.metadata(lease), timeout=self.client.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return None
            raise self.client.error(exc, f"prepare of snapshot {key}") from None
        return [Mount(m.type, m.source, tuple(m.options)) for m in response.mounts]

    async def commit(self, snapshotter: str, name: str, key: str, labels: dict[str, str],
                     lease: str) -> bool:
        """Commit active snapshot ``key`` as ``name``; False if ``name`` already exists
        (someone else committed the same layer first)."""
        try:
            await self.client.stubs().snapshots.Commit(
                snapshots_pb2.CommitSnapshotRequest(snapshotter=snapshotter, name=name,
                                                    key=key, labels=labels),
                metadata=self.client.metadata(lease), timeout=self.client.timeout)
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return False
            raise self.client.error(exc, f"commit of snapshot {name}") from None

    async def remove_snapshot(self, snapshotter: str, key: str) -> None:
        await self.client.call(
            f"removal of snapshot {key}", self.client.stubs().snapshots.Remove,
            snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
            none_if_not_found=True)

    # -- leases

    async def create_lease(self, lease_id: str, labels: dict[str, str]) -> bool:
        """False if it exists already (a re-run resumes under the same lease)."""
        try:
            await self.client.stubs().leases.Create(
                leases_pb2.CreateRequest(id=lease_id, labels=labels),
                metadata=self.client.metadata(), timeout=self.client.timeout)
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return False
            raise self.client.error(exc, f"creation of lease {lease_id}") from None

    async def delete_lease(self, lease_id: str, sync: bool = False) -> None:
        await self.client.call(f"deletion of lease {lease_id}",
                               self.client.stubs().leases.Delete,
                               leases_pb2.DeleteRequest(id=lease_id, sync=sync),
                               none_if_not_found=True)

    async def leases(self, filters: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
        response = await self.client.call("lease list", self.client.stubs().leases.List,
                                          leases_pb2.ListRequest(filters=list(filters)))
        return {lease.id: dict(lease.labels) for lease in response.leases}

    # -- image records

    async def create_image(self, name: str, media_type: str, digest: str, size: int,
                           labels: dict[str, str], lease: str) -> bool:
        """Create image record ``name``; False if it exists (the caller compares targets)."""
        image = images_pb2.Image(name=name, labels=labels, target=descriptor_pb2.Descriptor(
            media_type=media_type, digest=digest, size=size))
        try:
            await self.client.stubs().images.Create(
                images_pb2.CreateImageRequest(image=image), metadata=self.client.metadata(lease),
                timeout=self.client.timeout)
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return False
            raise self.client.error(exc, f"creation of image record {name}") from None

    async def update_image_target(self, name: str, media_type: str, digest: str, size: int,
                                  labels: dict[str, str]) -> None:
        """Point an existing record at a new target (a tag moved), with these labels."""
        image = images_pb2.Image(name=name, labels=labels, target=descriptor_pb2.Descriptor(
            media_type=media_type, digest=digest, size=size))
        mask = field_mask_pb2.FieldMask(paths=["target", *(f"labels.{k}" for k in labels)])
        await self.client.call(f"update of image record {name}",
                               self.client.stubs().images.Update,
                               images_pb2.UpdateImageRequest(image=image, update_mask=mask))



def _snapshot_info(info: snapshots_pb2.Info) -> SnapshotInfo:
    kind = snapshots_pb2.Kind.Name(info.kind)
    return SnapshotInfo(info.name, info.parent, kind, dict(info.labels))
