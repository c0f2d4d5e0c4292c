"""Keyrings: who has credentials for an image, and the registry patterns they match by.

A ``Keyring`` answers ``credentials_for(ref)`` with an AuthConfig or None.
``ChainKeyring`` asks several in order (the first with credentials wins);
``RegistryPattern`` is kubelet's way of keying credentials (registry host with globs
per DNS label such as ``*.example.com``, optional port, optional path prefix) and
``best_match`` picks the most specific pattern, as kubelet does. ``learned`` is how a
credential source hands over what it read: its secrets are registered for redaction.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from nodeagent import redaction
from nodeagent.containerd.client import AuthConfig
from nodeagent.registry.reference import DEFAULT_REGISTRY, ImageReference

# Names under which docker config files refer to Docker Hub.
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


class Keyring(Protocol):
    async def credentials_for(self, ref: ImageReference) -> AuthConfig | None: ...


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


def learned(auth: AuthConfig) -> AuthConfig:
    """``auth``, its secrets now known to redaction (password, tokens, base64 login)."""
    redaction.register(*auth.secrets())
    redaction.register_login(auth.username, auth.password)
    return auth


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
