"""Helpers for the agent tests: an in-process agent against the Kubernetes API TEST DOUBLE
(tests/support/kubeapi/; no real API server can be installed here) and a real containerd.

A test module takes the `api` fixture by assignment (``api = agent_helpers.api``): pytest
finds it, and no import is shadowed by the test arguments."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from nodeagent.agent.condition import CONDITION_TYPE
from nodeagent.agent.config import AgentConfig, DisksSetup
from nodeagent.agent.daemon import Agent
from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA
from nodeagent.containerd.client import ContainerdClient
from nodeagent.credentials.options import CredentialOptions
from nodeagent.disks.commands import setup_options
from nodeagent.disks.options import Options as DisksOptions
from nodeagent.errors import UsageError
from nodeagent.kube.client import load_config, make_client
from nodeagent.kube.watch import Backoff, WatchTiming
from nodeagent.prewarm import plan
from nodeagent.prewarm.config import EngineConfig, PrewarmOptions
from support.kubeapi import KubeApiDouble

GROUP = "nodeagent.io"
FAST_ENGINE = dict(poll_interval_s=0.2, backoff_initial_s=0.2, backoff_max_s=2.0,
                   resync_interval_s=30.0)
NS = "nodeagent"  # the namespace of the rollout tests' Leases
LEASES = ("leases", NS, "coordination.k8s.io")  # api.list(*LEASES): all of those Leases


@pytest.fixture
def api() -> Iterator[KubeApiDouble]:
    """The API server double, with the HotImageSet CRD and its schema."""
    with KubeApiDouble(crd_schema=HOTIMAGESET_OBJECT_SCHEMA) as server:
        yield server


def hot_set(name: str, *images: str, required: bool = False, **spec: Any) -> dict:
    return {
        "apiVersion": "nodeagent.io/v1alpha1", "kind": "HotImageSet",
        "metadata": {"name": name},
        "spec": {"images": [{"image": i, "required": required} for i in images], **spec},
    }


def model_set(name: str, *models: tuple, **spec: Any) -> dict:
    """A HotModelSet; each model is (name, source) or (name, source, priority, required)."""
    entries = [{"name": m[0], "source": m[1], "priority": m[2] if len(m) > 2 else 0,
                "required": m[3] if len(m) > 3 else False} for m in models]
    return {"apiVersion": "nodeagent.io/v1alpha1", "kind": "HotModelSet",
            "metadata": {"name": name}, "spec": {"models": entries, **spec}}


def add_node(api: KubeApiDouble, name: str, labels: dict | None = None,
             taints: list | None = None) -> dict:
    return api.create("nodes", {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })


def agent_config(node: str, address: str, **kw: Any) -> AgentConfig:
    """An AgentConfig for tests: fast engine, no credentials; ``engine`` replaces the
    engine settings, ``credentials`` the node's credentials, ``disks_setup_args`` turns
    disks setup on with those arguments (parsed as the CLI does, when they parse)."""
    engine = kw.pop("engine", None) or EngineConfig(**FAST_ENGINE, max_retries=kw.pop(
        "max_retries", 2), high_water_percent=100)
    credentials = kw.pop("credentials", None) or CredentialOptions()
    if "disks_setup_args" in kw:
        args = tuple(kw.pop("disks_setup_args"))
        kw["disks_setup"] = DisksSetup(args, _disks_options(args))
    return AgentConfig(
        node_name=node, containerd_address=address,
        prewarm=PrewarmOptions(engine, credentials), metrics_port=None,
        watch_timing=WatchTiming(20, 30, 1), backoff=lambda: Backoff(0.05, 0.5),
        status_min_interval_s=0.2, **kw)


def _disks_options(args: tuple[str, ...]) -> DisksOptions:
    try:
        return setup_options(args)
    except UsageError:  # a test of a setup that fails: the child process reports it
        return DisksOptions()


@dataclass
class Running:
    agent: Agent
    stop: asyncio.Event
    task: asyncio.Task
    containerd: ContainerdClient
    extra: dict = field(default_factory=dict)


@contextlib.asynccontextmanager
async def running_agent(api: KubeApiDouble, config: AgentConfig) -> AsyncIterator[Running]:
    kube = make_client(load_config(server=api.url))
    containerd = ContainerdClient(config.containerd_address)
    await containerd.connect()
    agent = Agent(config, kube, containerd)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield Running(agent, stop, task, containerd)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await containerd.close()
        await kube.close()


async def eventually(predicate: Callable[[], Any], timeout: float = 30.0,
                     what: str = "condition") -> float:
    """Wait until ``predicate()`` (sync or async) is truthy; returns seconds waited."""
    start = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def pinned_digests(client: ContainerdClient) -> set[str]:
    """Target digests of images carrying nodeagent's pin."""
    return {r.target_digest for r in await client.list_image_records()
            if r.labels.get(plan.PINNED_LABEL) == "true"}


async def pinned_is(client: ContainerdClient, expected: set[str]) -> bool:
    return await pinned_digests(client) == expected


async def present_digests(client: ContainerdClient) -> set[str]:
    return {r.target_digest for r in await client.list_image_records()}


def condition(api: KubeApiDouble, node: str, condition_type: str = CONDITION_TYPE
              ) -> dict | None:
    obj = api.get("nodes", node)
    for cond in (obj or {}).get("status", {}).get("conditions", []):
        if cond["type"] == condition_type:
            return cond
    return None


def events(api: KubeApiDouble, reason: str | None = None) -> list[dict]:
    return [e for e in api.list("events", "default")
            if reason is None or e["reason"] == reason]
