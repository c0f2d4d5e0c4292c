"""Pure decisions of the fast pull: what an image is made of in containerd's terms (chain
IDs, snapshot keys, image record names) and the labels containerd's own pull writes.

Labels, as containerd 1.6's pull and unpacker write them (read off a real CRI pull):
- every blob: ``containerd.io/distribution.source.<registry host>=<repository>``;
- index: ``containerd.io/gc.ref.content.m.<i>`` per manifest it lists;
- manifest: ``containerd.io/gc.ref.content.config`` and ``...content.l.<i>`` per layer;
- config: ``containerd.io/gc.ref.snapshot.<snapshotter>=<top chain ID>``;
- layer: ``containerd.io/uncompressed=<diff ID>``;
- snapshots: ``containerd.io/snapshot.ref=<chain ID>``;
- image records (tag, repo@digest, config ID): ``io.cri-containerd.image=managed``.
With these, containerd's garbage collector keeps the whole image as long as a record
names it, and frees all of it when the last record goes.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from nodeagent.pull.chain import chain_ids
from nodeagent.registry.reference import ImageReference
from nodeagent.registry.resolve import Document, ResolvedImage

__all__ = ["chain_ids"]  # with the plan below; chain IDs are owned by pull/chain.py

CRI_MANAGED_LABEL = "io.cri-containerd.image"
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
SOURCE_LABEL_PREFIX = "containerd.io/distribution.source."
GC_CONTENT = "containerd.io/gc.ref.content"
GC_SNAPSHOT = "containerd.io/gc.ref.snapshot"
# Layer media types the fast path unpacks (compression is detected from the bytes).
LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
})
CONFIG_TYPES = frozenset({
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
})


class Unsupported(Exception):
    """The fast path cannot pull this image; the message is the reason (logged, and the
    image is pulled through CRI instead)."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class LayerPlan:
    index: int
    blob: Descriptor
    diff_id: str
    chain_id: str
    parent: str  # chain ID of the layers below ("" for the base layer)

    @property
    def overlay(self) -> bool:
        """Unpacked onto a parent: containerd converts whiteouts to overlayfs markers."""
        return bool(self.parent)


@dataclass(frozen=True)
class ImagePlan:
    reference: ImageReference
    target: Descriptor  # what the image records point at (index, else manifest)
    manifest: Document
    index: Document | None
    config: Descriptor
    layers: tuple[LayerPlan, ...]
    names: tuple[str, ...]  # image records CRI would create

    @property
    def image_id(self) -> str:
        return self.config.digest

    @property
    def top_chain_id(self) -> str:
        return self.layers[-1].chain_id if self.layers else ""




def plan_image(reference: ImageReference, resolved: ResolvedImage, config: bytes) -> ImagePlan:
    """Everything the pull must create, or Unsupported with the reason."""
    assert resolved.manifest is not None
    manifest = resolved.manifest.parsed()
    config_desc = _descriptor(manifest.get("config"), "config")
    if config_desc.media_type not in CONFIG_TYPES:
        raise Unsupported(f"config media type {config_desc.media_type} is not an image config")
    diff_ids = _diff_ids(config)
    layer_descs = [_descriptor(d, f"layer {i}") for i, d in enumerate(manifest["layers"])]
    if len(diff_ids) != len(layer_descs):
        raise Unsupported(f"the config lists {len(diff_ids)} diff IDs for "
                          f"{len(layer_descs)} layers")
    for desc in layer_descs:
        if desc.media_type not in LAYER_TYPES:
            raise Unsupported(f"layer {desc.digest} has media type {desc.media_type}, which "
                              "the fast path does not unpack (encrypted, foreign or unknown)")
    chains = chain_ids(diff_ids)
    layers = tuple(
        LayerPlan(i, desc, diff_ids[i], chains[i], chains[i - 1] if i else "")
        for i, desc in enumerate(layer_descs))
    target_doc = resolved.index or resolved.manifest
    target = Descriptor(target_doc.media_type, target_doc.digest, len(target_doc.data))
    return ImagePlan(reference, target, resolved.manifest, resolved.index, config_desc, layers,
                     record_names(reference, target.digest, config_desc.digest))


def record_names(reference: ImageReference, target_digest: str, image_id: str) -> tuple[str, ...]:
    """The image records CRI creates: the reference as pulled (a tag is dropped when a
    digest is given), repo@<target digest>, and the image ID (config digest)."""
    repo = f"{reference.registry}/{reference.repository}"
    by_digest = f"{repo}@{target_digest}"
    names = [f"{repo}:{reference.tag}"] if reference.tag and not reference.digest else []
    return tuple(dict.fromkeys([*names, by_digest, image_id]))


def source_label(reference: ImageReference) -> tuple[str, str]:
    """containerd.io/distribution.source.<host without port> = <repository>."""
    host = urllib.parse.urlsplit(f"//{reference.registry}").hostname or reference.registry
    return SOURCE_LABEL_PREFIX + host, reference.repository


def merged_source(existing: dict[str, str], reference: ImageReference) -> dict[str, str]:
    """The source label with this repository added to what the blob already lists."""
    key, repo = source_label(reference)
    current = [r for r in existing.get(key, "").split(",") if r]
    if repo not in current:
        current.append(repo)
    return {key: ",".join(current)}


def index_labels(index: Document) -> dict[str, str]:
    manifests = index.parsed().get("manifests") or []
    return {f"{GC_CONTENT}.m.{i}": str(m.get("digest")) for i, m in enumerate(manifests)
            if isinstance(m, dict)}


def manifest_labels(plan: ImagePlan, keep_layers: bool = True) -> dict[str, str]:
    """``keep_layers`` False (CRI's discard_unpacked_layers): no references to the layer
    blobs, so containerd drops them once unpacked, as its own pull does then."""
    labels = {f"{GC_CONTENT}.config": plan.config.digest}
    if keep_layers:
        labels.update({f"{GC_CONTENT}.l.{layer.index}": layer.blob.digest
                       for layer in plan.layers})
    return labels


def config_labels(plan: ImagePlan, snapshotter: str) -> dict[str, str]:
    return {f"{GC_SNAPSHOT}.{snapshotter}": plan.top_chain_id} if plan.layers else {}


def extract_key(unique: str, chain_id: str) -> str:
    """containerd's snapshots.UnpackKeyFormat ("extract-%s %s")."""
    return f"extract-{unique} {chain_id}"


def _descriptor(raw: Any, what: str) -> Descriptor:
    try:
        return Descriptor(str(raw["mediaType"]), str(raw["digest"]), int(raw["size"]))
    except (KeyError, TypeError, ValueError):
        raise Unsupported(f"the manifest's {what} descriptor is incomplete") from None


def _diff_ids(config: bytes) -> list[str]:
    try:
        doc = json.loads(config)
        diff_ids = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise Unsupported("the image config has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or not all(
            isinstance(d, str) and d.startswith("sha256:") and len(d) == 71 for d in diff_ids):
        raise Unsupported("the image config's rootfs.diff_ids are not sha256 digests")
    return diff_ids
