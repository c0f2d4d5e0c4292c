"""The DaemonSet agent end to end: a real containerd, a real registry, and tests/support/kubeapi.py,
a TEST DOUBLE of the Kubernetes API server (no real API server can be installed here)
that speaks the real HTTP list/watch protocol.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from support.agent_helpers import (
    GROUP,
    add_node,
    agent_config,
    condition,
    events,
    eventually,
    hot_set,
    pinned_digests,
    present_digests,
    running_agent,
)
from support.kubeapi import KubeApiDouble
from support.prewarm_helpers import PausableProxy

from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA
from nodeagent.containerd.client import ContainerdClient
from nodeagent.credentials.options import CredentialOptions
from nodeagent.kube import rollout_plan
from nodeagent.kube.taint import TaintSpec

TAINT = "nodeagent.io/not-ready"


@pytest.fixture
def api():
    with KubeApiDouble(crd_schema=HOTIMAGESET_OBJECT_SCHEMA) as server:
        yield server


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
        await eventually(lambda: _pinned_is(client, {server.digest}), what="update converges")
        assert python.digest in await present_digests(client)  # unpinned, never removed

        api.delete("hotimagesets", "base", group=GROUP)
        await eventually(lambda: _pinned_is(client, set()), what="delete converges")
        await eventually(lambda: (condition(api, "n1") or {}).get("reason") == "NoHotImages")
        assert events(api, "ImagesPrewarmed")


async def _pinned_is(client, expected: set[str]) -> bool:
    return await pinned_digests(client) == expected


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
        await eventually(lambda: _pinned_is(run.containerd, {gpu.digest}), what="pulled")
        api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(pool="cpu"))
        await eventually(lambda: _pinned_is(run.containerd, set()), what="unpinned")


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
        await eventually(lambda: _pinned_is(run.containerd, {good.digest}), what="good set")
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
        await eventually(lambda: _pinned_is(run.containerd, {first.digest}), what="first")
        api.stop()
        await asyncio.sleep(1.0)
        # meanwhile: the set changes and history is compacted (watch resume gets 410)
        api.update("hotimagesets", "a", lambda o: o["spec"].update(
            images=[{"image": second.ref}]), group=GROUP)
        api.compact()
        assert not run.task.done()
        api.start()
        await eventually(lambda: _pinned_is(run.containerd, {second.digest}), what="after")
        assert run.agent.sets_mirror.relists >= 1
        assert run.agent.sets_mirror.errors >= 1


async def test_startup_taint_removed_when_required_images_present(api, containerd, registry,
                                                                   image_pusher):
    big = image_pusher("taint-wait", sizes=[2 << 20])
    proxy = PausableProxy(registry.host)
    proxy.pause_after(0)  # the registry hangs until we let it go
    ref = big.ref.replace(registry.host, proxy.host)
    add_node(api, "n1", taints=[{"key": "other", "effect": "NoSchedule"},
                                {"key": TAINT, "effect": "NoSchedule"}])
    api.create("hotimagesets", hot_set("req", ref, required=True), group=GROUP)
    config = agent_config("n1", containerd.address,
                          startup_taint=TaintSpec.parse(f"{TAINT}:NoSchedule"))
    try:
        async with running_agent(api, config) as run:
            await eventually(lambda: run.agent.images_known(), what="engine started")
            await asyncio.sleep(1.0)
            taints = api.get("nodes", "n1")["spec"]["taints"]
            assert {"key": TAINT, "effect": "NoSchedule"} in taints  # image still missing
            proxy.resume()
            await eventually(lambda: _pinned_is(run.containerd, {big.digest}), what="pulled")
            await eventually(lambda: not _has_taint(api), what="taint removed")
            assert api.get("nodes", "n1")["spec"]["taints"] == [
                {"key": "other", "effect": "NoSchedule"}]
            await eventually(lambda: events(api, "StartupTaintRemoved"), what="Event")
    finally:
        proxy.close()


def _has_taint(api: KubeApiDouble, node: str = "n1") -> bool:
    return any(t["key"] == TAINT for t in api.get("nodes", node)["spec"].get("taints", []))


async def test_startup_taint_removed_on_timeout_with_reason(api, containerd, registry):
    missing = f"{registry.host}/nodeagent-test/never-pushed:1"
    add_node(api, "n1", taints=[{"key": TAINT, "effect": "NoSchedule"}])
    api.create("hotimagesets", hot_set("req", missing, required=True), group=GROUP)
    config = agent_config("n1", containerd.address, max_retries=0,
                          startup_taint=TaintSpec.parse(TAINT),
                          startup_taint_timeout_s=2.0)
    async with running_agent(api, config):
        start = time.monotonic()
        await eventually(lambda: not _has_taint(api), what="taint removed on timeout")
        assert time.monotonic() - start < 6
        await eventually(lambda: events(api, "StartupTaintTimeout"), what="Event")
        [event] = events(api, "StartupTaintTimeout")
        assert event["type"] == "Warning"
        assert "timed out after 2s" in event["message"] and "never-pushed" in event["message"]
        await eventually(lambda: events(api, "HotImagePullFailed"), what="failure Event")
        cond = condition(api, "n1")
        assert (cond["status"], cond["reason"]) == ("False", "PullFailed")


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
        await eventually(lambda: _pinned_is(run.containerd, {image.digest}), what="auth pull")
    leaked = [e for e in events(api) if auth_credentials.password in json.dumps(e)]
    assert not leaked


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
                await eventually(lambda run=run: _pinned_is(run.containerd, {image.digest}),
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


async def test_sigterm_mid_pull_exits_cleanly(api, containerd, registry, image_pusher,
                                              tmp_path):
    """The real `nodeagent agent` process: health endpoints, then SIGTERM while a pull is
    in flight -> exit 0 promptly, the download stops, nothing half-labelled."""
    image = image_pusher("sigterm", sizes=[8 << 20])
    proxy = PausableProxy(registry.host, rate_bps=1 << 20)  # ~8 s: SIGTERM lands mid-pull
    ref = image.ref.replace(registry.host, proxy.host)
    add_node(api, "n1")
    api.create("hotimagesets", hot_set("big", ref), group=GROUP)
    log_file = tmp_path / "agent.log"
    cmd = [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", "agent",
           "--server", api.url, "--node-name", "n1", "--containerd-address", containerd.address,
           "--metrics-port", "0", "--metrics-host", "127.0.0.1", "--startup-taint", "",
           "--credential-provider-config", str(tmp_path / "absent.json")]
    client = ContainerdClient(containerd.address)
    await client.connect()
    with open(log_file, "wb") as log_out:
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=subprocess.STDOUT)
    try:
        port = await _metrics_port(log_file)
        await eventually(lambda: _http(port, "/readyz")[0] == 200, what="ready")
        assert _http(port, "/healthz")[0] == 200
        status, body = _http(port, "/metrics")
        assert status == 200 and b"nodeagent_agent_hotimagesets" in body
        assert b"nodeagent_disks_arrays 0.0" in body  # disks status, always exported
        # Bytes on the wire: a download in flight, whichever pull path took it.
        await eventually(lambda: proxy.sent > (1 << 20), what="download in flight")
        assert await client.image_status(ref) is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0, log_file.read_text()[-3000:]
        assert time.monotonic() - started < 10
        sent = proxy.sent
        await asyncio.sleep(1.5)
        assert proxy.sent == sent, "containerd kept downloading after the agent stopped"
        assert await client.list_ingests() == []  # no in-flight (or orphaned) ingest left
        assert containerd.ctr("leases", "ls").splitlines()[1:] == []  # nor a pull's lease
        assert await client.image_status(ref) is None  # not half-pulled into an image
        records = [r for r in await client.list_image_records()
                   if r.target_digest == image.digest]
        assert not records  # no record exists, so none is half-labelled
        lines = [json.loads(line) for line in log_file.read_text().splitlines()
                 if line.startswith("{")]
        assert any(line["msg"] == "agent stopped" for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()
        await client.close()


async def _metrics_port(log_file) -> int:
    port: list[int] = []

    def find() -> bool:
        for line in log_file.read_text().splitlines():
            if line.startswith("{") and "serving /metrics" in line:
                port.append(json.loads(line)["port"])
                return True
        return False

    await eventually(find, what="metrics server")
    return port[0]


def _http(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _safe_disks_args(tmp_path) -> list[str]:
    """disks setup on this test machine: it has no instance store, so nothing to do; the
    paths point into tmp_path so that even a change in the disks code could not touch the
    host's units or mounts."""
    return ["--units-dir", str(tmp_path / "units"), "--mount-path", str(tmp_path / "mnt"),
            "--no-binds"]


async def test_disks_setup_runs_only_while_the_startup_taint_is_on(api, containerd,
                                                                    sample_images, tmp_path):
    image = sample_images["python"]
    add_node(api, "tainted", taints=[{"key": TAINT, "effect": "NoSchedule"}])
    add_node(api, "serving")
    api.create("hotimagesets", hot_set("a", image.ref, required=True), group=GROUP)
    config = agent_config("tainted", containerd.address, startup_taint=TaintSpec.parse(TAINT),
                          disks_setup_args=_safe_disks_args(tmp_path))
    async with running_agent(api, config) as run:
        await eventually(lambda: not _has_taint(api, "tainted"), what="taint removed")
        assert run.agent.storage.ran_setup and run.agent.storage.ready
    config = agent_config("serving", containerd.address, startup_taint=TaintSpec.parse(TAINT),
                          disks_setup_args=_safe_disks_args(tmp_path))
    async with running_agent(api, config) as run:
        await eventually(lambda: (condition(api, "serving") or {}).get("status") == "True")
        assert not run.agent.storage.ran_setup  # workloads may use the disks: hands off


async def test_failed_disks_setup_keeps_the_taint_until_timeout(api, containerd,
                                                                 sample_images, tmp_path):
    image = sample_images["python"]
    add_node(api, "n1", taints=[{"key": TAINT, "effect": "NoSchedule"}])
    api.create("hotimagesets", hot_set("a", image.ref, required=True), group=GROUP)
    config = agent_config("n1", containerd.address, startup_taint=TaintSpec.parse(TAINT),
                          startup_taint_timeout_s=4.0,
                          disks_setup_args=[*_safe_disks_args(tmp_path), "--chunk-kib", "0"])
    async with running_agent(api, config) as run:
        await eventually(lambda: (condition(api, "n1") or {}).get("reason")
                         == "StorageNotReady", what="storage condition")
        assert "local storage setup failed" in condition(api, "n1")["message"]
        await eventually(lambda: events(api, "LocalStorageSetupFailed"), what="Event")
        assert _has_taint(api, "n1")  # images are there, but storage is not
        await eventually(lambda: not _has_taint(api, "n1"), timeout=10, what="timeout")
        await eventually(lambda: events(api, "StartupTaintTimeout"), what="timeout Event")
        assert "local storage is not set up" in events(api, "StartupTaintTimeout")[0]["message"]
        assert not run.agent.storage.ready


async def test_restart_without_the_api_server_never_unpins(api, containerd, sample_images):
    image = sample_images["python"]
    add_node(api, "n1")
    api.create("hotimagesets", hot_set("a", image.ref), group=GROUP)
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await eventually(lambda: _pinned_is(run.containerd, {image.digest}), what="pinned")
    api.stop()  # the agent restarts while the API server is away
    async with running_agent(api, agent_config("n1", containerd.address)) as run:
        await asyncio.sleep(2.0)
        assert run.agent.desired is None  # no list known: the engine did not start
        assert await pinned_digests(run.containerd) == {image.digest}
        api.start()
        await eventually(lambda: run.agent.images_known(), what="engine after API is back")
        assert await pinned_digests(run.containerd) == {image.digest}


async def test_an_internal_task_failure_stops_the_agent_for_a_restart(api, containerd):
    from nodeagent.agent.daemon import Agent
    from nodeagent.errors import NodeagentError
    from nodeagent.kube.client import load_config, make_client

    add_node(api, "n1")
    kube = make_client(load_config(server=api.url))
    client = ContainerdClient(containerd.address)
    agent = Agent(agent_config("n1", containerd.address), kube, client)

    async def broken_engine(stop):
        raise RuntimeError("engine bug")

    agent.engine.run = broken_engine
    try:
        with pytest.raises(NodeagentError, match="engine: RuntimeError: engine bug"):
            await asyncio.wait_for(agent.run(asyncio.Event()), 60)
        assert agent.health.live() == (False, "engine: RuntimeError: engine bug")
    finally:
        await client.close()
        await kube.close()


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
        await eventually(lambda: _pinned_is(run.containerd, {image.digest}), what="pulled")
