"""The prewarm engine against a real private containerd and a real registry.

Each test gets a fresh containerd (empty content store); images come from the shared
sandbox registry. Where a test needs a misbehaving registry (stalls, slow bytes), a TCP
proxy sits in front of the real one.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path

import pytest
from support.prewarm_helpers import PausableProxy, desired

from nodeagent import metrics
from nodeagent.containerd.client import ContainerdClient
from nodeagent.credentials.dockerconfig import DockerConfigKeyring
from nodeagent.prewarm import plan
from nodeagent.prewarm.engine import EngineConfig, PrewarmEngine
from nodeagent.sandbox.containerd import PrivateContainerd

MiB = 1 << 20
FAST = dict(poll_interval_s=0.2, backoff_initial_s=0.2, backoff_max_s=2.0)


async def records_of(client: ContainerdClient, digest: str):
    return [r for r in await client.list_image_records() if r.target_digest == digest]


async def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_pulls_several_images_with_shared_layers_and_pins_every_record(
        containerd, sample_images):
    names = ("python", "model-server", "trainer")
    refs = [sample_images[n].ref for n in names]
    pulled_before = metrics.PREWARM_PULLED_BYTES._value.get()
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(concurrency=2, **FAST))
        summary = await engine.reconcile(desired(*refs))
        assert summary.ok, summary.text()
        for name in names:
            pushed = sample_images[name]
            state = engine.snapshot()[pushed.ref]
            assert state.state == "present" and state.pinned and state.attempts == 1
            assert state.digest == pushed.digest
            # real totals from the manifest; shared layers count for each image
            assert state.bytes_total == sum(layer.size for layer in pushed.image.layers)
            assert state.bytes_done == state.bytes_total
            recs = await records_of(client, pushed.digest)
            assert len(recs) == 3, [r.name for r in recs]  # tag, repo@digest, config id
            for rec in recs:
                assert rec.labels[plan.CRI_PINNED_LABEL] == "pinned"
                assert rec.labels[plan.PINNED_LABEL] == "true"
                assert rec.labels[plan.PULLED_LABEL] == "true"
        unique = {layer.digest: layer.size for n in names
                  for layer in sample_images[n].image.layers}
        # each shared layer is counted once in the bytes-pulled counter
        assert metrics.PREWARM_PULLED_BYTES._value.get() - pulled_before <= sum(
            unique.values())
        # a second pass finds everything present and pulls nothing
        again = await PrewarmEngine(client, None, EngineConfig()).reconcile(desired(*refs))
        assert again.ok and all(s.attempts == 0 for s in again.states)


async def test_highest_priority_first_with_concurrency_one(containerd, sample_images):
    low, high = sample_images["python"].ref, sample_images["trainer"].ref
    events = EventLog()
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(concurrency=1, **FAST), events)
        summary = await engine.reconcile([*desired(low, priority=1), *desired(high, priority=9)])
    assert summary.ok
    assert events.seen == [(high, "pulling"), (high, "present"), (low, "pulling"),
                           (low, "present")]


class EventLog:
    """A ProgressReporter that records state changes (pending ones left out)."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def update(self, states, fs) -> None:
        pass

    def event(self, state) -> None:
        if state.state != "pending":
            self.seen.append((state.image, state.state))

    def close(self) -> None:
        pass


async def test_already_present_image_is_skipped_by_tag_and_by_digest(containerd, sample_images):
    pushed = sample_images["trainer"]
    containerd.ctr("images", "pull", "--plain-http", pushed.ref)  # pulled behind our back
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(**FAST))
        summary = await engine.reconcile(desired(pushed.ref, pushed.digest_ref))
        assert summary.ok
        assert [s.attempts for s in summary.states] == [0, 0]  # nothing pulled
        # the existing record gets pinned (we only add labels to it)
        recs = await records_of(client, pushed.digest)
        assert recs and all(r.labels[plan.PINNED_LABEL] == "true" for r in recs)


async def test_digest_reference_is_pulled_and_pinned(containerd, sample_images):
    pushed = sample_images["tools"]  # a multi-arch index
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(**FAST))
        summary = await engine.reconcile(desired(pushed.digest_ref))
        assert summary.ok, summary.text()
        recs = await records_of(client, pushed.digest)
        names = sorted(r.name for r in recs)
        assert any(n.endswith(f"@{pushed.digest}") for n in names)
        assert any(n.startswith("sha256:") for n in names)
        assert all(r.labels[plan.CRI_PINNED_LABEL] == "pinned" for r in recs)


async def test_unpins_only_what_it_pinned_when_images_leave_the_list(containerd, sample_images):
    a, b, other = (sample_images[n] for n in ("python", "trainer", "model-server"))
    async with ContainerdClient(containerd.address) as client:
        await client.pull_image(other.ref)  # someone else's image, pinned by someone else
        for rec in await records_of(client, other.digest):
            await client.update_image_labels(rec.name, {plan.CRI_PINNED_LABEL: "pinned"})
        engine = PrewarmEngine(client, None, EngineConfig(**FAST))
        assert (await engine.reconcile(desired(a.ref, b.ref))).ok
        summary = await engine.reconcile(desired(a.ref))
        assert summary.unpinned == [b.ref]
        for rec in await records_of(client, b.digest):
            assert plan.CRI_PINNED_LABEL not in rec.labels
            assert plan.PINNED_LABEL not in rec.labels
            assert rec.labels[plan.PULLED_LABEL] == "true"  # still known as ours
        assert all(r.labels[plan.CRI_PINNED_LABEL] == "pinned"
                   for r in await records_of(client, a.digest))
        assert all(r.labels[plan.CRI_PINNED_LABEL] == "pinned"
                   for r in await records_of(client, other.digest))
        # nothing was deleted without --remove-unlisted
        assert await records_of(client, b.digest)


async def test_remove_unlisted_removes_only_images_nodeagent_pulled(containerd, sample_images):
    a, b, other = (sample_images[n] for n in ("python", "trainer", "model-server"))
    async with ContainerdClient(containerd.address) as client:
        await client.pull_image(other.ref)
        engine = PrewarmEngine(client, None, EngineConfig(remove_unlisted=True, **FAST))
        assert (await engine.reconcile(desired(a.ref, b.ref))).ok
        summary = await engine.reconcile(desired(a.ref))
        assert summary.removed == [b.ref]
        assert not await records_of(client, b.digest)
        assert await records_of(client, a.digest) and await records_of(client, other.digest)


async def test_cri_reports_pinned_where_containerd_supports_it(containerd, sample_images):
    pushed = sample_images["python"]
    async with ContainerdClient(containerd.address) as client:
        version = (await client.version()).version
        engine = PrewarmEngine(client, None, EngineConfig(**FAST))
        assert (await engine.reconcile(desired(pushed.ref))).ok
        status = await client.image_status(pushed.ref)
    numbers = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
    if numbers < (1, 6, 22) or (1, 7) <= numbers < (1, 7, 3):
        pytest.skip(f"containerd {version} stores the pin label but reports CRI pinned=false "
                    "(CRI pinned support arrived in 1.6.22 / 1.7.3)")
    assert status is not None and status.pinned


async def test_wrong_password_fails_clearly_without_leaking_it(
        containerd, auth_sample_images, auth_credentials, tmp_path, caplog):
    import base64
    import json

    from nodeagent.registry.reference import parse_reference

    pushed = auth_sample_images["python"]
    wrong = "Wr0ng-" + auth_credentials.password
    host = parse_reference(pushed.ref).registry
    token = base64.b64encode(f"{auth_credentials.username}:{wrong}".encode()).decode()
    keyring = DockerConfigKeyring.from_json(json.dumps({"auths": {host: {"auth": token}}}),
                                            "test config")
    caplog.set_level("DEBUG")
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, keyring, EngineConfig(**FAST))
        summary = await engine.reconcile(desired(pushed.ref))
    state = summary.states[0]
    assert state.state == "failed" and state.reason == "auth"
    assert state.attempts == 1  # not retried: a wrong password does not fix itself
    assert "credentials" in state.message and pushed.ref in state.message
    exposed = [summary.text(), caplog.text, str(engine.snapshot()),
               metrics.generate_latest(metrics.REGISTRY).decode()]
    for text in exposed:
        assert wrong not in text and token not in text


async def test_registry_down_is_retried_then_reported(containerd, fresh_registry, image_pusher):
    pushed = image_pusher("down", [64 << 10], registry=fresh_registry)
    fresh_registry.stop()
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(max_retries=2, **FAST))
        summary = await engine.reconcile(desired(pushed.ref))
    state = summary.states[0]
    assert state.state == "failed" and state.reason == "registry_unreachable"
    assert state.attempts == 3 and "after 3 attempts" in state.message
    assert "could not be reached" in state.message


async def test_stalled_download_is_cancelled_and_retried(containerd, image_pusher):
    pushed = image_pusher("stall", [6 * MiB])
    proxy = PausableProxy(pushed.host)
    ref = pushed.ref.replace(pushed.host, proxy.host)
    proxy.pause_after(2 * MiB)  # hang in the middle of the layer blob
    try:
        async with ContainerdClient(containerd.address) as client:
            engine = PrewarmEngine(client, None, EngineConfig(stall_timeout_s=2, **FAST))
            task = asyncio.create_task(engine.reconcile(desired(ref)))

            async def stalled_once() -> bool:
                state = engine.snapshot().get(ref)
                return bool(state and any(h.startswith("stalled") for h in state.history))

            await wait_for(stalled_once, 60, "stall detection")
            proxy.resume()
            summary = await asyncio.wait_for(task, 120)
    finally:
        proxy.close()
    state = summary.states[0]
    assert summary.ok, summary.text()
    assert state.attempts >= 2 and state.bytes_done == state.bytes_total


@pytest.mark.parametrize("path", ["cri", "fast"])
async def test_containerd_restart_during_a_pull_recovers(containerd, image_pusher, path):
    """CRI: the pull dies with containerd and is retried. Fast path: the download does
    not need containerd, so the same pull carries on and commits once it is back."""
    pushed = image_pusher(f"restart-{path}", [8 * MiB])
    proxy = PausableProxy(pushed.host, rate_bps=2 * MiB)  # about 4 s of download
    ref = pushed.ref.replace(pushed.host, proxy.host)
    try:
        async with ContainerdClient(containerd.address) as client:
            engine = PrewarmEngine(client, None, EngineConfig(max_retries=8, pull_path=path,
                                                              **FAST))
            task = asyncio.create_task(engine.reconcile(desired(ref)))

            async def downloading() -> bool:
                state = engine.snapshot().get(ref)
                return bool(state and state.bytes_done > MiB)

            await wait_for(downloading, 60, "download to start")
            await asyncio.to_thread(containerd.restart)
            summary = await asyncio.wait_for(task, 180)
            recs = await records_of(client, summary.states[0].digest)
    finally:
        proxy.close()
    state = summary.states[0]
    assert summary.ok, summary.text()
    assert state.pull_path == path
    if path == "cri":
        assert state.attempts >= 2 and any("containerd" in h for h in state.history)
    assert recs and all(r.labels[plan.PINNED_LABEL] == "true" for r in recs)


async def test_hot_image_deleted_behind_our_back_is_pulled_again(containerd, sample_images):
    pushed = sample_images["trainer"]
    stop = asyncio.Event()
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(**FAST))
        engine.set_desired(desired(pushed.ref))
        runner = asyncio.create_task(engine.run(stop))
        try:
            async def present() -> bool:
                state = engine.snapshot().get(pushed.ref)
                return bool(state and state.state == "present")

            await wait_for(present, 60, "first pull")
            image_id = engine.snapshot()[pushed.ref].image_id
            await client.remove_image(image_id)  # e.g. kubelet GC or an operator
            assert not await records_of(client, pushed.digest)
            await wait_for(lambda: _pinned_again(client, pushed.digest), 60, "self-heal")
            assert engine.snapshot()[pushed.ref].state == "present"
            # after a containerd restart the engine resubscribes to events
            await asyncio.to_thread(containerd.restart)
            await asyncio.sleep(3)
            await client.remove_image(image_id)
            await wait_for(lambda: _pinned_again(client, pushed.digest), 60,
                           "self-heal after a containerd restart")
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)


async def _pinned_again(client: ContainerdClient, digest: str) -> bool:
    recs = await records_of(client, digest)
    return len(recs) == 3 and all(r.labels.get(plan.PINNED_LABEL) == "true" for r in recs)


@pytest.fixture
def small_image_fs(tmp_path: Path):
    """A private containerd whose root is a 300 MiB loop-mounted ext4."""
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "300M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    try:
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True,
                       capture_output=True)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot loop-mount: {exc.stderr.decode().strip()}")
    daemon = PrivateContainerd(tmp_path / "ctrd", root=mnt / "containerd")
    try:
        daemon.start()
        yield daemon, mnt
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_guard_skips_an_image_that_would_pass_the_high_water_mark(
        small_image_fs, image_pusher):
    daemon, mnt = small_image_fs
    small = image_pusher("fits", [2 * MiB])
    big = image_pusher("toobig", [40 * MiB])  # needs ~120 MiB with the unpack estimate
    filler = mnt / "filler"
    subprocess.run(["fallocate", "-l", "130M", str(filler)], check=True)  # ~45% + metadata
    async with ContainerdClient(daemon.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(high_water_percent=80, **FAST))
        summary = await engine.reconcile(desired(small.ref, big.ref))
        records = await client.list_image_records()
    states = {s.image: s for s in summary.states}
    assert states[small.ref].state == "present"
    skipped = states[big.ref]
    assert skipped.state == "skipped" and skipped.reason == "disk_guard"
    for text in (big.ref, "MiB", "io.containerd.snapshotter.v1.overlayfs", "% used",
                 "high-water mark of 80%"):
        assert text in skipped.message
    assert not any(r.target_digest == big.digest for r in records)  # nothing pulled
    assert "skipped" in summary.text() and big.ref in summary.text()


async def test_unreadable_manifest_falls_back_to_progress_without_total(
        containerd, image_pusher, tmp_path, caplog):
    """Our manifest reader is pointed (hosts.toml) at a dead server while containerd pulls
    from the real registry: the CRI pull still succeeds, with bytes but no known total.
    (The fast path reads through the same hosts.toml, so it would fail here: CRI only.)"""
    pushed = image_pusher("unresolved", [3 * MiB])
    hosts = tmp_path / "hosts"
    (hosts / pushed.host).mkdir(parents=True)
    (hosts / pushed.host / "hosts.toml").write_text('server = "http://127.0.0.1:9"\n')
    caplog.set_level("INFO", logger="nodeagent.prewarm")
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(hosts_dir=hosts, pull_path="cri",
                                                          **FAST))
        summary = await engine.reconcile(desired(pushed.ref))
        recs = await records_of(client, pushed.digest)
    assert summary.ok, summary.text()
    assert summary.states[0].bytes_total is None
    assert "cannot read the manifest" in caplog.text
    assert len(recs) == 3 and all(r.labels[plan.PINNED_LABEL] == "true" for r in recs)
