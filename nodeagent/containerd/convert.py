"""protobuf messages -> nodeagent's dataclasses (and back, for CRI auth)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from nodeagent.containerd.api.containerd.events import image_pb2 as image_events_pb2
from nodeagent.containerd.api.containerd.services.content.v1 import content_pb2
from nodeagent.containerd.api.containerd.services.events.v1 import events_pb2
from nodeagent.containerd.api.containerd.services.images.v1 import images_pb2
from nodeagent.containerd.api.runtime.v1 import api_pb2 as cri_pb2
from nodeagent.containerd.model import (
    AuthConfig,
    CriImage,
    FsUsage,
    ImageEvent,
    ImageRecord,
    IngestStatus,
)
from nodeagent.log import fields

log = logging.getLogger(__name__)

# Event payload message per topic (type_url is "containerd.services.images.v1.<Name>").
_EVENT_TYPES = {
    "/images/create": image_events_pb2.ImageCreate,
    "/images/update": image_events_pb2.ImageUpdate,
    "/images/delete": image_events_pb2.ImageDelete,
}


def datetime_of(ts: Any) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def cri_image(msg: cri_pb2.Image) -> CriImage:
    return CriImage(
        id=msg.id, repo_tags=list(msg.repo_tags), repo_digests=list(msg.repo_digests),
        size=msg.size, pinned=msg.pinned,
    )


def image_record(msg: images_pb2.Image) -> ImageRecord:
    return ImageRecord(
        name=msg.name, labels=dict(msg.labels), target_digest=msg.target.digest,
        target_media_type=msg.target.media_type, target_size=msg.target.size,
    )


def ingest(msg: content_pb2.Status) -> IngestStatus:
    return IngestStatus(
        ref=msg.ref, offset=msg.offset, total=msg.total, expected=msg.expected,
        started_at=datetime_of(msg.started_at), updated_at=datetime_of(msg.updated_at),
    )


def fs_usage(msg: cri_pb2.FilesystemUsage) -> FsUsage:
    return FsUsage(
        mountpoint=msg.fs_id.mountpoint, used_bytes=msg.used_bytes.value,
        inodes_used=msg.inodes_used.value,
    )


def auth_proto(auth: AuthConfig | None) -> cri_pb2.AuthConfig | None:
    if auth is None:
        return None
    return cri_pb2.AuthConfig(
        username=auth.username, password=auth.password, auth=auth.auth,
        server_address=auth.server_address, identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )


def decode_event(envelope: events_pb2.Envelope) -> ImageEvent | None:
    message_type = _EVENT_TYPES.get(envelope.topic)
    type_name = envelope.event.type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    if message_type is None or type_name != message_type.DESCRIPTOR.name:
        log.debug("ignoring event", extra=fields(topic=envelope.topic,
                                                 type_url=envelope.event.type_url))
        return None
    payload = message_type.FromString(envelope.event.value)
    return ImageEvent(topic=envelope.topic, name=payload.name)
