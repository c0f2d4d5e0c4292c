"""The fast pull as the engine watches it, against the real containerd and registry:
stall detection sees every kind of progress (so a long unpack after the download, or a
layer another image is pulling, is no stall), a blob fetched whole is not fetched again
on a retry, and the node's connection cap holds."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest
from support.prewarm_helpers import desired
from support.pull_helpers import corrupt_blob, push, staged_files

from nodeagent.containerd.client import ContainerdClient
from nodeagent.containerd.store import ContainerdStore
from nodeagent.prewarm.config import EngineConfig
from nodeagent.prewarm.engine import PrewarmEngine
from nodeagent.pull.preconditions import check_fast_path
from nodeagent.pull.puller import FastPuller
from nodeagent.pull.unpack import UnpackError
from nodeagent.registry.reference import parse_reference
from nodeagent.sandbox.featured import Entry, build_featured, layer_blob
from nodeagent.sandbox.throttle import MiB, ThrottleProxy

pytestmark = pytest.mark.containerd
WATCHFUL = dict(poll_interval_s=0.1, backoff_initial_s=0.2, backoff_max_s=1.0)


async def prewarm(containerd, refs: list[str], **config) -> object:
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(pull_path="fast", **{
            **WATCHFUL, **config}))
        try:
            return await engine.reconcile(desired(*refs))
        finally:
            await engine.close()


def many_files(name: str, cache):
    """50,000 small files: half a MiB of blob, seconds of unpacking here (the worker
    reports unpacked bytes every 4 MiB, about every second)."""
    layer = layer_blob([Entry(f"d{i % 100}/f{i}", data=b"x" * 100) for i in range(50000)])
    return build_featured(name, [layer], cache)


async def test_a_long_unpack_of_a_blob_already_on_disk_is_no_stall(registry, containerd,
                                                                    tmp_path):
    """The blob is on disk already (another namespace pulled it), so nothing is fetched;
    the unpack outlasts the stall timeout. Bytes unpacked are progress too."""
    image = many_files("fast/many-files", tmp_path / "blobs")
    (ref,) = push(registry, image)
    containerd.ctr("images", "pull", "--plain-http", ref, namespace="default")
    started = time.monotonic()
    summary = await prewarm(containerd, [ref], stall_timeout_s=2, max_retries=0)
    assert summary.ok, summary.text()
    assert time.monotonic() - started > 3  # the unpack did outlast the stall timeout
    assert summary.states[0].attempts == 1


async def test_an_image_waiting_on_a_layer_another_image_pulls_is_no_stall(
        registry, containerd, tmp_path):
    """Two images share an 8 MiB layer, fetched at 2 MiB/s by whichever claimed it; the
    other waits for it longer than the stall timeout and counts its progress."""
    shared = layer_blob([Entry("model.bin", data=os.urandom(8 * MiB))], "none")
    alone = build_featured("fast/share-a", [shared], tmp_path / "blobs")
    above = build_featured("fast/share-b", [shared, layer_blob([Entry("app", data=b"b")])],
                           tmp_path / "blobs")
    push(registry, alone, above)
    with ThrottleProxy(registry.host, total_bps=2 * MiB, chunk_bytes=64 << 10) as proxy:
        host = f"{proxy.address[0]}:{proxy.address[1]}"
        refs = [alone.ref(host), above.ref(host)]
        summary = await prewarm(containerd, refs, stall_timeout_s=2, max_retries=0,
                                concurrency=2)
    assert summary.ok, summary.text()
    assert [state.attempts for state in summary.states] == [1, 1]
    assert proxy.stats().bytes_down < 9 * MiB  # the shared layer came once


def blob_gets(proxy: ThrottleProxy) -> list[str]:
    return [target.split("/blobs/")[1].split("?")[0] for method, target in proxy.requests()
            if method == "GET" and "/blobs/" in target]


async def test_a_blob_fetched_whole_is_not_fetched_again_on_a_retry(fresh_registry,
                                                                    containerd, tmp_path):
    """The base layer arrives with wrong bytes; the layer above was fetched whole by then
    and waits for its parent. The retry (same puller, the registry fixed) fetches the base
    layer again and not the other one; once the puller closes nothing is left staged."""
    base = layer_blob([Entry("base.bin", data=os.urandom(12 * MiB))], "none")
    top = layer_blob([Entry("top.bin", data=os.urandom(MiB))], "none")
    image = build_featured("fast/retry", [base, top], tmp_path / "blobs")
    push(fresh_registry, image)
    base_digest, top_digest = (layer.digest for layer in image.layers)
    stored = fresh_registry.storage / "docker/registry/v2/blobs/sha256" / \
        base_digest[7:9] / base_digest[7:] / "data"
    original = stored.read_bytes()
    corrupt_blob(fresh_registry, base_digest)
    with ThrottleProxy(fresh_registry.host, record_requests=True) as proxy:
        ref = parse_reference(image.ref(f"{proxy.address[0]}:{proxy.address[1]}"))
        async with ContainerdClient(containerd.address) as client:
            setup = await check_fast_path(ContainerdStore(client))
            assert setup.staging.lock()
            puller = FastPuller(client, setup)
            try:
                with pytest.raises(UnpackError, match=base_digest):
                    await puller.pull(ref, None, None)
                assert Path(setup.staging.blob(top_digest)).stat().st_size == image.layers[1].size
                stored.write_bytes(original)
                proxy.reset_requests()
                assert await puller.pull(ref, None, None) == image.config_digest
            finally:
                await puller.close()
                setup.staging.unlock()
        asked = blob_gets(proxy)
    assert base_digest in asked and top_digest not in asked
    assert staged_files(containerd) == []


async def test_the_node_connection_cap_holds(registry, containerd, tmp_path):
    """--fetch-connections 3 with 8 per blob and 1 MiB chunks, three 4 MiB layers on slow
    connections: never more than 3 connections open to the registry, and more than one."""
    image = build_featured("fast/cap", [
        layer_blob([Entry(f"l{i}", data=os.urandom(4 * MiB))], "none") for i in range(3)],
        tmp_path / "blobs")
    push(registry, image)
    peak = 0
    with ThrottleProxy(registry.host, per_connection_bps=2 * MiB, chunk_bytes=64 << 10) as proxy:
        port = proxy.address[1]
        ref = image.ref(f"127.0.0.1:{port}")

        async def sample() -> None:
            nonlocal peak
            while True:
                open_now = [c for c in psutil.Process().net_connections("tcp")
                            if c.raddr and c.raddr.port == port
                            and c.status == psutil.CONN_ESTABLISHED]
                peak = max(peak, len(open_now))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        try:
            summary = await prewarm(containerd, [ref], fetch_connections=3,
                                    fetch_connections_per_blob=8, fetch_chunk_mib=1)
        finally:
            sampler.cancel()
    assert summary.ok, summary.text()
    assert 2 <= peak <= 3, peak
