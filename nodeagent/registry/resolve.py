"""Resolve an image reference to its platform manifest, config and layers.

Used for progress totals, digest resolution and, by the fast pull, as its first step:
the raw index and manifest bytes come back too, so they are stored exactly as served.
Endpoints come from containerd's hosts.toml (``endpoints``), tried in order; HTTP, auth
and redirects from ``session``. Errors name the image, host and HTTP status; credentials
never appear in them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.containerd.model import AuthConfig
from nodeagent.registry.endpoints import Endpoint, registry_endpoints
from nodeagent.registry.errors import RegistryError, most_useful
from nodeagent.registry.platform import host_default_platform, normalize_platform
from nodeagent.registry.reference import ImageReference, parse_reference
from nodeagent.registry.session import RegistrySession, Request, parse_challenge

__all__ = [
    "ACCEPT", "INDEX_TYPES", "MANIFEST_TYPES", "Document", "Endpoint", "RegistryError",
    "ResolvedImage", "host_default_platform", "parse_challenge", "registry_endpoints",
    "resolve_manifest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))


@dataclass(frozen=True)
class Document:
    """A manifest or index exactly as the registry served it."""

    digest: str
    media_type: str
    data: bytes

    def parsed(self) -> dict[str, Any]:
        return json.loads(self.data)


@dataclass(frozen=True)
class ResolvedImage:
    manifest_digest: str  # the platform manifest containerd will unpack
    config_digest: str
    layers: list[tuple[str, int]]  # (digest, compressed size) in manifest order
    total_size: int  # compressed layers + config: what a pull downloads
    media_type: str = OCI_MANIFEST
    index_digest: str | None = None  # set when the reference named an index / list
    platform: str | None = None  # the platform picked from the index
    config_size: int = 0
    # For the fast pull (not part of equality: a resolution is about the digests).
    manifest: Document | None = field(default=None, compare=False)
    index: Document | None = field(default=None, compare=False)
    endpoint: Endpoint | None = field(default=None, compare=False)  # the host that answered

    @property
    def target(self) -> Document:
        """What the image record points at: the index when there is one."""
        target = self.index or self.manifest
        assert target is not None
        return target


async def resolve_manifest(
    ref: ImageReference | str, auth: AuthConfig | None, platform: str | None = None,
    hosts_dir: Path | str | None = None, session: RegistrySession | None = None,
) -> ResolvedImage:
    """Manifest digest, config digest and layer sizes of ``ref`` for ``platform``
    (default: this host's linux/<arch>). Without ``session`` a throwaway one is used."""
    if isinstance(ref, str):
        ref = parse_reference(ref)
    wanted = _wanted_platform(platform)
    endpoints = registry_endpoints(ref.registry, Path(hosts_dir) if hosts_dir else None)
    if session is not None:
        return await _Resolver(ref, auth, wanted, endpoints, session).resolve()
    async with RegistrySession(max_connections=4) as own:
        return await _Resolver(ref, auth, wanted, endpoints, own).resolve()


def _wanted_platform(text: str | None) -> str:
    normalized, problem = normalize_platform(text or host_default_platform())
    if problem:
        raise RegistryError(f'invalid platform "{text}": {problem}')
    assert normalized is not None
    return normalized


@dataclass
class _Resolver:
    ref: ImageReference
    auth: AuthConfig | None
    platform: str
    endpoints: list[Endpoint]
    session: RegistrySession

    @property
    def request(self) -> Request:
        return Request(f'image "{self.ref}"', self.ref.repository, self.auth)

    async def resolve(self) -> ResolvedImage:
        capability = "pull" if self.ref.digest else "resolve"
        candidates = [e for e in self.endpoints if capability in e.capabilities]
        if not candidates:
            raise RegistryError(f'image "{self.ref}": no host in hosts.toml has the '
                                f'"{capability}" capability')
        errors: list[RegistryError] = []
        for endpoint in candidates:
            try:
                return await self._resolve_at(endpoint)
            except RegistryError as exc:
                errors.append(exc)
        raise most_useful(errors)

    async def _resolve_at(self, endpoint: Endpoint) -> ResolvedImage:
        top, doc = await self._manifest(endpoint, self.ref.locator)
        if top.media_type in INDEX_TYPES:
            entry = self._pick(doc, top.digest)
            child, child_doc = await self._manifest(endpoint, str(entry.get("digest")))
            if child.media_type not in MANIFEST_TYPES:
                raise RegistryError(f'image "{self.ref}": index entry {child.digest} is '
                                    f"{child.media_type}, not an image manifest")
            return _resolved(child, child_doc, top, _entry_platform(entry), self.ref, endpoint)
        return _resolved(top, doc, None, None, self.ref, endpoint)

    async def _manifest(self, endpoint: Endpoint, locator: str
                        ) -> tuple[Document, dict[str, Any]]:
        url = endpoint.url(self.ref.repository, "manifests", locator, self.ref.registry)
        headers, body = await self.session.read(endpoint, url, self.request, {"Accept": ACCEPT})
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if locator.startswith("sha256:") and digest != locator:
            raise RegistryError(f'image "{self.ref}": {endpoint.host} returned content with '
                                f"digest {digest} for {locator}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise RegistryError(f'image "{self.ref}": manifest from {endpoint.host} is not '
                                "valid JSON") from None
        if not isinstance(doc, dict):
            raise RegistryError(f'image "{self.ref}": manifest from {endpoint.host} is not a '
                                "JSON object")
        media_type = _media_type(headers.get("content-type", ""), doc, self.ref)
        return Document(digest, media_type, body), doc

    def _pick(self, index: dict[str, Any], index_digest: str) -> dict[str, Any]:
        entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        available = [_entry_platform(m) for m in entries]
        for entry, entry_platform in zip(entries, available, strict=True):
            if entry_platform == self.platform:
                return entry
        # linux/arm64 asked without variant matches e.g. linux/arm64/v8 entries.
        for entry, entry_platform in zip(entries, available, strict=True):
            if entry_platform and entry_platform.startswith(self.platform + "/"):
                return entry
        listed = ", ".join(p or "unknown" for p in available) or "none"
        raise RegistryError(f'image "{self.ref}" ({index_digest}) has no {self.platform} '
                            f"manifest (available: {listed})", reason="not_found")


def _media_type(content_type: str, doc: dict[str, Any], ref: ImageReference) -> str:
    media_type = doc.get("mediaType") or content_type.split(";")[0].strip()
    if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
        # Some registries omit both: recognise the shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else (
            media_type)
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise RegistryError(f'image "{ref}" uses the deprecated docker schema 1 manifest '
                            "format; rebuild or re-push it with a current client")
    if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
        raise RegistryError(f'image "{ref}": unsupported manifest media type "{media_type}"')
    return str(media_type)


def _entry_platform(entry: dict[str, Any]) -> str | None:
    spec = entry.get("platform")
    if not isinstance(spec, dict) or not spec.get("os") or not spec.get("architecture"):
        return None
    text = f"{spec['os']}/{spec['architecture']}"
    if spec.get("variant"):
        text += f"/{spec['variant']}"
    normalized, _ = normalize_platform(text)
    return normalized or text


def _resolved(manifest: Document, doc: dict[str, Any], index: Document | None,
              picked: str | None, ref: ImageReference, endpoint: Endpoint) -> ResolvedImage:
    try:
        config = doc["config"]
        layers = [(str(layer["digest"]), int(layer["size"])) for layer in doc["layers"]]
        config_digest, config_size = str(config["digest"]), int(config.get("size", 0))
    except (KeyError, TypeError, ValueError):
        raise RegistryError(f'image "{ref}": manifest {manifest.digest} lacks config or layer '
                            "descriptors") from None
    return ResolvedImage(
        manifest_digest=manifest.digest, config_digest=config_digest, layers=layers,
        total_size=sum(size for _, size in layers) + config_size,
        media_type=manifest.media_type, index_digest=index.digest if index else None,
        platform=picked, config_size=config_size, manifest=manifest, index=index,
        endpoint=endpoint)
