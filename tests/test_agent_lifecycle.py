"""The DaemonSet agent end to end, its life on a node: the startup taint (removed once the
required images are there, or on timeout), disks setup while the taint is on, the real
`nodeagent agent` process stopping cleanly on SIGTERM mid-pull, an internal failure.

A real containerd, a real registry, and tests/support/kubeapi/, a TEST DOUBLE of the
Kubernetes API server (no real API server can be installed here) that speaks the real
HTTP list/watch protocol.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from support import agent_helpers
from support.agent_helpers import (
    GROUP,
    add_node,
    agent_config,
    condition,
    events,
    eventually,
    hot_set,
    pinned_is,
    running_agent,
)
from support.kubeapi import KubeApiDouble
from support.prewarm_helpers import PausableProxy

from nodeagent.containerd.client import ContainerdClient
from nodeagent.kube.taint import TaintSpec

TAINT = "nodeagent.io/not-ready"

api = agent_helpers.api


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
            await eventually(lambda: pinned_is(run.containerd, {big.digest}), what="pulled")
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
