"""Seed, then peers: with a registry mirror in containerd's hosts.toml, the rollout limit
holds back only a first wave of seed nodes; once they have the image, the others pull at
once through the mirror. And which pulls have a mirror: the hosts.toml the pulls use.

Real components: agents (nodeagent.agent.daemon.Agent), each with its own private
containerd; the upstream registry and, as the mirror, a pull-through cache in front of it
(docker-registry in proxy mode); tests/support/kubeapi/, a TEST DOUBLE of the
Kubernetes API server (no real API server can be installed here) speaking the real
list/watch protocol.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field

import pytest
from support import agent_helpers
from support.agent_helpers import (
    FAST_ENGINE,
    GROUP,
    LEASES,
    NS,
    add_node,
    agent_config,
    eventually,
    hot_set,
    pinned_digests,
    running_agent,
)
from support.prewarm_helpers import PausableProxy, desired

from nodeagent.containerd.client import ContainerdClient
from nodeagent.kube import rollout_plan as rp
from nodeagent.prewarm.config import EngineConfig
from nodeagent.prewarm.gate import GatedPulls
from nodeagent.registry.endpoints import hosts_root
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.local_registry import LocalRegistry

api = agent_helpers.api


@dataclass
class Hold:
    """One node's time in the gate for one image."""

    node: str
    image: str
    mirrored: bool
    entered: float
    left: float | None = None


@dataclass
class GateLog:
    holds: list[Hold] = field(default_factory=list)
    on_first_exit: dict[str, object] = field(default_factory=dict)  # image -> snapshot

    def wrap(self, gate, node: str, snapshot):
        @contextlib.asynccontextmanager
        async def recorded(image: str, **kw):
            async with gate(image, **kw):
                hold = Hold(node, image, kw.get("mirrored", False), time.monotonic())
                self.holds.append(hold)
                try:
                    yield
                finally:
                    hold.left = time.monotonic()
                    self.on_first_exit.setdefault(image, snapshot())
        return recorded

    def of(self, image: str) -> list[Hold]:
        return sorted((h for h in self.holds if h.image == image), key=lambda h: h.entered)


def write_mirror(daemon: PrivateContainerd, registry: str, mirror: str, *,
                 escaped: bool) -> None:
    """hosts.toml for ``registry``: ask ``mirror`` first. ``escaped``: in the
    ``host_port_`` directory containerd also reads (else ``host:port``)."""
    host, _, port = registry.rpartition(":")
    directory = daemon.config_path / (f"{host}_{port}_" if escaped else registry)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(
        f'server = "http://{registry}"\n\n'
        f'[host."http://{mirror}"]\n  capabilities = ["pull", "resolve"]\n')


def blob_gets(registry: LocalRegistry, digests: set[str], start: int = 0) -> dict[str, int]:
    counts = dict.fromkeys(digests, 0)
    for entry in registry.access_log()[start:]:
        digest = entry.path.rsplit("/", 1)[-1]
        if entry.method == "GET" and "/blobs/" in entry.path and digest in counts:
            counts[digest] += 1
    return counts


@pytest.mark.parametrize("pull_path", ["fast", "cri"])
async def test_seeds_pull_first_then_the_others_at_once_through_the_cache(
        api, tmp_path, registry, fresh_registry, image_pusher, pull_path):
    """Four agents, limit 1, seed wave 2. The image whose registry has a pull-through
    cache in hosts.toml: the two seeds pull one after the other while the others wait,
    then the two others pull at the same time, from the cache (the upstream serves no
    blob after the first seed). An image of a registry without a mirror keeps the plain
    limit: one node at a time. Both pull paths read hosts.toml: nodeagent's fast pull and
    containerd's own (CRI PullImage)."""
    upstream = fresh_registry
    seeded = image_pusher("seeded", sizes=[1 << 20, 512 << 10], registry=upstream)
    layers = {layer.digest for layer in seeded.image.layers}
    plain = image_pusher("plain", sizes=[1 << 20])
    cache = LocalRegistry(tmp_path / "cache", proxy_remote=upstream.url)
    cache.start()
    # ~2 MiB/s per connection: a pull takes long enough to see who overlaps whom
    to_cache = PausableProxy(cache.host, rate_bps=2 << 20)
    to_plain = PausableProxy(registry.host, rate_bps=2 << 20)
    plain_ref = plain.ref.replace(registry.host, to_plain.host)
    daemons = [PrivateContainerd(tmp_path / f"c{i}") for i in range(4)]
    log = GateLog()
    try:
        for i, daemon in enumerate(daemons):
            write_mirror(daemon, upstream.host, to_cache.host, escaped=i % 2 == 1)
            daemon.start()
            add_node(api, f"n{i}")
        async with contextlib.AsyncExitStack() as stack:
            runs = []
            for i, daemon in enumerate(daemons):
                engine = EngineConfig(**FAST_ENGINE, max_retries=2, high_water_percent=100,
                                      pull_path=pull_path)
                config = agent_config(f"n{i}", daemon.address, engine=engine,
                                      rollout_limit=1, rollout_seed_nodes=2,
                                      lease_namespace=NS, lease_duration_s=5)
                run = await stack.enter_async_context(running_agent(api, config))
                run.agent.engine.pull_gate = log.wrap(
                    run.agent.engine.pull_gate, f"n{i}", lambda: len(upstream.access_log()))
                runs.append(run)
            api.create("hotimagesets", hot_set("wide", seeded.ref, plain_ref), group=GROUP)
            for run in runs:
                await eventually(
                    lambda run=run: _has(run.containerd, {seeded.digest, plain.digest}),
                    timeout=90, what=f"{run.agent.config.node_name} pulled both images")

            def paths() -> set[str | None]:
                return {state.pull_path for run in runs
                        for state in run.agent.engine.snapshot().values()}

            # the pin lands in containerd a moment before the engine records the path
            await eventually(lambda: None not in paths(), timeout=5, what="pulls recorded")
            assert paths() == {pull_path}
    finally:
        to_cache.close()
        to_plain.close()
        for daemon in daemons:
            daemon.stop()
        cache.stop()

    holds = log.of(seeded.ref)
    assert len(holds) == 4 and all(h.mirrored for h in holds)
    (first, second), peers = holds[:2], holds[2:]
    assert second.entered >= first.left  # the seeds: within the limit, one at a time
    assert all(p.entered >= second.left for p in peers)  # the others waited for them
    assert max(p.entered for p in peers) < min(p.left for p in peers)  # then all at once
    coordinator = api.get("leases", rp.coordinator_name(seeded.ref), NS, "coordination.k8s.io")
    assert rp.SEEDS_DONE_AT in coordinator["metadata"]["annotations"]
    # served by the cache: each layer reached the upstream only for the first seed's pull
    # (distribution's proxy fetches a missing blob twice: one copy to store, one to
    # stream), never again for the three others, who all got theirs from the cache
    since_seed = blob_gets(upstream, layers, start=log.on_first_exit[seeded.ref])
    assert since_seed == dict.fromkeys(layers, 0), since_seed
    assert all(n <= 2 for n in blob_gets(upstream, layers).values())
    assert all(n >= 4 for n in blob_gets(cache, layers).values()), blob_gets(cache, layers)

    plain_holds = log.of(plain_ref)
    assert len(plain_holds) == 4 and not any(h.mirrored for h in plain_holds)
    for before, after in itertools.pairwise(plain_holds):
        assert after.entered >= before.left  # no mirror: one node at a time
    # the rollouts are over: only the two coordinator Leases remain, released
    assert {lease["metadata"]["name"] for lease in api.list(*LEASES)} == {
        rp.coordinator_name(seeded.ref), rp.coordinator_name(plain_ref)}


async def _has(client: ContainerdClient, digests: set[str]) -> bool:
    return digests <= await pinned_digests(client)


# -- which pulls have a mirror -----------------------------------------------------------------


async def test_a_mirror_is_read_from_the_hosts_toml_the_pulls_use(containerd, tmp_path):
    """Without --hosts-dir, the CRI plugin's config_path (containerd's own); a host that
    may only resolve serves no layer, so it is no mirror; a broken file is no mirror
    (the pull itself reports it)."""
    client = ContainerdClient(containerd.address)
    await client.connect()
    try:
        gated = GatedPulls(client, EngineConfig())
        assert await gated.hosts_dirs() == [containerd.config_path]

        def image(ref: str):
            return desired(ref)[0]

        assert not await gated.mirrored(image("registry.example.com/ml/a:1"))
        write_mirror(containerd, "registry.example.com:5000", "127.0.0.1:1", escaped=True)
        assert await gated.mirrored(image("registry.example.com:5000/ml/a:1"))
        resolve_only = containerd.config_path / "registry.example.com"
        resolve_only.mkdir()
        (resolve_only / "hosts.toml").write_text(
            '[host."http://127.0.0.1:1"]\n  capabilities = ["resolve"]\n')
        assert not await gated.mirrored(image("registry.example.com/ml/a:1"))
        (resolve_only / "hosts.toml").write_text("[host.\n")
        assert not await gated.mirrored(image("registry.example.com/ml/a:1"))

        explicit = tmp_path / "certs.d"
        (explicit / "_default").mkdir(parents=True)
        (explicit / "_default" / "hosts.toml").write_text(
            '[host."http://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n')
        gated = GatedPulls(client, EngineConfig(hosts_dir=explicit))
        assert await gated.mirrored(image("anything.example.org/ml/b:2"))
        # several roots (containerd 2's default lists two): the first that configures
        # the registry decides, its _default included
        empty, other = tmp_path / "empty", tmp_path / "other"
        empty.mkdir()
        (other / "registry.example.com").mkdir(parents=True)
        (other / "registry.example.com" / "hosts.toml").write_text('server = "https://x"\n')
        assert hosts_root("registry.example.com", [empty, explicit, other]) == explicit
        assert hosts_root("registry.example.com", [empty, other, explicit]) == other
        assert hosts_root("registry.example.com", [empty]) is None
    finally:
        await client.close()
