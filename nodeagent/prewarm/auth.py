"""Registry credentials for pulls, found the way kubelet finds them.

Three sources, combined with ChainKeyring (first source with credentials wins):

- DockerConfigKeyring: image pull secrets (``.dockerconfigjson`` / legacy ``.dockercfg``),
  matched like kubelet's keyring: registry host (globs per DNS label such as
  ``*.example.com``), optional port, optional path prefix; the most specific key wins.
- CredentialProviderKeyring: kubelet credential provider exec plugins (e.g. ECR's), read
  from the same CredentialProviderConfig file kubelet uses, with its cache semantics.

Secrets stay inside AuthConfig (masked repr). Errors name the file, key, plugin or image,
never a secret; a plugin's stdout (the credentials) is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from nodeagent.containerd.client import AuthConfig
from nodeagent.errors import NodeagentError
from nodeagent.log import fields, redact_text
from nodeagent.registry.reference import DEFAULT_REGISTRY, ImageReference

log = logging.getLogger(__name__)

# Names under which docker config files refer to Docker Hub.
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


class AuthSourceError(NodeagentError):
    """A credentials file or secret that cannot be used; names the source and key only."""


class CredentialProviderError(NodeagentError):
    """A kubelet credential provider config or plugin failure; never contains secrets."""


class Keyring(Protocol):
    async def credentials_for(self, ref: ImageReference) -> AuthConfig | None: ...


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class RegistryPattern:
    """A kubelet-style registry key: host (DNS labels may be globs), port, path prefix."""

    labels: tuple[str, ...]
    port: str
    path: str  # "" or "/a/b", compared by whole path components

    @classmethod
    def parse(cls, text: str) -> RegistryPattern:
        value = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text.strip())
        host, _, path = value.partition("/")
        path = "/" + path.strip("/") if path.strip("/") else ""
        if path.startswith(("/v1", "/v2")) and path[3:4] in ("", "/"):
            path = path[3:]  # docker treats https://host/v1/ and /v2/ as the host itself
        host, port = _split_port(host.lower())
        if host in _DOCKER_HUB_ALIASES:
            host = DEFAULT_REGISTRY
        if not host or any(not label for label in host.split(".")):
            raise ValueError(f'"{text}" has no valid registry host')
        return cls(tuple(host.split(".")), port, path)

    def matches(self, ref: ImageReference) -> bool:
        host, port = _split_port(ref.registry.lower())
        labels = host.split(".")
        if port != self.port or len(labels) != len(self.labels):
            return False
        if not all(_label_matches(label, glob) for label, glob in zip(labels, self.labels,
                                                                     strict=True)):
            return False
        path = "/" + ref.repository
        return not self.path or path == self.path or path.startswith(self.path + "/")

    def specificity(self) -> tuple[int, int]:
        """Sort key: longer paths first, then fewer wildcard labels."""
        wildcards = sum(any(c in label for c in "*?[") for label in self.labels)
        return (-self.path.count("/"), wildcards)

    def __str__(self) -> str:
        host = ".".join(self.labels) + (f":{self.port}" if self.port else "")
        return host + self.path


def _label_matches(label: str, glob: str) -> bool:
    if glob.startswith("["):  # an IPv6 literal, not a character class
        return label == glob
    return fnmatch.fnmatchcase(label, glob)


def _split_port(host: str) -> tuple[str, str]:
    if host.startswith("["):  # [::1]:5000
        end = host.find("]")
        return host[: end + 1], host[end + 2 :] if host[end + 1 : end + 2] == ":" else ""
    name, sep, port = host.rpartition(":")
    return (name, port) if sep and port.isdigit() else (host, "")


def best_match(patterns: Iterable[tuple[RegistryPattern, Any]], ref: ImageReference) -> Any:
    """The value of the most specific pattern matching ``ref``, or None."""
    candidates = [(p, v) for p, v in patterns if p.matches(ref)]
    if not candidates:
        return None
    # Reverse string order breaks ties as kubelet does (literal labels before '*').
    candidates.sort(key=lambda pv: str(pv[0]), reverse=True)
    candidates.sort(key=lambda pv: pv[0].specificity())
    return candidates[0][1]


# ----------------------------------------------------------------------------- docker config


class DockerConfigKeyring:
    """Credentials from docker config JSON (image pull secrets)."""

    def __init__(self, entries: Sequence[tuple[RegistryPattern, AuthConfig]] = ()):
        self._entries = list(entries)

    @classmethod
    def from_file(cls, path: Path | str) -> DockerConfigKeyring:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AuthSourceError(f"cannot read registry credentials {path}: "
                                  f"{exc.strerror or exc}") from None
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any], source: str) -> DockerConfigKeyring:
        """Parse ``{"auths": {...}}`` or the legacy top-level ``{"<host>": {...}}`` form."""
        obj = data if isinstance(data, Mapping) else _load_json(data, source)
        auths = obj.get("auths") if isinstance(obj.get("auths"), Mapping) else obj
        if not isinstance(auths, Mapping):
            raise AuthSourceError(f"{source}: expected a JSON object with \"auths\"")
        entries = [_entry(key, value, source) for key, value in auths.items()
                   if not (auths is obj and key in ("credsStore", "credHelpers"))]
        return cls([e for e in entries if e is not None])

    @classmethod
    def from_secret(cls, secret_type: str, data: Mapping[str, str], source: str
                    ) -> DockerConfigKeyring:
        """Parse a Kubernetes Secret's base64 ``data`` (dockerconfigjson or dockercfg type)."""
        keys = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson",
                "kubernetes.io/dockercfg": ".dockercfg"}
        key = keys.get(secret_type)
        if key is None:
            raise AuthSourceError(f"{source}: secret type is {secret_type!r}; image pull "
                                  f"secrets must be of type {' or '.join(keys)}")
        if key not in data:
            raise AuthSourceError(f"{source}: secret has no {key!r} key")
        try:
            raw = base64.b64decode(data[key], validate=True)
        except (binascii.Error, ValueError):
            raise AuthSourceError(f"{source}: data[{key!r}] is not valid base64") from None
        return cls.from_json(raw, f"{source} ({key})")

    def lookup(self, ref: ImageReference) -> AuthConfig | None:
        return best_match(self._entries, ref)

    async def credentials_for(self, ref: ImageReference) -> AuthConfig | None:
        return self.lookup(ref)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DockerConfigKeyring({', '.join(str(p) for p, _ in self._entries)})"


def _load_json(data: bytes | str, source: str) -> Mapping[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        # The position is safe to show; the document itself holds secrets.
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise AuthSourceError(f"{source}: not valid JSON{where}") from None
    if not isinstance(obj, Mapping):
        raise AuthSourceError(f"{source}: expected a JSON object")
    return obj


def _entry(key: str, value: Any, source: str) -> tuple[RegistryPattern, AuthConfig] | None:
    """One registry's credentials; None for an empty entry (docker writes those when a
    credential helper holds the secret, which nodeagent cannot call)."""
    where = f'{source}: auths["{key}"]'
    try:
        pattern = RegistryPattern.parse(key)
    except ValueError as exc:
        raise AuthSourceError(f"{where}: {exc}") from None
    if not isinstance(value, Mapping):
        raise AuthSourceError(f"{where}: must be an object with auth or username/password")
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        if name in value and not isinstance(value[name], str):
            raise AuthSourceError(f"{where}.{name}: must be a string")
    username, password = value.get("username", ""), value.get("password", "")
    if value.get("auth"):
        username, password = _decode_auth(value["auth"], where)
    auth = AuthConfig(username=username, password=password,
                      identity_token=value.get("identitytoken", ""),
                      registry_token=value.get("registrytoken", ""))
    if not (auth.username or auth.password or auth.identity_token or auth.registry_token):
        log.debug("docker config entry without credentials skipped",
                  extra=fields(source=source, registry=key))
        return None
    return pattern, auth


def _decode_auth(encoded: str, where: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthSourceError(f"{where}.auth: not valid base64") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise AuthSourceError(f'{where}.auth: must encode "username:password"')
    return username, password


# ----------------------------------------------------------------------------- plugins

CONFIG_API_VERSIONS = ("kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1beta1",
                       "kubelet.config.k8s.io/v1alpha1")
PLUGIN_API_VERSIONS = ("credentialprovider.kubelet.k8s.io/v1",
                       "credentialprovider.kubelet.k8s.io/v1beta1",
                       "credentialprovider.kubelet.k8s.io/v1alpha1")
CACHE_KEY_TYPES = ("Image", "Registry", "Global")
_PROVIDER_FIELDS = ("name", "matchImages", "defaultCacheDuration", "apiVersion", "args", "env",
                    "tokenAttributes")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_STDERR_LIMIT = 500
# Long opaque strings (tokens, base64 blobs) are masked in plugin stderr.
_OPAQUE = re.compile(r"[A-Za-z0-9+/=_.\-]{32,}")


def parse_duration(text: Any, where: str) -> float:
    """Seconds in a Go duration string ("12h", "1h30m", "0s", "0")."""
    if not isinstance(text, str):
        raise CredentialProviderError(f"{where}: must be a duration string like \"12h\"")
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise CredentialProviderError(f'{where}: invalid duration "{text}" (e.g. "12h", '
                                      '"1h30m", "90s")')
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class CredentialProvider:
    name: str
    match_images: tuple[RegistryPattern, ...]
    default_cache_duration: float
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold secrets

    def handles(self, ref: ImageReference) -> bool:
        return any(p.matches(ref) for p in self.match_images)


def load_credential_provider_config(path: Path | str) -> list[CredentialProvider]:
    """Read kubelet's CredentialProviderConfig (JSON or YAML) and validate it."""
    path = Path(path)
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CredentialProviderError(f"cannot read credential provider config {path}: "
                                      f"{exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CredentialProviderError(f"{path}: not valid JSON/YAML: {exc}") from None
    return parse_credential_provider_config(obj, str(path))


def parse_credential_provider_config(obj: Any, source: str) -> list[CredentialProvider]:
    if not isinstance(obj, Mapping):
        raise CredentialProviderError(f"{source}: expected a CredentialProviderConfig object")
    if obj.get("kind") != "CredentialProviderConfig":
        raise CredentialProviderError(f'{source}: kind must be "CredentialProviderConfig", '
                                      f"got {obj.get('kind')!r}")
    if obj.get("apiVersion") not in CONFIG_API_VERSIONS:
        raise CredentialProviderError(f"{source}: apiVersion must be one of "
                                      f"{', '.join(CONFIG_API_VERSIONS)}; got "
                                      f"{obj.get('apiVersion')!r}")
    providers = obj.get("providers")
    if not isinstance(providers, list) or not providers:
        raise CredentialProviderError(f"{source}: providers must be a non-empty list")
    parsed = [_provider(p, f"{source}: providers[{i}]") for i, p in enumerate(providers)]
    names = [p.name for p in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CredentialProviderError(f"{source}: duplicate provider name(s) "
                                      f"{', '.join(duplicates)}")
    return parsed


def _provider(obj: Any, where: str) -> CredentialProvider:
    if not isinstance(obj, Mapping):
        raise CredentialProviderError(f"{where}: must be an object")
    unknown = [k for k in obj if k not in _PROVIDER_FIELDS]
    if unknown:
        raise CredentialProviderError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    name = obj.get("name")
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name:
        raise CredentialProviderError(f"{where}.name: must be the plugin's file name "
                                      f"(no '/'), got {name!r}")
    where = f"{where} ({name})"
    if "tokenAttributes" in obj:
        raise CredentialProviderError(f"{where}.tokenAttributes: service account token "
                                      "credential providers are not supported by nodeagent")
    return CredentialProvider(
        name=name,
        match_images=_match_images(obj.get("matchImages"), f"{where}.matchImages"),
        default_cache_duration=parse_duration(obj.get("defaultCacheDuration"),
                                              f"{where}.defaultCacheDuration"),
        api_version=_plugin_api_version(obj.get("apiVersion"), f"{where}.apiVersion"),
        args=_strings(obj.get("args", []), f"{where}.args"),
        env=_env(obj.get("env", []), f"{where}.env"),
    )


def _match_images(value: Any, where: str) -> tuple[RegistryPattern, ...]:
    images = _strings(value, where)
    if not images:
        raise CredentialProviderError(f"{where}: at least one image pattern is required")
    patterns = []
    for index, text in enumerate(images):
        try:
            patterns.append(RegistryPattern.parse(text))
        except ValueError as exc:
            raise CredentialProviderError(f"{where}[{index}]: {exc}") from None
    return tuple(patterns)


def _plugin_api_version(value: Any, where: str) -> str:
    if value not in PLUGIN_API_VERSIONS:
        raise CredentialProviderError(f"{where}: must be one of {', '.join(PLUGIN_API_VERSIONS)}"
                                      f"; got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CredentialProviderError(f"{where}: must be a list of strings")
    return tuple(value)


def _env(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise CredentialProviderError(f"{where}: must be a list of {{name, value}}")
    pairs = []
    for index, item in enumerate(value):
        if (not isinstance(item, Mapping) or not isinstance(item.get("name"), str)
                or not isinstance(item.get("value"), str) or not item["name"]):
            raise CredentialProviderError(f"{where}[{index}]: must be {{name: ..., value: ...}} "
                                          "with string values")
        pairs.append((item["name"], item["value"]))
    return tuple(pairs)


@dataclass
class _CacheEntry:
    expires_at: float
    credentials: list[tuple[RegistryPattern, AuthConfig]]


class CredentialProviderKeyring:
    """kubelet's credential provider exec plugins, with kubelet's cache semantics."""

    def __init__(self, config_path: Path | str, bin_dir: Path | str, *,
                 timeout_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.config_path = Path(config_path)
        self.bin_dir = Path(bin_dir)
        self.providers = load_credential_provider_config(self.config_path)
        self.timeout_s = timeout_s
        self._clock = clock
        self._cache: dict[tuple[str, str], _CacheEntry] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        for provider in self.providers:
            path = self.bin_dir / provider.name
            if not path.is_file() or not os.access(path, os.X_OK):
                raise CredentialProviderError(
                    f'credential provider "{provider.name}" from {self.config_path}: no '
                    f"executable {path}")

    async def credentials_for(self, ref: ImageReference) -> AuthConfig | None:
        for provider in self.providers:
            if not provider.handles(ref):
                continue
            credentials = await self._credentials(provider, ref)
            found = best_match(credentials, ref)
            if found is not None:
                return found
        return None

    async def _credentials(self, provider: CredentialProvider, ref: ImageReference
                           ) -> list[tuple[RegistryPattern, AuthConfig]]:
        # One exec per provider and image at a time: callers that waited find the cache
        # filled by the first (unless the plugin asked not to be cached).
        lock = self._locks.setdefault((provider.name, str(ref)), asyncio.Lock())
        async with lock:
            cached = self._cached(provider, ref)
            if cached is not None:
                return cached
            return await self._exec_and_cache(provider, ref)

    def _cached(self, provider: CredentialProvider, ref: ImageReference
                ) -> list[tuple[RegistryPattern, AuthConfig]] | None:
        now = self._clock()
        for key_type in CACHE_KEY_TYPES:
            entry = self._cache.get((provider.name, _cache_key(key_type, ref)))
            if entry is not None and entry.expires_at > now:
                return entry.credentials
        return None

    async def _exec_and_cache(self, provider: CredentialProvider, ref: ImageReference
                              ) -> list[tuple[RegistryPattern, AuthConfig]]:
        response = await self._exec(provider, ref)
        key_type, duration, credentials = _parse_response(response, provider, ref)
        if duration is None:
            duration = provider.default_cache_duration
        if duration > 0:
            self._prune()
            self._cache[(provider.name, _cache_key(key_type, ref))] = _CacheEntry(
                self._clock() + duration, credentials)
        log.info("credential provider returned credentials", extra=fields(
            plugin=provider.name, image=str(ref), cache_key_type=key_type,
            cache_seconds=duration, registries=[str(p) for p, _ in credentials]))
        return credentials

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._cache.items() if e.expires_at <= now]:
            del self._cache[key]

    async def _exec(self, provider: CredentialProvider, ref: ImageReference) -> bytes:
        path = self.bin_dir / provider.name
        request = json.dumps({"apiVersion": provider.api_version,
                              "kind": "CredentialProviderRequest", "image": str(ref)})
        env = {**os.environ, **dict(provider.env)}
        fail = _failure(provider, ref)
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path), *provider.args, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        except OSError as exc:
            raise fail(f"cannot run {path}: {exc.strerror or exc}") from None
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(request.encode()),
                                                    self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise fail(f"timed out after {self.timeout_s:g}s") from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise fail(f"exit status {proc.returncode}{_stderr_note(stderr)}")
        return stdout


def _failure(provider: CredentialProvider, ref: ImageReference
             ) -> Callable[[str], CredentialProviderError]:
    def make(problem: str) -> CredentialProviderError:
        return CredentialProviderError(
            f'credential provider "{provider.name}" failed for image "{ref}": {problem}')
    return make


def _stderr_note(stderr: bytes) -> str:
    text = redact_text(stderr.decode("utf-8", "replace").strip())
    text = _OPAQUE.sub("***", text)
    if len(text) > _STDERR_LIMIT:
        text = "..." + text[-_STDERR_LIMIT:]
    return f"; stderr: {text}" if text else ""


def _cache_key(key_type: str, ref: ImageReference) -> str:
    if key_type == "Image":
        return str(ref)
    if key_type == "Registry":
        return ref.registry
    return ""


def _parse_response(raw: bytes, provider: CredentialProvider, ref: ImageReference
                    ) -> tuple[str, float | None, list[tuple[RegistryPattern, AuthConfig]]]:
    """Validate a CredentialProviderResponse. Messages never include its content."""
    fail = _failure(provider, ref)
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise fail("its output is not a JSON CredentialProviderResponse") from None
    if not isinstance(obj, Mapping):
        raise fail("its output is not a JSON object")
    if obj.get("kind") != "CredentialProviderResponse":
        raise fail('response kind must be "CredentialProviderResponse"')
    if obj.get("apiVersion") != provider.api_version:
        raise fail(f"response apiVersion must be {provider.api_version} (as configured)")
    key_type = obj.get("cacheKeyType")
    if key_type not in CACHE_KEY_TYPES:
        raise fail(f"response cacheKeyType must be one of {', '.join(CACHE_KEY_TYPES)}")
    duration = obj.get("cacheDuration")
    if duration is not None:
        try:
            duration = parse_duration(duration, "response cacheDuration")
        except CredentialProviderError as exc:
            raise fail(str(exc)) from None
    auth = obj.get("auth") or {}
    if not isinstance(auth, Mapping):
        raise fail("response auth must be a map of registry pattern to credentials")
    return key_type, duration, [_plugin_credential(k, v, fail) for k, v in auth.items()]


def _plugin_credential(key: str, value: Any, fail: Callable[[str], CredentialProviderError]
                       ) -> tuple[RegistryPattern, AuthConfig]:
    try:
        pattern = RegistryPattern.parse(key)
    except ValueError:
        raise fail("response auth has a key that is not a registry pattern") from None
    if (not isinstance(value, Mapping) or not isinstance(value.get("username", ""), str)
            or not isinstance(value.get("password", ""), str)):
        raise fail(f'response auth["{pattern}"] must be {{username, password}} strings')
    return pattern, AuthConfig(username=value.get("username", ""),
                               password=value.get("password", ""))


# ----------------------------------------------------------------------------- chain


class ChainKeyring:
    """Asks each keyring in order; the first that has credentials wins."""

    def __init__(self, keyrings: Iterable[Keyring]):
        self.keyrings = list(keyrings)

    async def credentials_for(self, ref: ImageReference) -> AuthConfig | None:
        for keyring in self.keyrings:
            found = await keyring.credentials_for(ref)
            if found is not None:
                return found
        return None


class AnonymousKeyring:
    """No credentials for anything (public registries only)."""

    async def credentials_for(self, ref: ImageReference) -> AuthConfig | None:
        return None
