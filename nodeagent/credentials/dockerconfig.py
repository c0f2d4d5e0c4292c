"""Credentials from docker config JSON: files (``config.json``) and image pull secrets.

Accepts ``{"auths": {...}}`` and the legacy top-level ``{"<host>": {...}}`` form, and
Kubernetes Secrets of type ``kubernetes.io/dockerconfigjson`` / ``dockercfg``. Entries
are matched like kubelet's keyring (``keyring.RegistryPattern``). Errors name the file,
secret or key, never a secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nodeagent import redaction
from nodeagent.containerd.client import AuthConfig
from nodeagent.credentials.keyring import RegistryPattern, best_match, learned
from nodeagent.errors import NodeagentError
from nodeagent.inputs import InputFileError, read_input_file
from nodeagent.log import fields
from nodeagent.registry.reference import ImageReference

log = logging.getLogger(__name__)


class AuthSourceError(NodeagentError):
    """A credentials file or secret that cannot be used; names the source and key only."""


class DockerConfigKeyring:
    """Credentials from docker config JSON (image pull secrets)."""

    def __init__(self, entries: Sequence[tuple[RegistryPattern, AuthConfig]] = ()):
        self._entries = list(entries)

    @classmethod
    def from_file(cls, path: Path | str) -> DockerConfigKeyring:
        path = Path(path)
        try:  # a regular file of at most MAX_INPUT_FILE_BYTES (a FIFO would hang)
            data = read_input_file(path, "registry credentials")
        except InputFileError as exc:
            raise AuthSourceError(str(exc)) from None
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
    redaction.register(*(value.get(n) for n in ("auth", "password", "identitytoken",
                                                "registrytoken")))
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
    return pattern, learned(auth)


def _decode_auth(encoded: str, where: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise AuthSourceError(f"{where}.auth: not valid base64") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise AuthSourceError(f'{where}.auth: must encode "username:password"')
    return username, password
