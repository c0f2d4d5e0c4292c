"""The `nodeagent agent` process: signals, the metrics server, the clients, the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nodeagent import metrics
from nodeagent.agent.config import AgentConfig
from nodeagent.agent.daemon import Agent
from nodeagent.aio import sleep_unless
from nodeagent.errors import NodeagentError
from nodeagent.kube.watch import Backoff
from nodeagent.log import fields, redact_text

log = logging.getLogger("nodeagent.agent")


async def main(config: AgentConfig) -> int:
    """The ``nodeagent agent`` process: signals, metrics server, clients, agent."""
    import signal

    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.kube.client import load_config, make_client

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = metrics.HealthState(heartbeat_timeout_s=120)
    server = None
    if config.metrics_port is not None:
        server = metrics.serve(config.metrics_port, health, config.metrics_host)
        log.info("serving /metrics, /healthz, /readyz", extra=fields(port=server.port))
    kube = make_client(load_config(config.kube_server, config.kubeconfig))
    containerd = ContainerdClient(config.containerd_address)
    try:
        if await connect_containerd(containerd, stop, health):
            log.info("agent starting", extra=fields(
                node=config.node_name, rollout_limit=config.rollout_limit or None,
                startup_taint=str(config.startup_taint) if config.startup_taint else None))
            await Agent(config, kube, containerd, health).run(stop)
    finally:
        await containerd.close()
        with contextlib.suppress(Exception):
            await kube.close()
        if server is not None:
            server.close()
    return 0


async def connect_containerd(client: Any, stop: asyncio.Event,
                             health: metrics.HealthState) -> bool:
    """Wait for containerd (it may start after us on a booting node); False if stopped."""
    from nodeagent.containerd.client import ContainerdTooOld

    backoff = Backoff(initial_s=1.0, max_s=30.0)
    while not stop.is_set():
        try:
            await client.connect()
            return True
        except ContainerdTooOld:
            raise
        except NodeagentError as exc:
            health.set_ready(False, "waiting for containerd")
            health.beat()
            delay = backoff.delay()
            log.warning("containerd not available yet; retrying", extra=fields(
                address=client.address, error=redact_text(str(exc)), retry_in_s=round(delay, 1)))
            await sleep_unless(stop, delay)
    return False
