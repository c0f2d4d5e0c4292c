"""The fast pull killed with SIGKILL, for real: `nodeagent prewarm --pull-path fast` as a
process against the real containerd and registry, a throttling proxy in between so the
kill lands mid-fetch and mid-unpack (one layer already committed, the next one still
arriving and being unpacked). containerd must never list a half image; a re-run must
finish the job fetching only what is missing; once the image is removed, nothing of
either run may be left (no snapshot, lease, ingest, blob or staged file)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.prewarm_helpers import hotlist_yaml

from nodeagent.containerd.client import ContainerdClient
from nodeagent.sandbox.featured import Entry, build_featured, layer_blob
from nodeagent.sandbox.push import push_images
from nodeagent.sandbox.throttle import MiB, ThrottleProxy

pytestmark = pytest.mark.containerd


def requested_bytes(log: Path) -> int:
    """Bytes of blob ranges a run asked the registry for (its debug log lines)."""
    total = 0
    for line in log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("msg") == "range request":
            total += entry["end"] - entry["start"]
    return total


def prewarm(containerd, hot: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", "--log-level",
           "debug", "prewarm", "-f", str(hot), "--once", "--progress", "log", "--pull-path", "fast",
           "--fetch-chunk-mib", "1", "--containerd-address", containerd.address]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def rows(containerd, what: str) -> list[str]:
    return [line.split()[0] for line in containerd.ctr(*what.split()).splitlines()[1:]
            if line.strip()]


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def workers_of(pid: int) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "nodeagent.pull.workerproc" in " ".join(p.info["cmdline"] or [])
            and _ancestor(p, pid)]


def _ancestor(process: psutil.Process, pid: int) -> bool:
    try:
        return any(parent.pid == pid for parent in process.parents())
    except psutil.Error:
        return False


async def test_sigkill_mid_fetch_and_unpack_then_rerun_converges(registry, containerd,
                                                                  tmp_path):
    payload = os.urandom(12 * MiB)  # incompressible: the blob is as big as the file
    image = build_featured("crash/big", [
        layer_blob([Entry("small", data=b"first layer")]),
        layer_blob([Entry(f"part{i}", data=payload[i * MiB:(i + 1) * MiB])
                    for i in range(12)]),
    ], tmp_path / "blobs")
    push_images(registry.host, [image])
    with ThrottleProxy(registry.host, per_connection_bps=MiB, total_bps=2 * MiB) as proxy:
        ref = image.ref(proxy.url.split("://")[1])
        hot = tmp_path / "hot.yaml"
        hot.write_text(hotlist_yaml("crash", [ref]))
        first = prewarm(containerd, hot, tmp_path / "first.log")
        try:
            await wait_until(lambda: len(rows(containerd, "snapshots ls")) >= 1
                             and proxy.stats().bytes_down > 5 * MiB, 60,
                             "layer 1 committed and layer 2 half fetched")
            workers = workers_of(first.pid)
            assert workers, "the unpack worker should be busy with layer 2"
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        await wait_until(lambda: not any(psutil.pid_exists(w) for w in workers), 10,
                         "the killed run's workers to die with it")
        assert rows(containerd, "images ls") == [], "a half image is listed"
        async with ContainerdClient(containerd.address) as client:
            assert await client.image_status(ref) is None

        proxy.set_limits(None, None)
        log = tmp_path / "second.log"
        second = prewarm(containerd, hot, log)
        assert second.wait(120) == 0, log.read_text()[-3000:]
    # The first run had more than 5 MiB on the wire: the re-run asks only for the rest.
    assert requested_bytes(tmp_path / "first.log") > 0
    assert 0 < requested_bytes(log) < image.layers[1].size - 3 * MiB
    async with ContainerdClient(containerd.address) as client:
        for _ in range(50):
            if await client.image_status(ref) is not None:
                break
            await asyncio.sleep(0.1)
        assert (await client.image_status(ref)).id == image.config_digest
    assert rows(containerd, "leases ls") == []

    for name in rows(containerd, "images ls"):
        containerd.ctr("images", "rm", "--sync", name)
    assert rows(containerd, "snapshots ls") == []
    assert rows(containerd, "content ls") == []
    assert rows(containerd, "leases ls") == []
    async with ContainerdClient(containerd.address) as client:
        assert await client.list_ingests() == []
    staging = containerd.root / "nodeagent-pull"
    assert [p for p in staging.rglob("*") if p.is_file() and p.name != "lock"] == []
