"""A minimal OCI distribution client: resolve an image to its manifest, config and layers.

Used for progress totals (layer sizes) and digest resolution; containerd does the pull.
It reaches registries the way containerd does: docker.io means registry-1.docker.io,
127.0.0.1/localhost registries speak plain HTTP, and when a containerd ``config_path``
(hosts_dir) is given, ``<hosts_dir>/<registry>/hosts.toml`` (or ``_default/hosts.toml``)
lists mirrors (``[host."..."]``, tried in order, with ``?ns=<registry>``) and the upstream
``server``. Auth: anonymous first; on 401 HTTP basic, or a Bearer token from the realm the
registry names (with basic credentials, an identity token, or a registry token).

Blocking urllib runs in a worker thread (no extra dependency). Errors name the image,
host and HTTP status; credentials never appear in them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import ssl
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.containerd.client import AuthConfig
from nodeagent.errors import NodeagentError
from nodeagent.log import redact_text
from nodeagent.registry.platform import host_default_platform, normalize_platform
from nodeagent.registry.reference import DEFAULT_REGISTRY, ImageReference, parse_reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
DOCKER_HUB_HOST = "registry-1.docker.io"
MAX_MANIFEST_BYTES = 4 << 20  # containerd's limit for manifests and indexes
REQUEST_TIMEOUT_S = 30.0
_LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$")


class RegistryError(NodeagentError):
    """The registry could not resolve the image; ``status`` is the HTTP status if any and
    ``reason`` one of auth, not_found, registry_unreachable, other."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "other"):
        super().__init__(message)
        self.status = status
        self.reason = reason


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


@dataclass(frozen=True)
class Endpoint:
    """One place to ask: a mirror from hosts.toml or the upstream registry."""

    base: str  # scheme://host[:port]/<path ending in /v2>
    mirror: bool = False
    capabilities: tuple[str, ...] = ("pull", "resolve")
    headers: tuple[tuple[str, str], ...] = ()
    verify: bool = True
    ca_files: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base).netloc


async def resolve_manifest(ref: ImageReference | str, auth: AuthConfig | None,
                           platform: str | None = None, hosts_dir: Path | str | None = None,
                           ) -> ResolvedImage:
    """Manifest digest, config digest and layer sizes of ``ref`` for ``platform``
    (default: this host's linux/<arch>)."""
    if isinstance(ref, str):
        ref = parse_reference(ref)
    wanted = _wanted_platform(platform)
    endpoints = registry_endpoints(ref.registry, Path(hosts_dir) if hosts_dir else None)
    return await asyncio.to_thread(_Resolver(ref, auth, wanted, endpoints).resolve)


def _wanted_platform(text: str | None) -> str:
    normalized, problem = normalize_platform(text or host_default_platform())
    if problem:
        raise RegistryError(f'invalid platform "{text}": {problem}')
    assert normalized is not None
    return normalized


# ----------------------------------------------------------------------------- hosts.toml


def registry_endpoints(registry: str, hosts_dir: Path | None) -> list[Endpoint]:
    """Where containerd would send requests for ``registry``, in order."""
    upstream = _default_upstream(registry)
    config = _hosts_config(registry, hosts_dir) if hosts_dir else None
    if config is None:
        return [upstream]
    path, data = config
    endpoints = [_endpoint(url, spec, path, mirror=True)
                 for url, spec in (data.get("host") or {}).items()]
    server = data.get("server")
    if server:
        endpoints.append(_endpoint(server, data, path, mirror=False))
    else:
        endpoints.append(upstream)
    return endpoints


def _default_upstream(registry: str) -> Endpoint:
    host = DOCKER_HUB_HOST if registry == DEFAULT_REGISTRY else registry
    scheme = "http" if _LOOPBACK.match(host) else "https"
    return Endpoint(f"{scheme}://{host}/v2")


def _hosts_config(registry: str, hosts_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    for name in (registry, "_default"):
        path = hosts_dir / name / "hosts.toml"
        if path.is_file():
            try:
                return path, tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise RegistryError(f"cannot read {path}: {exc}") from None
    return None


def _endpoint(url: str, spec: Any, source: Path, mirror: bool) -> Endpoint:
    if not isinstance(spec, dict):
        raise RegistryError(f'{source}: [host."{url}"] must be a table')
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RegistryError(f'{source}: "{url}" is not an http(s) URL')
    path = parts.path.rstrip("/")
    if not spec.get("override_path", False) and not path.endswith("/v2"):
        path += "/v2"  # containerd appends /v2 unless override_path = true
    capabilities = spec.get("capabilities", ["pull", "resolve"])
    ca = spec.get("ca", ())
    headers = spec.get("header", {})
    return Endpoint(
        base=f"{parts.scheme}://{parts.netloc}{path}", mirror=mirror,
        capabilities=tuple(capabilities),
        headers=tuple((str(k), v if isinstance(v, str) else ", ".join(map(str, v)))
                      for k, v in headers.items()),
        verify=not spec.get("skip_verify", False),
        ca_files=(ca,) if isinstance(ca, str) else tuple(ca),
    )


# ----------------------------------------------------------------------------- resolving


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Resolver:
    ref: ImageReference
    auth: AuthConfig | None
    platform: str
    endpoints: list[Endpoint]
    _authorization: dict[str, str] = field(default_factory=dict)  # per endpoint host

    def resolve(self) -> ResolvedImage:
        capability = "pull" if self.ref.digest else "resolve"
        candidates = [e for e in self.endpoints if capability in e.capabilities]
        if not candidates:
            raise RegistryError(f'image "{self.ref}": no host in hosts.toml has the '
                                f'"{capability}" capability')
        errors: list[RegistryError] = []
        for endpoint in candidates:
            try:
                return self._resolve_at(endpoint)
            except RegistryError as exc:
                errors.append(exc)
        raise _most_useful(errors)

    def _resolve_at(self, endpoint: Endpoint) -> ResolvedImage:
        media_type, digest, doc = self._manifest(endpoint, self.ref.locator)
        if media_type in INDEX_TYPES:
            entry = self._pick(doc, digest)
            child_type, child_digest, child = self._manifest(endpoint, entry["digest"])
            if child_type not in MANIFEST_TYPES:
                raise RegistryError(f'image "{self.ref}": index entry {entry["digest"]} is '
                                    f"{child_type}, not an image manifest")
            return _resolved(child, child_type, child_digest, digest,
                             _entry_platform(entry), self.ref)
        return _resolved(doc, media_type, digest, None, None, self.ref)

    def _manifest(self, endpoint: Endpoint, locator: str) -> tuple[str, str, dict[str, Any]]:
        url = f"{endpoint.base}/{self.ref.repository}/manifests/{locator}"
        if endpoint.mirror:
            url += "?" + urllib.parse.urlencode({"ns": self.ref.registry})
        response = self._get(endpoint, url, {"Accept": ACCEPT})
        if len(response.body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f'image "{self.ref}": manifest from {endpoint.host} is larger '
                                f"than {MAX_MANIFEST_BYTES >> 20} MiB")
        digest = "sha256:" + hashlib.sha256(response.body).hexdigest()
        if locator.startswith("sha256:") and digest != locator:
            raise RegistryError(f'image "{self.ref}": {endpoint.host} returned content with '
                                f"digest {digest} for {locator}")
        try:
            doc = json.loads(response.body)
        except ValueError:
            raise RegistryError(f'image "{self.ref}": manifest from {endpoint.host} is not '
                                "valid JSON") from None
        if not isinstance(doc, dict):
            raise RegistryError(f'image "{self.ref}": manifest from {endpoint.host} is not a '
                                "JSON object")
        return _media_type(response, doc, self.ref), digest, doc

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

    # -- HTTP with auth

    def _get(self, endpoint: Endpoint, url: str, headers: dict[str, str]) -> _Response:
        headers = {**dict(endpoint.headers), **headers}
        cached = self._authorization.get(endpoint.host)
        response = _request(endpoint, url, {**headers, **_auth_header(cached)}, self.ref)
        if response.status == 401:
            authorization = self._authorize(endpoint, response)
            response = _request(endpoint, url, {**headers, "Authorization": authorization},
                                self.ref)
            if response.status == 401:
                raise _status_error(self.ref, endpoint, response,
                                    "credentials were rejected")
            self._authorization[endpoint.host] = authorization
        if response.status != 200:
            raise _status_error(self.ref, endpoint, response)
        return response

    def _authorize(self, endpoint: Endpoint, challenge: _Response) -> str:
        scheme, params = parse_challenge(challenge.headers.get("www-authenticate", ""))
        auth = self._auth_for(endpoint)
        if scheme == "basic":
            if auth is None or not (auth.username or auth.password):
                raise _status_error(self.ref, endpoint, challenge,
                                    "the registry requires credentials and none were found")
            return "Basic " + _basic(auth.username, auth.password)
        if scheme == "bearer" and "realm" in params:
            if auth is not None and auth.registry_token:
                return f"Bearer {auth.registry_token}"
            return "Bearer " + self._token(endpoint, params, auth)
        raise _status_error(self.ref, endpoint, challenge,
                            "unsupported WWW-Authenticate challenge")

    def _auth_for(self, endpoint: Endpoint) -> AuthConfig | None:
        """Like containerd's CRI: credentials with a server_address only go to that host."""
        auth = self.auth
        if auth is None or not auth.server_address:
            return _with_decoded_auth(auth)
        address = auth.server_address
        netloc = urllib.parse.urlsplit(address if "://" in address else f"//{address}").netloc
        return _with_decoded_auth(auth) if netloc == endpoint.host else None

    def _token(self, endpoint: Endpoint, params: dict[str, str], auth: AuthConfig | None
               ) -> str:
        realm = params["realm"]
        scope = params.get("scope") or f"repository:{self.ref.repository}:pull"
        query = {"scope": scope, **({"service": params["service"]} if "service" in params
                                   else {})}
        token_endpoint = Endpoint(realm, verify=endpoint.verify, ca_files=endpoint.ca_files)
        if auth is not None and auth.identity_token:
            # OAuth2 refresh token (docker's identitytoken) is exchanged with a POST.
            body = urllib.parse.urlencode({**query, "grant_type": "refresh_token",
                                           "refresh_token": auth.identity_token,
                                           "client_id": "nodeagent"}).encode()
            response = _request(token_endpoint, realm, {
                "Content-Type": "application/x-www-form-urlencoded"}, self.ref, data=body)
        else:
            headers = {}
            if auth is not None and (auth.username or auth.password):
                headers["Authorization"] = "Basic " + _basic(auth.username, auth.password)
            separator = "&" if "?" in realm else "?"
            url = realm + separator + urllib.parse.urlencode(query)
            response = _request(token_endpoint, url, headers, self.ref)
        if response.status != 200:
            raise _status_error(self.ref, token_endpoint, response,
                                f"token request to {urllib.parse.urlsplit(realm).netloc} "
                                "failed")
        try:
            answer = json.loads(response.body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f'image "{self.ref}": the token service at '
                                f"{urllib.parse.urlsplit(realm).netloc} returned no token",
                                reason="auth")
        return token


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """('bearer', {'realm': ..., 'service': ..., 'scope': ...}) from WWW-Authenticate."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def _with_decoded_auth(auth: AuthConfig | None) -> AuthConfig | None:
    """CRI's ``auth`` field (base64 user:password) as username/password."""
    if auth is None or auth.username or not auth.auth:
        return auth
    try:
        user, _, password = base64.b64decode(auth.auth).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise RegistryError("registry credentials: the auth field is not base64 "
                            "user:password", reason="auth") from None
    return AuthConfig(username=user, password=password, server_address=auth.server_address)


def _basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def _auth_header(authorization: str | None) -> dict[str, str]:
    return {"Authorization": authorization} if authorization else {}


# ----------------------------------------------------------------------------- manifests


def _media_type(response: _Response, doc: dict[str, Any], ref: ImageReference) -> str:
    media_type = doc.get("mediaType") or response.headers.get("content-type", "").split(";")[0]
    if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
        # Some registries omit both: recognise the shape.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else (
            media_type)
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise RegistryError(f'image "{ref}" uses the deprecated docker schema 1 manifest '
                            "format; rebuild or re-push it with a current client")
    if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
        raise RegistryError(f'image "{ref}": unsupported manifest media type "{media_type}"')
    return media_type


def _entry_platform(entry: dict[str, Any]) -> str | None:
    spec = entry.get("platform")
    if not isinstance(spec, dict) or not spec.get("os") or not spec.get("architecture"):
        return None
    text = f"{spec['os']}/{spec['architecture']}"
    if spec.get("variant"):
        text += f"/{spec['variant']}"
    normalized, _ = normalize_platform(text)
    return normalized or text


def _resolved(doc: dict[str, Any], media_type: str, digest: str, index_digest: str | None,
              picked: str | None, ref: ImageReference) -> ResolvedImage:
    try:
        config = doc["config"]
        layers = [(str(layer["digest"]), int(layer["size"])) for layer in doc["layers"]]
        config_digest, config_size = str(config["digest"]), int(config.get("size", 0))
    except (KeyError, TypeError, ValueError):
        raise RegistryError(f'image "{ref}": manifest {digest} lacks config or layer '
                            "descriptors") from None
    return ResolvedImage(
        manifest_digest=digest, config_digest=config_digest, layers=layers,
        total_size=sum(size for _, size in layers) + config_size, media_type=media_type,
        index_digest=index_digest, platform=picked, config_size=config_size)


# ----------------------------------------------------------------------------- transport


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry the Authorization header to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != req.host:
            new.remove_header("Authorization")
        return new


def _opener(endpoint: Endpoint) -> urllib.request.OpenerDirector:
    handlers: list[Any] = [_SameHostRedirects()]
    if endpoint.base.startswith("https://"):
        context = ssl.create_default_context()
        for ca in endpoint.ca_files:
            context.load_verify_locations(cafile=ca)
        if not endpoint.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    if _LOOPBACK.match(endpoint.host):
        handlers.append(urllib.request.ProxyHandler({}))  # like Go: never proxy loopback
    return urllib.request.build_opener(*handlers)


def _request(endpoint: Endpoint, url: str, headers: dict[str, str], ref: ImageReference,
             data: bytes | None = None) -> _Response:
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with _opener(endpoint).open(request, timeout=REQUEST_TIMEOUT_S) as answer:
            body = answer.read(MAX_MANIFEST_BYTES + 1)
            return _Response(answer.status, _lower(answer.headers), body)
    except urllib.error.HTTPError as exc:
        body = exc.read(64 << 10) if exc.fp else b""
        return _Response(exc.code, _lower(exc.headers), body)
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f'image "{ref}": cannot reach {endpoint.host}: {reason}',
                            reason="registry_unreachable") from None


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()} if headers else {}


def _status_error(ref: ImageReference, endpoint: Endpoint, response: _Response,
                  problem: str = "") -> RegistryError:
    reason = {401: "auth", 403: "auth", 404: "not_found"}.get(response.status, "other")
    if response.status >= 500:
        reason = "registry_unreachable"
    detail = _registry_message(response.body)
    text = f'image "{ref}": {endpoint.host} answered HTTP {response.status}'
    if problem:
        text += f" ({problem})"
    if detail:
        text += f": {detail}"
    return RegistryError(text, status=response.status, reason=reason)


def _registry_message(body: bytes) -> str:
    """The registry's own error codes and messages (never headers or credentials)."""
    try:
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip()
                         for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError):
        return ""
    return redact_text(text)[:300]


def _most_useful(errors: list[RegistryError]) -> RegistryError:
    """With mirrors, report the last host that answered (else the last one tried), and
    mention what the other hosts said."""
    primary = next((e for e in reversed(errors) if e.reason != "registry_unreachable"),
                   errors[-1])
    if len(errors) == 1:
        return primary
    others = "; ".join(str(e).partition(": ")[2] for e in errors if e is not primary)
    return RegistryError(f"{primary} (also tried: {others})", status=primary.status,
                         reason=primary.reason)
