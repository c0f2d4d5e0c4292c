"""ContainerdClient: asyncio gRPC client for containerd's CRI image service and native API.

One grpc.aio channel per client over the unix socket. Native calls carry the
``containerd-namespace`` metadata (CRI calls too; containerd ignores it there and uses
k8s.io). Short calls get a deadline; PullImage and the event stream get none (multi-GB
pulls take as long as they take) and are cancelled by cancelling the awaiting task.
Import via ``nodeagent.containerd.client``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from nodeagent import redaction
from nodeagent.containerd import convert
from nodeagent.containerd.api.containerd.services.content.v1 import (
    content_pb2,
    content_pb2_grpc,
)
from nodeagent.containerd.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from nodeagent.containerd.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from nodeagent.containerd.api.containerd.services.introspection.v1 import (
    introspection_pb2_grpc,
)
from nodeagent.containerd.api.containerd.services.leases.v1 import leases_pb2_grpc
from nodeagent.containerd.api.containerd.services.snapshots.v1 import (
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from nodeagent.containerd.api.containerd.services.version.v1 import (
    version_pb2_grpc,
)
from nodeagent.containerd.api.runtime.v1 import api_pb2 as cri_pb2
from nodeagent.containerd.api.runtime.v1 import api_pb2_grpc as cri_pb2_grpc
from nodeagent.containerd.model import (
    DEFAULT_ADDRESS,
    DEFAULT_NAMESPACE,
    AuthConfig,
    ContainerdError,
    ContainerdTooOld,
    ContainerdUnavailable,
    CriImage,
    FsUsage,
    ImageEvent,
    ImagePullError,
    ImageRecord,
    IngestStatus,
    VersionInfo,
    classify_pull_error,
    image_event_filters,
    mount_dirs,
    pull_error_message,
    scrub,
    socket_error,
)
from nodeagent.log import fields, redact_text

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
# containerd's own server limit is 16 MiB; ListImages on a busy node can exceed gRPC's
# 4 MiB client default.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.enable_http_proxy", 0),
)
def _status(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    return exc.code().name, redact_text(exc.details() or "")



class _Stubs:
    """The service stubs of one channel (built once, reused for every call)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.cri = cri_pb2_grpc.ImageServiceStub(channel)
        self.images = images_pb2_grpc.ImagesStub(channel)
        self.content = content_pb2_grpc.ContentStub(channel)
        self.events = events_pb2_grpc.EventsStub(channel)
        self.version = version_pb2_grpc.VersionStub(channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(channel)
        self.leases = leases_pb2_grpc.LeasesStub(channel)
        self.introspection = introspection_pb2_grpc.IntrospectionStub(channel)
        self.runtime = cri_pb2_grpc.RuntimeServiceStub(channel)


class ContainerdClient:
    """Async client for one containerd socket and namespace; see module docstring."""

    def __init__(
        self, address: str = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE, *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self._metadata = (("containerd-namespace", namespace),)
        self._stubs: _Stubs | None = None

    def __repr__(self) -> str:
        return f"ContainerdClient(address={self.address!r}, namespace={self.namespace!r})"

    # -- connection ------------------------------------------------------------------

    def stubs(self) -> _Stubs:
        """The service stubs (for the write-side API in ``nodeagent.containerd.store``)."""
        return self._rpc()

    def _rpc(self) -> _Stubs:
        """The client's one channel, opened on first use (and again after close())."""
        if self._stubs is None:
            self._stubs = _Stubs(grpc.aio.insecure_channel(
                "unix://" + self.address, options=_CHANNEL_OPTIONS
            ))
        return self._stubs

    async def connect(self) -> VersionInfo:
        """Check the socket, that the daemon answers, and that it serves CRI runtime.v1."""
        problem = socket_error(self.address)
        if problem is not None:
            raise problem
        info = await self.version()
        try:
            await self.image_fs_info()
        except ContainerdTooOld:
            raise ContainerdTooOld(
                f"containerd {info.version} at {self.address} does not serve the Kubernetes "
                "CRI image API runtime.v1: nodeagent needs containerd 1.6 or newer with the "
                "CRI plugin enabled (remove \"cri\" / \"io.containerd.grpc.v1.cri\" from "
                "disabled_plugins in its config.toml)"
            ) from None
        log.debug("connected to containerd", extra=fields(
            address=self.address, version=info.version, namespace=self.namespace))
        return info

    async def close(self) -> None:
        if self._stubs is not None:
            stubs, self._stubs = self._stubs, None
            await stubs.channel.close()

    async def __aenter__(self) -> ContainerdClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- error handling --------------------------------------------------------------

    def _error(self, exc: grpc.aio.AioRpcError, what: str) -> ContainerdError:
        code, details = _status(exc)
        if code == "UNAVAILABLE":
            problem = socket_error(self.address)
            if problem is not None:
                return problem
            return ContainerdUnavailable(
                f"containerd at {self.address} is not answering ({what}: {details}); check "
                "that the daemon is running (systemctl status containerd, or its log)"
            )
        if code == "UNIMPLEMENTED":
            return ContainerdTooOld(
                f"containerd at {self.address} does not implement {what} ({details}); "
                "nodeagent needs containerd 1.6 or newer"
            )
        return ContainerdError(f"containerd {what} failed ({code}): {details}")

    def metadata(self, lease: str | None = None) -> tuple[tuple[str, str], ...]:
        """gRPC metadata: the namespace, and the lease that protects what a call creates."""
        return self._metadata + ((("containerd-lease", lease),) if lease else ())

    async def _call(
        self, what: str, rpc: Callable[..., Awaitable[Any]], request: Any, *,
        none_if_not_found: bool = False, lease: str | None = None,
    ) -> Any:
        """One unary call with namespace metadata, the deadline and translated errors."""
        try:
            return await rpc(request, metadata=self.metadata(lease), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if none_if_not_found and exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error(exc, what) from None

    call = _call  # the write-side API (``store``) makes its calls through this

    def error(self, exc: grpc.aio.AioRpcError, what: str) -> ContainerdError:
        """A gRPC failure as nodeagent's error type (for ``store``)."""
        return self._error(exc, what)

    # -- CRI runtime.v1.ImageService -------------------------------------------------

    async def pull_image(self, ref: str, auth: AuthConfig | None = None) -> str:
        """Pull (and unpack) ref through CRI; returns the image id (image_ref)."""
        if auth is not None:  # containerd's error text may quote what it was given
            redaction.register(*auth.secrets())
            redaction.register_login(auth.username, auth.password)
        request = cri_pb2.PullImageRequest(
            image=cri_pb2.ImageSpec(image=ref), auth=convert.auth_proto(auth)
        )
        try:
            # No deadline: a 20 GB image may take an hour. Cancelling the awaiting task
            # cancels the RPC, and containerd stops the download.
            response = await self._rpc().cri.PullImage(request, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._pull_error(exc, ref, auth) from None
        return str(response.image_ref)

    def _pull_error(
        self, exc: grpc.aio.AioRpcError, ref: str, auth: AuthConfig | None
    ) -> ContainerdError:
        code, details = _status(exc)
        if code in ("UNAVAILABLE", "UNIMPLEMENTED"):
            return self._error(exc, f"pull of image {ref}")
        details = scrub(details, auth)
        reason = classify_pull_error(code, details)
        return ImagePullError(pull_error_message(ref, reason, details), image=ref, reason=reason)

    async def image_status(self, ref: str) -> CriImage | None:
        request = cri_pb2.ImageStatusRequest(image=cri_pb2.ImageSpec(image=ref))
        response = await self._call(f"image status of {ref}", self._rpc().cri.ImageStatus, request)
        return convert.cri_image(response.image) if response.HasField("image") else None

    async def list_images(self) -> list[CriImage]:
        response = await self._call(
            "CRI image list", self._rpc().cri.ListImages, cri_pb2.ListImagesRequest()
        )
        return [convert.cri_image(m) for m in response.images]

    async def remove_image(self, ref: str) -> None:
        """Remove ref and all its tags (CRI semantics); absent images are not an error."""
        request = cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=ref))
        await self._call(f"removal of image {ref}", self._rpc().cri.RemoveImage, request)

    async def image_fs_info(self) -> list[FsUsage]:
        response = await self._call(
            "CRI image filesystem info", self._rpc().cri.ImageFsInfo, cri_pb2.ImageFsInfoRequest()
        )
        return [convert.fs_usage(m) for m in response.image_filesystems]

    # -- native API (namespaced) -----------------------------------------------------

    async def list_image_records(self, filters: Sequence[str] = ()) -> list[ImageRecord]:
        """Image records in the namespace; filters are OR'ed (containerd filter syntax)."""
        request = images_pb2.ListImagesRequest(filters=list(filters))
        response = await self._call(
            f"image record list in namespace {self.namespace}", self._rpc().images.List, request
        )
        return [convert.image_record(m) for m in response.images]

    async def get_image_record(self, name: str) -> ImageRecord | None:
        response = await self._call(
            f"lookup of image record {name}", self._rpc().images.Get,
            images_pb2.GetImageRequest(name=name), none_if_not_found=True,
        )
        return convert.image_record(response.image) if response is not None else None

    async def update_image_labels(self, name: str, labels: dict[str, str]) -> None:
        """Set the given labels on image record `name`; a value of "" deletes that label."""
        if not labels:
            return
        request = images_pb2.UpdateImageRequest(
            image=images_pb2.Image(name=name, labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        response = await self._call(
            f"label update of image record {name}", self._rpc().images.Update, request,
            none_if_not_found=True,
        )
        if response is None:
            raise ContainerdError(
                f"image record {name} not found in containerd namespace {self.namespace}: "
                "pull the image first"
            )

    async def list_ingests(self, filters: Sequence[str] = ()) -> list[IngestStatus]:
        """Active downloads (content ingests); poll this for byte progress of a pull."""
        request = content_pb2.ListStatusesRequest(filters=list(filters))
        response = await self._call("ingest status list", self._rpc().content.ListStatuses, request)
        return [convert.ingest(s) for s in response.statuses]

    async def content_exists(self, digest: str) -> bool:
        response = await self._call(
            f"content info of {digest}", self._rpc().content.Info,
            content_pb2.InfoRequest(digest=digest), none_if_not_found=True,
        )
        return response is not None

    async def read_content(self, digest: str) -> bytes:
        """The whole blob `digest` (meant for manifests and configs, not layers)."""
        stream = self._rpc().content.Read(
            content_pb2.ReadContentRequest(digest=digest), metadata=self._metadata,
            timeout=self.timeout,
        )
        chunks: list[bytes] = []
        try:
            async for chunk in stream:
                chunks.append(chunk.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ContainerdError(
                    f"content {digest} not found in containerd namespace {self.namespace}"
                ) from None
            raise self._error(exc, f"read of content {digest}") from None
        return b"".join(chunks)

    async def subscribe_image_events(self) -> AsyncIterator[ImageEvent]:
        """Image create/update/delete events of this namespace until the caller stops."""
        request = events_pb2.SubscribeRequest(filters=image_event_filters(self.namespace))
        stream = self._rpc().events.Subscribe(request, metadata=self._metadata)
        try:
            async for envelope in stream:
                event = convert.decode_event(envelope)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "event subscription") from None
        finally:
            stream.cancel()

    async def version(self) -> VersionInfo:
        response = await self._call(
            "version query", self._rpc().version.Version, empty_pb2.Empty()
        )
        return VersionInfo(version=response.version, revision=response.revision)

    # -- snapshots (hydration) -------------------------------------------------------

    async def snapshot_mount_dirs(self, chain_id: str, snapshotter: str = "overlayfs") -> list[str]:
        """Directories of the committed snapshot chain_id and its parents, top layer first.

        Creates a throwaway read-only View, reads its mount, and always removes the view.
        """
        stat = await self._call(
            f"stat of snapshot {chain_id}", self._rpc().snapshots.Stat,
            snapshots_pb2.StatSnapshotRequest(snapshotter=snapshotter, key=chain_id),
            none_if_not_found=True,
        )
        if stat is None:
            raise ContainerdError(
                f"snapshot {chain_id} not found in snapshotter {snapshotter} (namespace "
                f"{self.namespace}): is the image pulled and unpacked with that snapshotter?"
            )
        key = f"nodeagent-view-{uuid.uuid4().hex}"
        try:
            view = await self._call(
                f"view of snapshot {chain_id}", self._rpc().snapshots.View,
                snapshots_pb2.ViewSnapshotRequest(
                    snapshotter=snapshotter, key=key, parent=chain_id
                ),
            )
            mounts = [(m.type, m.source, list(m.options)) for m in view.mounts]
        finally:
            # Always, even if View failed or was cancelled after the daemon created it.
            await self._call(
                f"removal of view {key}", self._rpc().snapshots.Remove,
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                none_if_not_found=True,
            )
        return mount_dirs(mounts, chain_id)
