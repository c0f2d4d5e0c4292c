"""Boot hydration for the agent: after a restore from an EBS snapshot, read this node's
hot images' blocks once per boot (see snapshot/hydrate.py).

Configured from the DaemonSet container's environment (``NODEAGENT_HYDRATE*``); never
raises (hydration is an optimisation) and stops with the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from nodeagent.log import fields
from nodeagent.snapshot.hydrate import (
    HydrateOptions,
    HydrateReport,
    device_of_root,
    hydrate_once_per_boot,
)
from nodeagent.snapshot.hydrate_plan import CONTAINERD_ROOT, HydrateImage
from nodeagent.snapshot.hydrate_read import parse_rate

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.desired import DesiredImage

log = logging.getLogger(__name__)

# Agent settings (environment of the DaemonSet container).
HYDRATE_ENV = "NODEAGENT_HYDRATE"  # "false" turns boot hydration off
HYDRATE_RATE_ENV = "NODEAGENT_HYDRATE_RATE"  # e.g. "200MiB"; unset: no limit
HYDRATE_FULL_DEVICE_ENV = "NODEAGENT_HYDRATE_FULL_DEVICE"  # "true": then the whole device
HOST_ROOT_ENV = "NODEAGENT_HOST_ROOT"  # where the host's / is visible (/proc/1/root)


async def boot_hydration(client: ContainerdClient, desired: Sequence[DesiredImage],
                         stop: asyncio.Event, containerd_root: str = CONTAINERD_ROOT,
                         env: Mapping[str, str] | None = None) -> HydrateReport | None:
    """Hydrate this node's hot images once per boot, configured from the environment;
    never raises, stops when the asyncio ``stop`` event is set."""
    env = os.environ if env is None else env
    if env.get(HYDRATE_ENV, "true").strip().lower() in ("false", "0", "no", "off"):
        return None
    ready = threading.Event()
    watcher = asyncio.ensure_future(_bridge(stop, ready))
    try:
        host_root = env.get(HOST_ROOT_ENV, "")
        device = None
        if env.get(HYDRATE_FULL_DEVICE_ENV, "").strip().lower() == "true":
            device = device_of_root(containerd_root, host_root)
        options = HydrateOptions(containerd_root=containerd_root, host_root=host_root,
                                 rate_bps=parse_rate(env.get(HYDRATE_RATE_ENV, ""),
                                                     HYDRATE_RATE_ENV),
                                 full_device=device)
        images = [HydrateImage(str(d.reference), d.priority) for d in desired]
        return await hydrate_once_per_boot(client, images, options, stop=ready)
    except Exception as exc:  # an optimisation: log it, never take the agent down
        log.warning("boot hydration failed", extra=fields(error=str(exc)))
        return None
    finally:
        watcher.cancel()


async def _bridge(stop: asyncio.Event, flag: threading.Event) -> None:
    """asyncio.Event -> threading.Event, for the reader threads."""
    await stop.wait()
    flag.set()
