"""imagePullSecrets (namespace/name references in HotImageSets) read from the API.

The engine asks for a keyring per image with that image's secret references; secrets are
read with GET only (no list/watch, so RBAC can name each secret) and cached for
``ttl_s`` so rotated credentials are picked up without a watch. A secret that cannot be
read is reported with what to do about it; its content never reaches a log or message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodeagent.errors import NodeagentError
from nodeagent.log import fields

if TYPE_CHECKING:
    from nodeagent.api.hotimageset import SecretRef
    from nodeagent.credentials.keyring import Keyring

log = logging.getLogger(__name__)


class PullSecretError(NodeagentError):
    """None of an image's pull secrets could be used; says which and why."""


@dataclass
class _Entry:
    expires_at: float
    keyring: Keyring | None
    problem: str | None


class PullSecrets:
    """Callable ``(refs) -> Keyring | None`` for PrewarmEngine(secret_keyring=...)."""

    def __init__(self, client: Any, ttl_s: float = 300.0, error_ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._error_ttl_s = error_ttl_s
        self._clock = clock
        self._cache: dict[SecretRef, _Entry] = {}
        self._locks: dict[SecretRef, asyncio.Lock] = {}

    async def __call__(self, refs: Sequence[SecretRef]) -> Keyring | None:
        from nodeagent.credentials.keyring import ChainKeyring

        keyrings, problems = [], []
        for ref in refs:
            entry = await self._entry(ref)
            if entry.keyring is not None:
                keyrings.append(entry.keyring)
            elif entry.problem:
                problems.append(entry.problem)
        if not keyrings and problems:
            raise PullSecretError("; ".join(problems))
        return ChainKeyring(keyrings) if keyrings else None

    def retain(self, refs: set[SecretRef]) -> None:
        """Forget cached secrets no hot image references any more."""
        for ref in list(self._cache):
            if ref not in refs:
                del self._cache[ref]
                self._locks.pop(ref, None)

    async def _entry(self, ref: SecretRef) -> _Entry:
        lock = self._locks.setdefault(ref, asyncio.Lock())
        async with lock:  # one GET per secret even when many pulls start at once
            entry = self._cache.get(ref)
            if entry is None or entry.expires_at <= self._clock():
                entry = await self._load(ref)
                self._cache[ref] = entry
            return entry

    async def _load(self, ref: SecretRef) -> _Entry:
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Secret

        from nodeagent.credentials.dockerconfig import DockerConfigKeyring

        source = f"imagePullSecret {ref.namespace}/{ref.name}"
        try:
            secret = await self._client.get(Secret, ref.name, namespace=ref.namespace)
            keyring = DockerConfigKeyring.from_secret(secret.type or "", secret.data or {},
                                                      source)
            return _Entry(self._clock() + self._ttl_s, keyring, None)
        except ApiError as exc:
            problem = _api_problem(source, ref, exc.status.code)
        except NodeagentError as exc:
            problem = str(exc)
        except Exception as exc:  # transport: the API server is unreachable right now
            problem = f"cannot read {source}: {type(exc).__name__}"
        log.warning("cannot use image pull secret", extra=fields(secret=str(ref),
                                                                  problem=problem))
        return _Entry(self._clock() + self._error_ttl_s, None, problem)


def _api_problem(source: str, ref: SecretRef, code: int | None) -> str:
    if code == 404:
        return f"{source} not found: create it or fix spec.imagePullSecrets"
    if code == 403:
        return (f"{source}: forbidden; grant the nodeagent ServiceAccount 'get' on this "
                f"secret with a Role in namespace {ref.namespace} (see daemonset/README.md)")
    return f"cannot read {source}: API error {code}"
