"""Hydration: pure ordering and rate limiting, then the real thing on a private containerd
root with sample images pulled through CRI (real registry, real unpack)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.loopfs import loop_xfs

from nodeagent import metrics
from nodeagent.cli import main
from nodeagent.containerd.client import ContainerdClient
from nodeagent.errors import UsageError
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.snapshot.hydrate import HydrateOptions, hydrate
from nodeagent.snapshot.hydrate_plan import (
    CONTENT_DIR,
    FileEntry,
    HydrateImage,
    ImageFiles,
    chain_ids,
    pick_manifest,
    plan_reads,
)
from nodeagent.snapshot.hydrate_read import (
    HydrateError,
    HydrateProgress,
    ReadItem,
    ReadStats,
    TokenBucket,
    parse_rate,
)

# ---------------------------------------------------------------------- pure


def entry(name: str, ino: int, size: int = 10) -> FileEntry:
    return FileEntry(f"/r/{name}", size, 1, ino)


def test_plan_orders_by_priority_and_reads_shared_files_once() -> None:
    low = ImageFiles("low", 1, (entry("base/a", 1), entry("low/x", 2)), (entry("blob-low", 3),))
    high = ImageFiles("high", 9, (entry("base/a", 1), entry("high/y", 4)),
                      (entry("blob-high", 5),))
    tie = ImageFiles("tie", 1, (entry("tie/z", 6),))
    plan = plan_reads([low, high, tie], metadata=[entry("meta.db", 7)])
    assert [(i.owner, i.kind, os.path.basename(i.path)) for i in plan] == [
        ("containerd", "metadata", "meta.db"),
        ("high", "layer", "a"), ("high", "layer", "y"), ("high", "blob", "blob-high"),
        ("low", "layer", "x"), ("low", "blob", "blob-low"),
        ("tie", "layer", "z"),
    ]


def test_hard_links_are_read_once() -> None:
    img = ImageFiles("i", 0, (FileEntry("/a", 5, 1, 42), FileEntry("/b", 5, 1, 42)))
    assert [i.path for i in plan_reads([img])] == ["/a"]


def test_chain_ids() -> None:
    a, b, c = ("sha256:" + x * 64 for x in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


def test_pick_manifest_prefers_this_platform_on_disk() -> None:
    index = {"manifests": [
        {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    assert pick_manifest(index, ("linux", "amd64"), lambda d: True) == "sha256:amd"
    assert pick_manifest(index, ("linux", "amd64"), lambda d: d == "sha256:arm") == "sha256:arm"
    assert pick_manifest(index, ("linux", "amd64"), lambda d: False) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_token_bucket_holds_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10 * 2**20, capacity=2**20, clock=clock, sleep=clock.sleep)
    for _ in range(50):
        bucket.take(2**20)
    # 50 MiB at 10 MiB/s with a 1 MiB initial burst: 4.9 s.
    assert clock.now == pytest.approx(4.9)


def test_parse_rate() -> None:
    assert parse_rate("200MiB") == 200 * 2**20
    assert parse_rate("150M/s") == 150e6
    assert parse_rate("1048576") == 2**20
    assert parse_rate("") is None
    for bad in ("fast", "10 parsecs", "-5M", "0"):
        with pytest.raises(UsageError, match="--rate"):
            parse_rate(bad)


# ---------------------------------------------------------------------- real containerd


class Recorder(HydrateProgress):
    def __init__(self) -> None:
        self.items: list[ReadItem] = []
        self.bytes = 0
        self.lock = threading.Lock()

    def started(self, item: ReadItem) -> None:
        self.items.append(item)  # called under the reader lock, in start order

    def read(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def done(self, name: str, stats: ReadStats) -> None:
        pass


async def pull(address: str, refs: list[str]) -> None:
    async with ContainerdClient(address) as client:
        for ref in refs:
            await client.pull_image(ref)


def files_under(dirs: list[str]) -> set[str]:
    out = set()
    for top in dirs:
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path) \
                        and os.path.getsize(path) > 0:
                    out.add(path)
    return out


async def expected_files(client: ContainerdClient, root: Path, ref: str) -> set[str]:
    """Independently of hydrate.py: every regular file of the image's unpacked snapshot
    chain and its blobs, found through containerd's records."""
    record = await client.get_image_record(ref)
    assert record is not None
    manifest = json.loads(await client.read_content(record.target_digest))
    digests = [record.target_digest]
    if "manifests" in manifest:
        amd = next(m for m in manifest["manifests"]
                   if m["platform"]["architecture"] == "amd64")
        digests.append(amd["digest"])
        manifest = json.loads(await client.read_content(amd["digest"]))
    digests += [manifest["config"]["digest"], *(la["digest"] for la in manifest["layers"])]
    config = json.loads(await client.read_content(manifest["config"]["digest"]))
    dirs = await client.snapshot_mount_dirs(chain_ids(config["rootfs"]["diff_ids"])[-1])
    blobs = {str(root / CONTENT_DIR / d.split(":")[1]) for d in digests}
    return files_under(dirs) | {b for b in blobs if os.path.exists(b)}


async def test_hot_images_are_read_in_priority_order(containerd: PrivateContainerd,
                                                     sample_images) -> None:
    server, tools, python = (sample_images[n] for n in ("model-server", "tools", "python"))
    await pull(containerd.address, [server.ref, tools.ref, python.ref])
    before = metrics.HYDRATE_READ_BYTES.labels(phase="hot")._value.get()
    recorder = Recorder()
    async with ContainerdClient(containerd.address) as client:
        report = await hydrate(
            client,
            [HydrateImage(python.ref, 1), HydrateImage(server.ref, 10), HydrateImage(tools.ref, 5)],
            HydrateOptions(containerd_root=str(containerd.root), workers=3),
            recorder,
        )
        expected = {ref: await expected_files(client, containerd.root, ref)
                    for ref in (server.ref, tools.ref, python.ref)}

    assert report.problems == [] and report.hot.errors == []
    assert report.images == 3
    owners = [i.owner for i in recorder.items]
    assert owners[0] == "containerd"  # metadata databases first
    ranked = [o for o in dict.fromkeys(owners) if o != "containerd"]
    assert ranked == [server.ref, tools.ref, python.ref]
    # Strict plan order: once an image's reads start, no earlier image's read starts.
    assert owners == sorted(owners, key=["containerd", *ranked].index)

    paths = [i.path for i in recorder.items]
    assert len(paths) == len(set(paths))  # shared base layer read once
    read = set(paths)
    for ref, files in expected.items():
        assert files <= read, f"{ref}: not read: {sorted(files - read)[:5]}"
    # The shared base layer is read for the highest-priority image that has it.
    shared = expected[server.ref] & expected[python.ref]
    assert shared
    assert {i.owner for i in recorder.items if i.path in shared} == {server.ref}
    assert report.hot.bytes == recorder.bytes == sum(os.path.getsize(p) for p in paths)
    assert metrics.HYDRATE_READ_BYTES.labels(phase="hot")._value.get() - before \
        == report.hot.bytes


async def test_rate_limit_holds(containerd: PrivateContainerd, image_pusher) -> None:
    big = image_pusher("hydrate-rate", sizes=[6 << 20, 6 << 20])
    await pull(containerd.address, [big.ref])
    limit = 6 * 2**20
    async with ContainerdClient(containerd.address) as client:
        report = await hydrate(client, [HydrateImage(big.ref)],
                               HydrateOptions(containerd_root=str(containerd.root),
                                              workers=4, rate_bps=limit))
    stats = report.hot
    assert stats.bytes > 12 * 2**20  # compressed blobs plus unpacked files
    rate = stats.bytes / stats.seconds
    # Token bucket: at most limit * T + one 1 MiB burst (plus scheduling slack).
    assert rate <= limit * 1.05 + 2**20 / stats.seconds, f"{rate / 2**20:.2f} MiB/s"
    assert rate >= limit * 0.7, f"{rate / 2**20:.2f} MiB/s: much slower than the limit"


async def test_missing_image_is_reported_others_hydrated(containerd: PrivateContainerd,
                                                        sample_images) -> None:
    trainer = sample_images["trainer"]
    await pull(containerd.address, [trainer.ref])
    async with ContainerdClient(containerd.address) as client:
        report = await hydrate(
            client, [HydrateImage("registry.invalid/absent:1", 5), HydrateImage("Bad Ref!", 4),
                     HydrateImage(trainer.ref, 1)],
            HydrateOptions(containerd_root=str(containerd.root)))
    assert report.problems[0] == "registry.invalid/absent:1: not in containerd"
    assert report.problems[1].startswith("Bad Ref!: ")
    assert len(report.problems) == 2
    assert report.images == 1 and report.hot.per_owner[trainer.ref] > 0


@pytest.fixture
def xfs_containerd(tmp_path: Path) -> Iterator[tuple[PrivateContainerd, str]]:
    """A private containerd whose root is on a loop-mounted XFS (a real block device)."""
    with loop_xfs(tmp_path / "disk") as mount:
        daemon = PrivateContainerd(tmp_path / "ctrd", root=mount.mount_point / "containerd")
        daemon.start()
        try:
            yield daemon, mount.device
        finally:
            daemon.stop()


async def test_cli_pinned_images_then_full_device(xfs_containerd, sample_images,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    daemon, _device = xfs_containerd
    server = sample_images["model-server"]
    await pull(daemon.address, [server.ref])
    async with ContainerdClient(daemon.address) as client:  # as `nodeagent prewarm` pins
        record = await client.get_image_record(server.ref)
        assert record is not None
        for rec in await client.list_image_records():
            if rec.target_digest == record.target_digest:
                await client.update_image_labels(rec.name, {
                    "io.cri-containerd.pinned": "pinned", "nodeagent.io/pinned": "true"})
    args = ["--log-format", "json", "hydrate", "--containerd-address", daemon.address,
            "--containerd-root", str(daemon.root), "--full-device", "--rate", "400MiB",
            "-o", "json"]
    started = time.monotonic()
    code = await _run_cli(args)
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["images"] == 1 and out["hot"]["bytes"] > 0
    assert out["device"]["bytes"] == 320 * 2**20  # the whole loop device
    assert time.monotonic() - started >= 320 / 400 * 0.9  # the rate applies to the device


async def test_cli_reports_missing_image(containerd: PrivateContainerd,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = await _run_cli(["hydrate", "--containerd-address", containerd.address,
                           "--containerd-root", str(containerd.root),
                           "--image", "registry.invalid/absent:1"])
    assert code == 1
    assert "registry.invalid/absent:1: not in containerd" in capsys.readouterr().out


async def _run_cli(args: list[str]) -> int:
    """The CLI calls asyncio.run: run it in a thread, away from the test's event loop."""
    import asyncio

    return await asyncio.to_thread(main, args)


async def test_stop_interrupts_and_once_per_boot(containerd: PrivateContainerd,
                                                 image_pusher, tmp_path: Path) -> None:
    from nodeagent.snapshot.hydrate import hydrate_once_per_boot

    big = image_pusher("hydrate-stop", sizes=[4 << 20, 4 << 20])
    await pull(containerd.address, [big.ref])
    marker = str(tmp_path / "run" / "hydrated")
    slow = HydrateOptions(containerd_root=str(containerd.root), rate_bps=2 * 2**20)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    async with ContainerdClient(containerd.address) as client:
        started = time.monotonic()
        report = await hydrate_once_per_boot(client, [HydrateImage(big.ref)], slow, stop=stop,
                                             marker=marker)
        assert report is not None and not report.complete
        assert time.monotonic() - started < 3  # ~8 MiB at 2 MiB/s would take 4+ s
        assert not os.path.exists(marker)  # interrupted: the next start tries again

        fast = HydrateOptions(containerd_root=str(containerd.root))
        report = await hydrate_once_per_boot(client, [HydrateImage(big.ref)], fast,
                                             marker=marker)
        assert report is not None and report.complete and report.hot.bytes > 8 << 20
        assert json.loads(Path(marker).read_text())["bytes"] == report.hot.bytes
        assert await hydrate_once_per_boot(client, [HydrateImage(big.ref)], fast,
                                           marker=marker) is None


async def test_cli_hot_list_and_images(containerd: PrivateContainerd, sample_images,
                                       tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from support.prewarm_helpers import hotlist_yaml

    python, tools, trainer = (sample_images[n] for n in ("python", "tools", "trainer"))
    await pull(containerd.address, [python.ref, tools.ref, trainer.ref])
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("low", [python.ref], priority=1) + "---\n"
                   + hotlist_yaml("high", [tools.ref], priority=5, selector="gpu: 'yes'"))
    code = await _run_cli(["hydrate", "--containerd-address", containerd.address,
                           "--containerd-root", str(containerd.root), "-f", str(hot),
                           "--image", trainer.ref, "--workers", "1", "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["images"] == 3  # without --node-labels every set is taken
    assert set(out["perImage"]) == {python.ref, tools.ref, trainer.ref}
    # One worker: completion order is plan order (--image first, then priority 5, then 1).
    assert list(out["perImage"]) == [trainer.ref, tools.ref, python.ref]


async def test_agent_boot_hydration(containerd: PrivateContainerd, sample_images,
                                    tmp_path: Path) -> None:
    """The agent's entry point, with a host-root view like /proc/1/root: containerd's
    paths resolve through it and the once-per-boot marker lands in its /run."""
    import asyncio

    from support.prewarm_helpers import desired

    from nodeagent.agent.hydration import boot_hydration

    server = sample_images["model-server"]
    await pull(containerd.address, [server.ref])
    host = tmp_path / "host"
    host.mkdir()
    (host / "tmp").symlink_to("/tmp")  # containerd's root is under /tmp here
    env = {"NODEAGENT_HOST_ROOT": str(host), "NODEAGENT_HYDRATE_RATE": "500MiB"}
    stop = asyncio.Event()
    async with ContainerdClient(containerd.address) as client:
        report = await boot_hydration(client, desired(server.ref), stop,
                                      containerd_root=str(containerd.root), env=env)
        assert report is not None and report.complete and report.problems == []
        assert report.hot.per_owner[server.ref] > 0
        assert (host / "run" / "nodeagent" / "hydrated").exists()
        assert await boot_hydration(client, desired(server.ref), stop,
                                    containerd_root=str(containerd.root), env=env) is None
        off = {**env, "NODEAGENT_HYDRATE": "false"}
        assert await boot_hydration(client, desired(server.ref), stop,
                                    containerd_root=str(containerd.root), env=off) is None
        (host / "run" / "nodeagent" / "hydrated").unlink()
        bad = {**env, "NODEAGENT_HYDRATE_RATE": "fast"}  # logged, never raised
        assert await boot_hydration(client, desired(server.ref), stop,
                                    containerd_root=str(containerd.root), env=bad) is None


async def test_wrong_root_is_refused(containerd: PrivateContainerd, tmp_path: Path) -> None:
    async with ContainerdClient(containerd.address) as client:
        with pytest.raises(HydrateError, match="is not containerd's root"):
            await hydrate(client, [], HydrateOptions(containerd_root=str(tmp_path)))
        with pytest.raises(HydrateError, match="is not a directory"):
            await hydrate(client, [], HydrateOptions(containerd_root=str(tmp_path / "x")))
