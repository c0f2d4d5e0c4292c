"""The DaemonSet agent end to end, converging on what the cluster asks for: HotImageSets
created, changed and deleted, node labels, malformed sets, an API server that goes away,
pull secrets and a mounted kubelet credential provider, the rollout limit across agents.

A real containerd, a real registry, and tests/support/kubeapi/, a TEST DOUBLE of the
Kubernetes API server (no real API server can be installed here) that speaks the real
HTTP list/watch protocol.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time

from support import agent_helpers
from support.agent_helpers import (
    GROUP,
    add_node,
    agent_config,
    condition,
    events,
    eventually,
    hot_set,
    pinned_digests,
    pinned_is,
    present_digests,
    running_agent,
)
from support.kubeapi import KubeApiDouble
from support.prewarm_helpers import PausableProxy

from nodeagent.credentials.options import CredentialOptions
from nodeagent.kube import rollout_plan

api = agent_helpers.api


async def test_set_created_updated_deleted_node_converges(api, containerd, sample_images):
    python, server = sample_images["python"], sample_images["model-server"]
    add_node(api, "n1")
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        client = run.containerd
        await eventually(lambda: run.agent.desired == [], what="first (empty) selection")
        await eventually(lambda: (condition(api, "n1") or {}).get("reason") == "NoHotImages")

        created = time.monotonic()
        api.create("hotimagesets", hot_set("base", python.ref), group=GROUP)
        await eventually(lambda: run.agent.desired, what="selection")
        assert time.monotonic() - created < 1.0  # the change reached the engine in < 1 s
        await eventually(lambda: pinned_digests(client), what="pull + pin")
        assert await pinned_digests(client) == {python.digest}
        await eventually(lambda: (condition(api, "n1") or {}).get("status") == "True")
        assert condition(api, "n1")["message"] == "1/1 hot images present"

        api.update("hotimagesets", "base", lambda o: o["spec"].update(
            images=[{"image": server.ref}]), group=GROUP)
        await eventually(lambda: pinned_is(client, {server.digest}), what="update converges")
        assert python.digest in await present_digests(client)  # unpinned, never removed

        api.delete("hotimagesets", "base", group=GROUP)
        await eventually(lambda: pinned_is(client, set()), what="delete converges")
        await eventually(lambda: (condition(api, "n1") or {}).get("reason") == "NoHotImages")
        assert events(api, "ImagesPrewarmed")


async def test_selection_follows_node_labels(api, containerd, sample_images):
    gpu = sample_images["trainer"]
    add_node(api, "n1", labels={"pool": "cpu"})
    api.create("hotimagesets", hot_set("gpu", gpu.ref, nodeSelector={
        "matchLabels": {"pool": "gpu"}}), group=GROUP)
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await eventually(lambda: run.agent.desired == [], what="not selected")
        start = time.monotonic()
        api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(pool="gpu"))
        await eventually(lambda: run.agent.desired, what="selected after relabel")
        assert time.monotonic() - start < 1.0
        await eventually(lambda: pinned_is(run.containerd, {gpu.digest}), what="pulled")
        api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(pool="cpu"))
        await eventually(lambda: pinned_is(run.containerd, set()), what="unpinned")


async def test_malformed_sets_are_reported_and_skipped(api, containerd, sample_images):
    good = sample_images["python"]
    add_node(api, "n1")
    # Stored as if created before the CRD had its schema (or semantically invalid):
    api.create("hotimagesets", hot_set("bad-ref", "Not A Valid/Ref::x"), group=GROUP,
               validate=False)
    api.create("hotimagesets", {"apiVersion": "nodeagent.io/v1alpha1", "kind": "HotImageSet",
                                "metadata": {"name": "bad-spec"}, "spec": "oops"},
               group=GROUP, validate=False)
    api.create("hotimagesets", hot_set("good", good.ref), group=GROUP)
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await eventually(lambda: pinned_is(run.containerd, {good.digest}), what="good set")
        await eventually(lambda: (condition(api, "n1") or {}).get("status") == "True")
        message = condition(api, "n1")["message"]
        assert "invalid HotImageSet skipped: bad-ref, bad-spec" in message
        assert run.agent.selection.invalid == ["bad-ref", "bad-spec"]
        # fixing the bad one makes it count again
        api.update("hotimagesets", "bad-ref", lambda o: o["spec"].update(
            images=[{"image": good.ref}]), group=GROUP)
        await eventually(lambda: run.agent.selection.invalid == ["bad-spec"])
        assert not run.task.done()


async def test_api_server_goes_away_and_comes_back(api, containerd, sample_images):
    first, second = sample_images["python"], sample_images["model-server"]
    add_node(api, "n1")
    api.create("hotimagesets", hot_set("a", first.ref), group=GROUP)
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await eventually(lambda: pinned_is(run.containerd, {first.digest}), what="first")
        api.stop()
        await asyncio.sleep(1.0)
        # meanwhile: the set changes and history is compacted (watch resume gets 410)
        api.update("hotimagesets", "a", lambda o: o["spec"].update(
            images=[{"image": second.ref}]), group=GROUP)
        api.compact()
        assert not run.task.done()
        api.start()
        await eventually(lambda: pinned_is(run.containerd, {second.digest}), what="after")
        assert run.agent.sets_mirror.relists >= 1
        assert run.agent.sets_mirror.errors >= 1


async def test_restart_without_the_api_server_never_unpins(api, containerd, sample_images):
    image = sample_images["python"]
    add_node(api, "n1")
    api.create("hotimagesets", hot_set("a", image.ref), group=GROUP)
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await eventually(lambda: pinned_is(run.containerd, {image.digest}), what="pinned")
    api.stop()  # the agent restarts while the API server is away
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await asyncio.sleep(2.0)
        assert run.agent.desired is None  # no list known: the engine did not start
        assert await pinned_digests(run.containerd) == {image.digest}
        api.start()
        await eventually(lambda: run.agent.images_known(), what="engine after API is back")
        assert await pinned_digests(run.containerd) == {image.digest}


async def test_pull_secret_from_the_api(api, containerd, auth_sample_images, auth_credentials):
    image = auth_sample_images["python"]
    host = image.ref.split("/", 1)[0]
    dockerconfig = {"auths": {host: {"username": auth_credentials.username,
                                     "password": auth_credentials.password}}}
    api.create("secrets", {"metadata": {"name": "regcred", "namespace": "ml"},
                           "type": "kubernetes.io/dockerconfigjson",
                           "data": {".dockerconfigjson": base64.b64encode(
                               json.dumps(dockerconfig).encode()).decode()}})
    add_node(api, "n1")
    api.create("hotimagesets", hot_set("private", image.ref, imagePullSecrets=[
        {"name": "regcred", "namespace": "ml"}]), group=GROUP)
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await eventually(lambda: pinned_is(run.containerd, {image.digest}), what="auth pull")
    leaked = [e for e in events(api) if auth_credentials.password in json.dumps(e)]
    assert not leaked


CREDENTIAL_PLUGIN = """#!{python}
import json, sys
request = json.load(sys.stdin)
assert request["kind"] == "CredentialProviderRequest", request
json.dump({{"apiVersion": "credentialprovider.kubelet.k8s.io/v1",
           "kind": "CredentialProviderResponse", "cacheKeyType": "Registry",
           "auth": {{{host!r}: {{"username": {user!r}, "password": {password!r}}}}}}},
          sys.stdout)
"""


async def test_kubelet_credential_provider_when_mounted(api, containerd, auth_sample_images,
                                                        auth_credentials, tmp_path):
    """Like the DaemonSet: config and plugin in one mounted directory, no pull secret."""
    image = auth_sample_images["trainer"]
    host = image.ref.split("/", 1)[0]
    plugin = tmp_path / "test-provider"
    plugin.write_text(CREDENTIAL_PLUGIN.format(python=sys.executable, host=host,
                                               user=auth_credentials.username,
                                               password=auth_credentials.password))
    plugin.chmod(0o755)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{"name": "test-provider", "matchImages": [host],
                       "defaultCacheDuration": "1m",
                       "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}]}))
    add_node(api, "n1")
    api.create("hotimagesets", hot_set("private", image.ref), group=GROUP)
    config = agent_config("n1", containerd.address, credentials=CredentialOptions(
        provider_config=config_file, provider_optional=True))
    async with running_agent(api, config) as run:
        await eventually(lambda: pinned_is(run.containerd, {image.digest}), what="pulled")


async def test_rollout_limit_holds_across_agents(api, tmp_path, registry, image_pusher):
    """Four agents (nodes) on one machine, each with its own containerd, rollout limit 2:
    at most 2 of them hold a pull slot for the image at any moment, all end up with it."""
    from nodeagent.sandbox.containerd import PrivateContainerd

    image = image_pusher("rollout", sizes=[3 << 20])
    proxy = PausableProxy(registry.host, rate_bps=6 << 20)  # ~0.5 s per pull
    ref = image.ref.replace(registry.host, proxy.host)
    daemons = [PrivateContainerd(tmp_path / f"c{i}") for i in range(4)]
    holders: set[str] = set()
    peak = {"gates": 0, "leases": 0}
    try:
        for i, daemon in enumerate(daemons):
            daemon.start()
            add_node(api, f"n{i}")
        async with contextlib.AsyncExitStack() as stack:
            runs = []
            for i, daemon in enumerate(daemons):
                config = agent_config(f"n{i}", daemon.address, rollout_limit=2,
                                      lease_namespace="nodeagent", lease_duration_s=5)
                runs.append(await stack.enter_async_context(running_agent(api, config)))
            for run in runs:
                run.agent.engine.pull_gate = _recording(run.agent.engine.pull_gate,
                                                        run.agent.config.node_name,
                                                        holders, peak)
            sampler = asyncio.create_task(_sample_lease_holders(api, peak))
            # the set appears once every agent runs (and records): all want it at once
            api.create("hotimagesets", hot_set("wide", ref), group=GROUP)
            for run in runs:
                await eventually(lambda run=run: pinned_is(run.containerd, {image.digest}),
                                 timeout=60, what=f"{run.agent.config.node_name} pulled")
            sampler.cancel()
        assert peak["gates"] == 2, peak  # the limit was reached and never exceeded
        assert 1 <= peak["leases"] <= 2, peak  # granted tickets in the API
        # the tickets are gone; the image's coordinator Lease stays, released
        [lease] = api.list("leases", "nodeagent", "coordination.k8s.io")
        assert lease["metadata"]["name"] == rollout_plan.coordinator_name(ref)
        assert not lease["spec"].get("holderIdentity")
    finally:
        proxy.close()
        for daemon in daemons:
            daemon.stop()


def _recording(gate, name: str, holders: set[str], peak: dict):
    @contextlib.asynccontextmanager
    async def recorded(image: str, **kw):
        async with gate(image, **kw):
            holders.add(name)
            peak["gates"] = max(peak["gates"], len(holders))
            try:
                yield
            finally:
                holders.discard(name)
    return recorded


async def _sample_lease_holders(api: KubeApiDouble, peak: dict) -> None:
    rp = rollout_plan
    while True:
        leases = api.list("leases", "nodeagent", "coordination.k8s.io")
        notes = {lease["metadata"]["name"]: lease["metadata"].get("annotations") or {}
                 for lease in leases}
        through = max((int(n.get(rp.GRANTED_THROUGH, 0)) for n in notes.values()), default=0)
        granted = [lease for lease in leases if lease["metadata"]["labels"].get(
            rp.ROLE_LABEL) == "ticket" and (
            notes[lease["metadata"]["name"]].get(rp.GRANTED) == "true"
            or int(notes[lease["metadata"]["name"]].get(
                rp.POSITION, lease["metadata"]["resourceVersion"])) <= through)]
        peak["leases"] = max(peak["leases"], len(granted))
        await asyncio.sleep(0.01)
