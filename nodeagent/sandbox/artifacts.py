"""Build and push ORAS-style OCI artifacts (model files as titled layers) over the
registry API, as ``oras push`` does: an image manifest with the empty config
(``application/vnd.oci.empty.v1+json``), an ``artifactType``, and one layer per file
annotated with ``org.opencontainers.image.title``. For tests, the demo and benchmarks
of the model cache's OCI source. Stdlib only (through push.py's RegistryPusher).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.sandbox.push import RegistryPusher, _Blob

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
MODEL_ARTIFACT_TYPE = "application/vnd.nodeagent.model.v1"
TITLE = "org.opencontainers.image.title"


@dataclass(frozen=True)
class ArtifactFile:
    """One layer: its bytes (or a file) and its title; ``title=None`` leaves the
    annotation out, ``annotations`` adds others (tests of malformed artifacts)."""

    title: str | None
    data: bytes | Path
    media_type: str = "application/octet-stream"
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PushedArtifact:
    host: str
    repository: str
    tag: str
    digest: str  # of the manifest
    layers: tuple[tuple[str, str, int], ...]  # (title, digest, size)

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"

    @property
    def digest_ref(self) -> str:
        return f"{self.host}/{self.repository}@{self.digest}"


def _blob(data: bytes | Path) -> _Blob:
    if isinstance(data, bytes):
        return _Blob("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data=data)
    h = hashlib.sha256()
    with open(data, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return _Blob("sha256:" + h.hexdigest(), data.stat().st_size, path=data)


def artifact_files(files: Mapping[str, bytes | Path]) -> list[ArtifactFile]:
    """{relative path: content} as titled layers, in the mapping's order."""
    return [ArtifactFile(title, data) for title, data in files.items()]


def push_artifact(host: str, repository: str, tag: str,
                  files: Mapping[str, bytes | Path] | Sequence[ArtifactFile],
                  username: str | None = None, password: str | None = None, *,
                  artifact_type: str = MODEL_ARTIFACT_TYPE) -> PushedArtifact:
    """Upload the layers and the empty config, then put the manifest under ``tag``."""
    layers = artifact_files(files) if isinstance(files, Mapping) else list(files)
    pusher = RegistryPusher(host, username, password)
    pusher.login()
    config = _blob(EMPTY_CONFIG)
    pusher.upload_blob(repository, config)
    descriptors, pushed = [], []
    for layer in layers:
        blob = _blob(layer.data)
        pusher.upload_blob(repository, blob)
        annotations = dict(layer.annotations)
        if layer.title is not None:
            annotations[TITLE] = layer.title
        descriptor = {"mediaType": layer.media_type, "digest": blob.digest, "size": blob.size}
        if annotations:
            descriptor["annotations"] = annotations
        descriptors.append(descriptor)
        pushed.append((layer.title or "", blob.digest, blob.size))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": config.digest,
                   "size": config.size},
        "layers": descriptors,
    }, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    pusher.put_manifest(repository, tag, OCI_MANIFEST, manifest, digest)
    return PushedArtifact(host, repository, tag, digest, tuple(pushed))
