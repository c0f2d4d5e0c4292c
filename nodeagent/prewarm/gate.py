"""The engine's pull gate (the agent's cluster-wide rollout limit) and what it is told.

``pull_gate(key, mirrored=...)`` is an async context manager the engine holds around each
pull. ``mirrored`` says that containerd's hosts.toml sends the image's registry to a
mirror first (a pull-through cache, or a P2P mirror such as Spegel or Dragonfly): the
rollout limit then needs to hold back only a first wave of seed nodes, and the others pull
through the mirror at once (kube/rollout_plan). The hosts.toml directory is the one the
pulls use: an explicit ``--hosts-dir``, else the CRI plugin's ``config_path`` as seen
from here (``host_root``; containerd 2 lists two by default,
``/etc/containerd/certs.d:/etc/docker/certs.d``, and takes the first that configures the
registry). The files are read at every pull: Spegel writes its mirrors when it starts,
and containerd too reads them per pull.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.containerd.model import ContainerdError
from nodeagent.log import fields
from nodeagent.pull.preconditions import view_path
from nodeagent.registry.endpoints import has_mirror, hosts_root
from nodeagent.registry.errors import RegistryError

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.config import EngineConfig
    from nodeagent.prewarm.desired import DesiredImage

log = logging.getLogger(__name__)

# pull_gate(key, mirrored=bool, content=str): held around one pull
PullGate = Callable[..., contextlib.AbstractAsyncContextManager[object]]


def content_key(layer_digests: list[str] | None) -> str:
    """What a pull brings, for the seed wave to compare ("": unknown)."""
    if not layer_digests:
        return ""
    return hashlib.sha256(",".join(sorted(layer_digests)).encode()).hexdigest()[:16]


class GatedPulls:
    """``async with gated.held(gate, image, layers):`` around a pull; no gate, no wait."""

    def __init__(self, client: ContainerdClient, config: EngineConfig) -> None:
        self.client = client
        self.explicit_hosts_dir = config.hosts_dir
        self.host_root = config.host_root
        self._cri_roots: list[Path] = []
        self._cri_read = False

    @contextlib.asynccontextmanager
    async def held(self, gate: PullGate | None, image: DesiredImage,
                   layers: dict[str, int] | None) -> AsyncIterator[None]:
        """``layers``: the image's layer digests, when known (the seed wave is per
        content: a tag moved to new layers is not in the mirror yet)."""
        if gate is None:
            yield
            return
        async with gate(image.name, mirrored=await self.mirrored(image),
                        content=content_key(list(layers) if layers else None)):
            yield

    async def mirrored(self, image: DesiredImage) -> bool:
        """Does containerd ask a mirror first for this image's blobs?"""
        registry = image.reference.registry
        try:
            return has_mirror(registry, hosts_root(registry, await self.hosts_dirs()))
        except RegistryError as exc:  # the pull itself will say so; the plain limit holds
            log.warning("cannot read the registry's hosts.toml; the plain rollout limit "
                        "applies", extra=fields(image=image.name, error=str(exc)))
            return False

    async def hosts_dirs(self) -> list[Path]:
        """Where the pulls read hosts.toml, in containerd's order."""
        if self.explicit_hosts_dir is not None:
            return [self.explicit_hosts_dir]
        if not self._cri_read:
            from nodeagent.containerd.store import ContainerdStore

            try:
                config_path = (await ContainerdStore(self.client).cri_config()).config_path
            except ContainerdError as exc:  # asked again at the next pull
                log.warning("cannot read containerd's registry config_path; no mirror "
                            "assumed for this pull", extra=fields(error=str(exc)))
                return []
            self._cri_read = True
            self._cri_roots = [Path(view_path(self.host_root, root))
                               for root in config_path.split(os.pathsep) if root]
        return self._cri_roots
