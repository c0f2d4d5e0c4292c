"""Push built images to a registry over the OCI distribution HTTP API (stdlib only).

Blobs: HEAD to skip what the registry has, else POST an upload session and PUT the blob
in one request (monolithic upload). Manifests: PUT by digest for an index's children,
then by tag. Auth is whatever the registry's 401 challenge asks: Basic, or Bearer with a
token fetched from the challenge's realm. Credentials never appear in errors.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from nodeagent.sandbox.images import BuiltImage, BuiltIndex
from nodeagent.sandbox.process import SandboxError

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryAuthError(SandboxError):
    """The registry wants credentials we do not have, or rejected ours."""


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    path: Path | None = None
    data: bytes = b""


class RegistryPusher:
    """One registry, one identity; safe to use from several threads."""

    def __init__(
        self, host: str, username: str | None = None, password: str | None = None,
        *, secure: bool = False, timeout_s: float = 120.0,
    ) -> None:
        self.host = host
        self.username = username
        self._password = password
        self.secure = secure
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._scheme: str | None = None  # "basic" | "bearer" | "" (open)
        self._challenge: dict[str, str] = {}
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- HTTP plumbing

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.secure else http.client.HTTPConnection
            conn = cls(self.host, timeout=self.timeout_s, blocksize=1 << 20)
            self._local.conn = conn
        return conn

    def _send(
        self, method: str, target: str, headers: dict[str, str], body: object = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        for attempt in (1, 2):  # one retry when a kept-alive connection went stale
            conn = self._conn()
            try:
                conn.request(method, target, body=body, headers=headers)  # type: ignore[arg-type]
                resp = conn.getresponse()
                return resp.status, resp.headers, resp.read()
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                stale = isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                         ConnectionResetError))
                if attempt == 1 and stale and (body is None or hasattr(body, "seek")
                                               or isinstance(body, bytes)):
                    if hasattr(body, "seek"):
                        body.seek(0)  # type: ignore[union-attr]
                    continue
                raise SandboxError(
                    f"registry {self.host} unreachable or failing "
                    f"({method} {_path_only(target)}): {exc}"
                ) from exc
        raise AssertionError("unreachable")

    def _request(
        self, method: str, target: str, repo: str, headers: dict[str, str] | None = None,
        body: object = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        all_headers = dict(headers or {})
        all_headers.update(self._auth_header(repo))
        status, resp_headers, data = self._send(method, target, all_headers, body)
        if status == 401:
            raise RegistryAuthError(self._auth_failure(repo))
        return status, resp_headers, data

    # -------------------------------------------------------------- auth

    def login(self) -> None:
        """Learn the auth scheme from GET /v2/ and check our credentials work."""
        status, headers, _ = self._send("GET", "/v2/", {})
        if status == 200:
            self._scheme = ""
            return
        if status != 401:
            raise SandboxError(f"registry {self.host}: GET /v2/ answered HTTP {status}")
        scheme, _, params = headers.get("WWW-Authenticate", "").partition(" ")
        self._scheme = scheme.lower()
        self._challenge = dict(_CHALLENGE_PARAM.findall(params))
        if self.username is None:
            raise RegistryAuthError(
                f"registry {self.host} requires credentials ({scheme or 'unknown'} auth, "
                f"realm {self._challenge.get('realm', '?')!r}); pass a username and password"
            )
        if self._scheme == "basic":
            status, _, _ = self._send("GET", "/v2/", self._auth_header(""))
            if status == 401:
                raise RegistryAuthError(self._auth_failure(""))
        elif self._scheme != "bearer":
            raise RegistryAuthError(f"registry {self.host}: unsupported auth scheme {scheme!r}")

    def _basic(self) -> str:
        raw = f"{self.username or ''}:{self._password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _auth_header(self, repo: str) -> dict[str, str]:
        if self._scheme == "basic":
            return {"Authorization": self._basic()}
        if self._scheme == "bearer":
            return {"Authorization": "Bearer " + self._token(repo)}
        return {}

    def _token(self, repo: str) -> str:
        scope = f"repository:{repo}:pull,push"
        with self._lock:
            if scope not in self._tokens:
                self._tokens[scope] = self._fetch_token(scope)
            return self._tokens[scope]

    def _fetch_token(self, scope: str) -> str:
        realm = self._challenge.get("realm", "")
        query = {"scope": scope}
        if "service" in self._challenge:
            query["service"] = self._challenge["service"]
        url = urllib.parse.urlsplit(realm)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise RegistryAuthError(f"registry {self.host}: bad token realm {realm!r}")
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.netloc, timeout=self.timeout_s)
        target = (url.path or "/") + "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": self._basic()} if self.username is not None else {}
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise SandboxError(f"token service {url.netloc} unreachable: {exc}") from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise RegistryAuthError(
                f"token service {url.netloc} refused user {self.username!r} for {scope} "
                f"(HTTP {resp.status})"
            )
        payload = json.loads(body)
        token = payload.get("token") or payload.get("access_token")
        if not token:
            raise RegistryAuthError(f"token service {url.netloc} returned no token")
        return str(token)

    def _auth_failure(self, repo: str) -> str:
        who = f"user {self.username!r}" if self.username is not None else "anonymous access"
        where = f" for repository {repo!r}" if repo else ""
        return f"registry {self.host} rejected {who}{where} (HTTP 401)"

    # -------------------------------------------------------------- blobs, manifests

    def blob_exists(self, repo: str, digest: str) -> bool:
        status, _, _ = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo)
        return status == 200

    def upload_blob(self, repo: str, blob: _Blob) -> bool:
        """Upload unless present; True if bytes were sent."""
        if self.blob_exists(repo, blob.digest):
            return False
        status, headers, body = self._request("POST", f"/v2/{repo}/blobs/uploads/", repo,
                                              {"Content-Length": "0"}, b"")
        if status != 202 or "Location" not in headers:
            raise SandboxError(_http_error("start upload", repo, blob.digest, status, body))
        target = _upload_target(headers["Location"], blob.digest)
        put_headers = {"Content-Type": "application/octet-stream",
                       "Content-Length": str(blob.size)}
        if blob.path is not None:
            with open(blob.path, "rb") as f:
                status, _, body = self._request("PUT", target, repo, put_headers, f)
        else:
            status, _, body = self._request("PUT", target, repo, put_headers, blob.data)
        if status != 201:
            raise SandboxError(_http_error("upload", repo, blob.digest, status, body))
        return True

    def put_manifest(self, repo: str, reference: str, media_type: str, data: bytes,
                     digest: str) -> None:
        status, headers, body = self._request(
            "PUT", f"/v2/{repo}/manifests/{reference}", repo,
            {"Content-Type": media_type, "Content-Length": str(len(data))}, data,
        )
        if status != 201:
            raise SandboxError(_http_error("put manifest", repo, reference, status, body))
        got = headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise SandboxError(f"registry {self.host} stored {repo}:{reference} as {got}, "
                               f"expected {digest}")


def _path_only(target: str) -> str:
    return target.split("?", 1)[0]


def _upload_target(location: str, digest: str) -> str:
    """Location (absolute or relative) plus the digest query parameter."""
    parts = urllib.parse.urlsplit(location)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query.append(("digest", digest))
    return parts.path + "?" + urllib.parse.urlencode(query)


def _http_error(what: str, repo: str, item: str, status: int, body: bytes) -> str:
    detail = body[:300].decode(errors="replace").strip()
    return f"registry {what} failed for {repo} {item}: HTTP {status} {detail}"


def _blobs_of(images: list[BuiltImage]) -> list[_Blob]:
    blobs: dict[str, _Blob] = {}
    for image in images:
        blobs.setdefault(image.config_digest,
                         _Blob(image.config_digest, len(image.config), data=image.config))
        for layer in image.layers:
            blobs.setdefault(layer.digest, _Blob(layer.digest, layer.size, path=layer.path))
    return sorted(blobs.values(), key=lambda b: -b.size)


def push_image(
    registry_host: str,
    image: BuiltImage | BuiltIndex,
    username: str | None = None,
    password: str | None = None,
    *,
    workers: int = 4,
    pusher: RegistryPusher | None = None,
) -> str:
    """Push blobs (skipping existing) and manifest(s); returns "host/repo:tag".

    The manifest digest (for by-digest references) is `image.manifest_digest`.
    """
    pusher = pusher or RegistryPusher(registry_host, username, password)
    if pusher._scheme is None:
        pusher.login()
    repo = image.repository
    children = image.images if isinstance(image, BuiltIndex) else [image]
    blobs = _blobs_of(children)
    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(blobs)))) as ex:
        for future in [ex.submit(pusher.upload_blob, repo, b) for b in blobs]:
            future.result()
    if isinstance(image, BuiltIndex):
        for child in children:
            pusher.put_manifest(repo, child.manifest_digest, child.media_type, child.manifest,
                                child.manifest_digest)
    pusher.put_manifest(repo, image.tag, image.media_type, image.manifest, image.manifest_digest)
    return image.ref(registry_host)


def push_images(
    registry_host: str, images: list[BuiltImage | BuiltIndex],
    username: str | None = None, password: str | None = None, *, workers: int = 4,
) -> list[str]:
    """Push several images with one login; returns their refs in order."""
    pusher = RegistryPusher(registry_host, username, password)
    pusher.login()
    return [push_image(registry_host, i, workers=workers, pusher=pusher) for i in images]
