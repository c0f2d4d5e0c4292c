"""kubelet credential provider exec plugins (e.g. ECR's), with kubelet's cache semantics.

For an image that a provider's matchImages covers, the plugin is run with a
CredentialProviderRequest on stdin; its CredentialProviderResponse is cached per image,
registry or globally for the duration it asks (else the provider's default). A plugin's
stdout (the credentials) is never logged or echoed; the credentials it returns are
registered for redaction (``keyring.learned``).

A failing plugin's stderr is shown (its last 500 characters), because it is the only
clue to why it failed; it is free text from a process that may hold secrets nodeagent
never saw, so before it is shown it loses: every secret nodeagent knows (``redaction``,
with its rules for short values), the values of the provider's ``env`` entries and of
``--flag=value`` args (commonly keys and tokens; masked only here, since the plugin's
stderr is the one way they reach nodeagent's output, and process-wide they would mask
ordinary words such as a region), and every run of 32 or more token characters other
than the image and registry asked about (the shape of the access keys, session tokens
and registry tokens a plugin fetches). A short secret the plugin learned by itself and
prints cannot be told from ordinary text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent import redaction
from nodeagent.containerd.client import AuthConfig
from nodeagent.credentials.keyring import RegistryPattern, best_match, learned
from nodeagent.credentials.provider_config import (
    CACHE_KEY_TYPES,
    CredentialProvider,
    CredentialProviderError,
    load_credential_provider_config,
    parse_duration,
)
from nodeagent.log import fields
from nodeagent.registry.reference import ImageReference

log = logging.getLogger(__name__)

_STDERR_LIMIT = 500
# Long opaque strings (keys, tokens, base64 blobs) are masked in plugin stderr.
_OPAQUE = re.compile(r"[A-Za-z0-9+/=_.\-]{32,}")


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
            raise fail(f"exit status {proc.returncode}{_stderr_note(stderr, provider, ref)}")
        return stdout


def _failure(provider: CredentialProvider, ref: ImageReference
             ) -> Callable[[str], CredentialProviderError]:
    def make(problem: str) -> CredentialProviderError:
        return CredentialProviderError(
            f'credential provider "{provider.name}" failed for image "{ref}": {problem}')
    return make


def _stderr_note(stderr: bytes, provider: CredentialProvider, ref: ImageReference) -> str:
    text = redaction.redact(stderr.decode("utf-8", "replace").strip(),
                            also=_configured_values(provider))
    text = _mask_opaque(text, (str(ref), ref.registry))
    if len(text) > _STDERR_LIMIT:
        text = "..." + text[-_STDERR_LIMIT:]
    return f"; stderr: {text}" if text else ""


def _mask_opaque(text: str, keep: tuple[str, ...]) -> str:
    """Long opaque runs masked, except the image reference and registry asked about
    (long hosts such as ECR's are made of the same characters)."""
    kept = re.compile("|".join(re.escape(k) for k in sorted(keep, key=len, reverse=True)))
    parts = kept.split(text)
    found = kept.findall(text)
    masked = [_OPAQUE.sub(redaction.MASK, part) for part in parts]
    return "".join(p + k for p, k in zip(masked, [*found, ""], strict=True))


def _configured_values(provider: CredentialProvider) -> list[str]:
    """What the provider's config hands the plugin that may be secret: env values and the
    values of ``--flag=value`` args."""
    args = [a.partition("=")[2] for a in provider.args if a.startswith("-") and "=" in a]
    return [value for _, value in provider.env] + args


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
    return pattern, learned(AuthConfig(username=value.get("username", ""),
                                       password=value.get("password", "")))
