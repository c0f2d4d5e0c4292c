"""The tags nodeagent puts on its snapshots, and reading them back (pure).

EC2 allows 50 tags per resource and 256 characters per value, so the image list is split
over numbered tags (``nodeagent.io/images.1``, ``.2``, ...) up to a bound, with a count tag
saying how many images there really are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

PREFIX = "nodeagent.io/"
MANAGED_BY = PREFIX + "managed-by"
MANAGED_BY_VALUE = "nodeagent"
HOTLIST_DIGEST = PREFIX + "hotlist-digest"
IMAGES = PREFIX + "images"  # + ".N"
IMAGE_COUNT = PREFIX + "image-count"
ARCHITECTURE = PREFIX + "architecture"
CONTAINERD_VERSION = PREFIX + "containerd-version"
SOURCE_NODE = PREFIX + "source-node"
SOURCE_INSTANCE = PREFIX + "source-instance"
CREATED_AT = PREFIX + "created-at"
CONSISTENCY = PREFIX + "consistency"  # "frozen" or "crash" (not frozen / window overran)
REQUEST_ID = PREFIX + "request-id"  # finds duplicates created by a retried CreateSnapshot
MODELS = PREFIX + "models"  # names of the models in the model cache on the volume
MODEL_COUNT = PREFIX + "model-count"

MAX_VALUE = 256
MAX_IMAGE_TAGS = 30  # leaves room for the fixed tags and the user's own


@dataclass(frozen=True)
class SnapshotMetadata:
    hotlist_digest: str
    images: tuple[str, ...]
    architecture: str
    containerd_version: str
    source_node: str
    created_at: datetime
    source_instance: str = ""
    consistency: str = "frozen"
    request_id: str = ""
    models: tuple[str, ...] = ()  # the model cache's models on the volume (snapshot build)


def hotlist_digest(references: Iterable[str], models: Iterable[str] = ()) -> str:
    """Digest of the set of hot image references (order and duplicates do not matter),
    plus the model names when the volume carries models."""
    entries = {*references, *(f"model:{name}" for name in models)}
    canonical = "\n".join(sorted(entries)) + "\n"
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def chunk_images(images: Sequence[str], max_tags: int = MAX_IMAGE_TAGS) -> list[str]:
    """Comma-joined chunks of at most 256 characters; images that do not fit are left out."""
    chunks: list[str] = []
    current = ""
    for image in images:
        if len(image) > MAX_VALUE:
            continue  # cannot be recorded whole; the count tag still includes it
        candidate = f"{current},{image}" if current else image
        if len(candidate) <= MAX_VALUE:
            current = candidate
            continue
        chunks.append(current)
        if len(chunks) == max_tags:
            return chunks
        current = image
    if current and len(chunks) < max_tags:
        chunks.append(current)
    return chunks


def build_tags(meta: SnapshotMetadata, name: str = "") -> list[dict[str, str]]:
    tags = {
        MANAGED_BY: MANAGED_BY_VALUE,
        HOTLIST_DIGEST: meta.hotlist_digest,
        IMAGE_COUNT: str(len(meta.images)),
        ARCHITECTURE: meta.architecture,
        CONTAINERD_VERSION: meta.containerd_version,
        SOURCE_NODE: meta.source_node,
        CREATED_AT: meta.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        CONSISTENCY: meta.consistency,
    }
    if meta.source_instance:
        tags[SOURCE_INSTANCE] = meta.source_instance
    if meta.request_id:
        tags[REQUEST_ID] = meta.request_id
    if name:
        tags["Name"] = name
    for index, chunk in enumerate(chunk_images(meta.images), start=1):
        tags[f"{IMAGES}.{index}"] = chunk
    if meta.models:
        tags[MODEL_COUNT] = str(len(meta.models))
        tags[MODELS] = (chunk_images(meta.models, max_tags=1) or [""])[0]
    return [{"Key": k, "Value": v[:MAX_VALUE]} for k, v in tags.items()]


def tag_map(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or ()}


def images_from_tags(tags: Mapping[str, str]) -> tuple[tuple[str, ...], bool]:
    """The recorded image list and whether it is complete."""
    numbered = sorted(
        (int(key.rsplit(".", 1)[1]), value)
        for key, value in tags.items()
        if key.startswith(IMAGES + ".") and key.rsplit(".", 1)[1].isdigit()
    )
    images = tuple(image for _, value in numbered for image in value.split(",") if image)
    try:
        expected = int(tags.get(IMAGE_COUNT, len(images)))
    except ValueError:
        expected = len(images)
    return images, expected == len(images)
