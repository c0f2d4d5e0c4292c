"""Before a pull takes a slot: the image's credentials and its manifest's layers.

Credentials come from the image's pull secrets first (the agent), then the node's keyring
(docker config files, credential provider). The layers (digest -> compressed size) are
read from the registry so progress has a total and the scheduler and the disk guard know
what the pull will bring; a manifest that cannot be read only costs the total.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.containerd.model import scrub
from nodeagent.errors import NodeagentError
from nodeagent.log import fields, redact_text

if TYPE_CHECKING:
    from nodeagent.api.hotimageset import SecretRef
    from nodeagent.containerd.model import AuthConfig
    from nodeagent.credentials.keyring import Keyring
    from nodeagent.prewarm.desired import DesiredImage

log = logging.getLogger(__name__)

SecretKeyringFactory = Callable[[Sequence["SecretRef"]], Awaitable["Keyring | None"]]
MANIFEST_TIMEOUT_S = 60.0


@dataclass
class Prepared:
    """What a pull attempt needs before it takes a slot."""

    auth: AuthConfig | None
    layers: dict[str, int] | None  # None: manifest not readable (progress without total)
    error: str | None = None  # credentials could not be obtained


class Preparer:
    def __init__(self, keyring: Keyring | None, secret_keyring: SecretKeyringFactory | None,
                 hosts_dir: Path | None, timeout_s: float = MANIFEST_TIMEOUT_S):
        self.keyring = keyring
        self.secret_keyring = secret_keyring
        self.hosts_dir = hosts_dir
        self.timeout_s = timeout_s

    async def prepare(self, image: DesiredImage) -> Prepared:
        try:
            auth = await self.credentials(image)
        except NodeagentError as exc:  # docker config, credential provider plugin
            return Prepared(None, None, f"credentials for {image.name}: {exc}")
        return Prepared(auth, await self.layers(image, auth))

    async def credentials(self, image: DesiredImage) -> AuthConfig | None:
        if image.pull_secrets and self.secret_keyring is not None:
            secret_ring = await self.secret_keyring(image.pull_secrets)
            if secret_ring is not None:
                found = await secret_ring.credentials_for(image.reference)
                if found is not None:
                    return found
        if self.keyring is None:
            return None
        return await self.keyring.credentials_for(image.reference)

    async def layers(self, image: DesiredImage, auth: AuthConfig | None
                     ) -> dict[str, int] | None:
        """Layer digests and sizes from the registry, or None (progress without total)."""
        from nodeagent.registry.resolve import resolve_manifest

        try:
            resolved = await asyncio.wait_for(
                resolve_manifest(image.reference, auth, image.platform, self.hosts_dir),
                timeout=self.timeout_s,
            )
        except (Exception, TimeoutError) as exc:
            log.info("cannot read the manifest; progress will show bytes without a total",
                     extra=fields(image=image.name, error=redact_text(scrub(str(exc), auth))))
            return None
        return dict(resolved.layers)
