"""The OCI artifact source: an ORAS-style artifact in a registry, one file per layer.

An artifact is an image manifest whose layers carry ``org.opencontainers.image.title``
annotations (what ``oras push`` writes); each layer is the file at that relative path
below the model's directory, and its sha256 digest is the full-object check
(``Checksum("SHA256", ..., "FULL_OBJECT")``: the engine verifies it like an S3 SHA256
checksum). Titles that are absolute, climb out with "..", repeat, or are a directory of
another title are refused, as are layers without a title and packed directories
(``io.deis.oras.content.unpack``), so nothing ever lands outside the model's directory.

Registry access is the image pull's own: ``registry.resolve_manifest`` for the manifest,
``RegistrySession`` for blob ranges (auth challenges, bearer tokens, redirects),
``registry_endpoints`` for containerd's hosts.toml mirrors (tried in order, the host
that served the manifest first), and the node's credentials under the one keyring rule
(``credentials.options.build_keyring``).

Bridging: the engine is thread-based (a pool of blocking workers, like boto3) and the
registry client is asyncio (aiohttp). ``OciClient`` runs one event loop in a dedicated
thread for all OCI models of a sync; a worker submits coroutines to it with
``run_coroutine_threadsafe`` and waits. A response opened for a range stays open in that
loop (an ``AsyncExitStack``) and ``readinto`` asks the loop for the next bytes, filling
up to the caller's 1 MiB buffer per hop, so the thread switches cost little next to the
transfer. ``close()`` closes the HTTP session and stops the loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nodeagent.api.model_source import parse_oci_url
from nodeagent.models.checksums import Checksum
from nodeagent.models.errors import ModelError
from nodeagent.models.source import ObjectDetails, RemoteObject, path_conflicts, safe_relative_path

TITLE = "org.opencontainers.image.title"
UNPACK = "io.deis.oras.content.unpack"  # a directory pushed as one tar layer
T = TypeVar("T")


class OciClient:
    """One event loop thread, one registry session and the keyring, shared by all OCI
    models of a sync. ``keyring_factory`` runs in the loop thread on first use."""

    def __init__(self, max_connections: int, hosts_dir: Path | None,
                 keyring_factory: Callable[[], Any] | None = None):
        from nodeagent.registry.session import RegistrySession

        self.hosts_dir = hosts_dir
        self.session = RegistrySession(max_connections=max_connections)
        self._keyring_factory = keyring_factory
        self._keyring: Any = None
        self._keyring_built = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="models-oci",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the loop thread; block this (worker) thread for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def keyring(self) -> Any:
        if not self._keyring_built:
            self._keyring_built = True
            self._keyring = self._keyring_factory() if self._keyring_factory else None
        return self._keyring

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.run(self.session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class OciSource:
    """An OCI artifact as a model source (see the module docstring)."""

    def __init__(self, model: str, url: str, client: OciClient):
        from nodeagent.registry.session import Request

        self.model = model
        self.url = url
        self.reference = parse_oci_url(url, model).reference
        self.client = client
        self.request = Request(f'artifact "{self.reference}"', self.reference.repository)
        self.endpoints: list[Any] = []

    # ------------------------------------------------------------------ listing
    def list_objects(self) -> list[RemoteObject]:
        return self.client.run(self._list())

    async def _list(self) -> list[RemoteObject]:
        from nodeagent.registry.endpoints import registry_endpoints
        from nodeagent.registry.errors import RegistryError
        from nodeagent.registry.resolve import resolve_manifest
        from nodeagent.registry.session import Request

        ref = self.reference
        try:
            keyring = await self.client.keyring()
            auth = await keyring.credentials_for(ref) if keyring is not None else None
            self.request = Request(self.request.subject, ref.repository, auth)
            resolved = await resolve_manifest(ref, auth, None, self.client.hosts_dir,
                                              self.client.session)
            others = registry_endpoints(ref.registry, self.client.hosts_dir)
        except RegistryError as exc:
            raise self._error(exc) from None
        first = resolved.endpoint
        self.endpoints = [first, *(e for e in others if e != first and "pull" in
                                   e.capabilities)]
        assert resolved.manifest is not None
        return self._objects(resolved.manifest.parsed(), resolved.manifest.digest)

    def _objects(self, manifest: dict[str, Any], digest: str) -> list[RemoteObject]:
        objects = []
        for index, layer in enumerate(manifest.get("layers") or []):
            objects.append(self._object(index, layer, digest))
        if not objects:
            raise self._invalid(f"manifest {digest} has no layers: nothing to download")
        paths = [o.path for o in objects]
        duplicate = next((p for p in paths if paths.count(p) > 1), None)
        if duplicate is not None:
            raise self._invalid(f"two layers are titled {duplicate!r}")
        for parent, child in path_conflicts(paths):
            raise self._invalid(f"layer title {parent!r} is also a directory of {child!r}")
        return objects

    def _object(self, index: int, layer: Any, digest: str) -> RemoteObject:
        where = f"layer {index} of manifest {digest}"
        try:
            annotations = layer.get("annotations") or {}
            blob, size = str(layer["digest"]), int(layer["size"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise self._invalid(f"{where} lacks a digest or size") from None
        title = annotations.get(TITLE) if isinstance(annotations, dict) else None
        if not title:
            raise self._invalid(f"{where} ({blob}) has no {TITLE} annotation: not an "
                                "ORAS-style artifact (push the files with `oras push`)")
        if str(annotations.get(UNPACK, "")).lower() == "true":
            raise self._invalid(f"{where} ({title!r}) is a packed directory ({UNPACK}); "
                                "push the directory's files one by one instead")
        path = safe_relative_path(str(title))
        if path is None:
            raise self._invalid(f"{where} is titled {str(title)!r}, which is absolute or "
                                "leaves the model directory ('..', '.', empty segments)")
        algorithm, _, hex_digest = blob.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64 or size < 0:
            raise self._invalid(f"{where} ({title!r}) has digest {blob!r}: only sha256 "
                                "digests are supported")
        return RemoteObject(path, blob, size, etag=blob, checksum_algorithm="SHA256")

    # ------------------------------------------------------------------ verification
    def details(self, obj: RemoteObject) -> ObjectDetails:
        return ObjectDetails(checksum=_checksum(obj))

    # ------------------------------------------------------------------ bytes
    def open_range(self, obj: RemoteObject, start: int, length: int,
                   whole: bool) -> tuple[_Body, Checksum | None]:
        body = self.client.run(self._open(obj, start, length))
        return body, _checksum(obj) if whole else None

    async def _open(self, obj: RemoteObject, start: int, length: int) -> _Body:
        from nodeagent.registry.errors import RegistryError, most_useful

        partial = not (start == 0 and length == obj.size)
        headers = {"Range": f"bytes={start}-{start + length - 1}"} if length and partial \
            else {}
        errors: list[RegistryError] = []
        for endpoint in self.endpoints:
            url = endpoint.url(self.reference.repository, "blobs", obj.key,
                               self.reference.registry)
            stack = contextlib.AsyncExitStack()
            try:
                response = await stack.enter_async_context(
                    self.client.session.open(endpoint, url, self.request, headers))
                if partial and response.status != 206:
                    raise RegistryError(f"{self.request.subject}: {endpoint.host} ignored the "
                                        f"Range header for {obj.key} (HTTP "
                                        f"{response.status})", reason="registry_unreachable")
                return _Body(self.client, stack, response)
            except RegistryError as exc:
                await stack.aclose()
                errors.append(exc)
        if not errors:
            raise self._invalid("no registry host to fetch blobs from")
        raise self._error(most_useful(errors))

    # ------------------------------------------------------------------ errors
    def _invalid(self, detail: str) -> ModelError:
        return ModelError(self.model, self.url, "invalid_source", detail)

    def _error(self, exc: Any) -> ModelError:
        reason = {"not_found": "not_found", "registry_unreachable": "unreachable"}.get(
            exc.reason, "other")
        if exc.reason == "auth":
            reason = "access_denied" if self.request.auth is not None else "no_credentials"
        detail = str(exc)
        if reason == "no_credentials":
            detail += ("; give the node credentials for this registry (docker config or "
                       "kubelet credential provider)")
        return ModelError(self.model, self.url, reason, detail)


class _Body:
    """A blob response held open in the loop thread, read from a worker thread."""

    def __init__(self, client: OciClient, stack: contextlib.AsyncExitStack, response: Any):
        self.client, self.stack, self.response = client, stack, response

    def readinto(self, buffer: memoryview) -> int:
        data = self.client.run(self._fill(len(buffer)))
        buffer[: len(data)] = data
        return len(data)

    async def _fill(self, n: int) -> bytes:
        chunks, total = [], 0
        while total < n:
            chunk = await self.response.content.read(n - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.client.run(self.stack.aclose())


def _checksum(obj: RemoteObject) -> Checksum:
    digest = bytes.fromhex(obj.key.partition(":")[2])
    return Checksum("SHA256", base64.b64encode(digest).decode(), "FULL_OBJECT")
