"""ContainerdClient against a real containerd (1.6.20 from Debian) and a real registry.

Daemons come from the shared fixtures in conftest.py (private containerd per test,
docker-registry per session). Two tests start their own containerd because they need a
config the fixture does not offer (CRI plugin disabled; root on a tiny tmpfs). Slow
downloads go through a throttling TCP proxy in front of the real registry so progress and
cancellation can be observed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nodeagent.containerd.client import (
    ADDRESS_ENV,
    AuthConfig,
    ContainerdClient,
    ContainerdError,
    ContainerdTooOld,
    ContainerdUnavailable,
    ImageEvent,
    ImagePullError,
    add_address_argument,
)
from nodeagent.containerd.model import classify_pull_error
from nodeagent.sandbox.containerd import PrivateContainerd

MANAGED = {"io.cri-containerd.image": "managed"}


@contextlib.asynccontextmanager
async def _closing(client: ContainerdClient) -> AsyncIterator[ContainerdClient]:
    try:
        yield client
    finally:
        await client.close()


# -- no daemon needed -------------------------------------------------------------------


def test_public_module_does_not_import_grpc() -> None:
    code = "import sys, nodeagent.containerd.client; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_address_argument_default_env_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str) -> str:
        parser = argparse.ArgumentParser()
        add_address_argument(parser)
        return parser.parse_args(argv).containerd_address

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert parse() == "/run/containerd/containerd.sock"
    monkeypatch.setenv(ADDRESS_ENV, "/tmp/x.sock")
    assert parse() == "/tmp/x.sock"
    assert parse("--containerd-address", "/y.sock") == "/y.sock"


def test_auth_config_repr_masks_secrets() -> None:
    auth = AuthConfig(username="bob", password="hunter2", auth="Ym9iOmh1bnRlcjI=",
                      identity_token="idtok", registry_token="regtok")
    for text in (repr(auth), str(auth), f"{auth}", repr([auth])):
        assert "bob" in text
        for secret in ("hunter2", "Ym9iOmh1bnRlcjI=", "idtok", "regtok"):
            assert secret not in text


async def test_missing_socket_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "no-such" / "containerd.sock")
    client = ContainerdClient(path)
    with pytest.raises(ContainerdUnavailable, match="does not exist") as err:
        await client.connect()
    assert path in str(err.value) and ADDRESS_ENV in str(err.value)
    await client.close()


async def test_regular_file_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "containerd.sock"
    path.write_text("")
    async with _closing(ContainerdClient(str(path))) as client:
        with pytest.raises(ContainerdError, match="is not a unix socket") as err:
            await client.connect()
    assert not isinstance(err.value, ContainerdUnavailable)
    assert str(path) in str(err.value)


# Error texts captured from containerd 1.6.20 (the real ones are also provoked below).
_MEASURED = [
    ("NOT_FOUND", 'failed to pull and unpack image "127.0.0.1:5099/test/nope:v1": failed to '
     'resolve reference "127.0.0.1:5099/test/nope:v1": 127.0.0.1:5099/test/nope:v1: not found',
     "not_found"),
    ("UNKNOWN", 'failed to pull and unpack image "127.0.0.1:5097/priv/small:v1": failed to '
     'resolve reference "127.0.0.1:5097/priv/small:v1": pulling from host 127.0.0.1:5097 '
     "failed with status code [manifests v1]: 401 Unauthorized", "auth"),
    ("UNKNOWN", 'failed to pull and unpack image "127.0.0.1:5098/test/small:v1": failed to '
     'resolve reference "127.0.0.1:5098/test/small:v1": failed to do request: Head '
     '"http://127.0.0.1:5098/v2/test/small/manifests/v1": dial tcp 127.0.0.1:5098: connect: '
     "connection refused", "registry_unreachable"),
    ("UNKNOWN", 'failed to pull and unpack image "127.0.0.1:5099/test/big:v1": failed to copy: '
     "write /tmp/cdx/small/root/io.containerd.content.v1.content/ingest/9f3c/data: no space "
     "left on device", "no_space"),
    ("CANCELLED", "context canceled", "cancelled"),
    ("UNKNOWN", "failed to pull and unpack image: something else entirely", "other"),
]


@pytest.mark.parametrize(("code", "details", "reason"), _MEASURED)
def test_classify_pull_error(code: str, details: str, reason: str) -> None:
    assert classify_pull_error(code, details) == reason


# -- helpers for the daemon tests ----------------------------------------------------------


@pytest.fixture
async def client(containerd: PrivateContainerd) -> AsyncIterator[ContainerdClient]:
    async with ContainerdClient(containerd.address) as c:
        yield c


def _chain_ids(diff_ids: list[str]) -> list[str]:
    chain = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def _first_file(layer_blob: Path) -> str:
    with gzip.open(layer_blob) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                return member.name
    raise AssertionError(f"layer {layer_blob} has no regular file")


async def _until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


class ThrottlingProxy:
    """TCP proxy on 127.0.0.1 that slows registry→client bytes to `rate` bytes/s."""

    def __init__(self, upstream: str, rate: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.bytes_down = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ThrottlingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # EOF ends both pumps of each connection
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pump(reader, up_writer, throttle=False),
                                 self._pump(up_reader, writer, throttle=True))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    throttle: bool) -> None:
        chunk_size = 32 << 10
        while data := await src.read(chunk_size):
            if dst.is_closing():
                return
            dst.write(data)
            await dst.drain()
            if throttle:
                self.bytes_down += len(data)
                await asyncio.sleep(len(data) / self.rate)
        dst.close()


# -- against the real daemon ------------------------------------------------------------------


@pytest.mark.containerd
async def test_connect_reports_daemon_version(
    containerd: PrivateContainerd, client: ContainerdClient
) -> None:
    info = await client.version()
    assert info.version and info.revision
    server = containerd.ctr("version").split("Server:", 1)[1]
    assert info.version in server and info.revision in server
    assert await client.connect() == info  # reconnecting on an open client is harmless


@pytest.mark.containerd
async def test_daemon_gone_raises_unavailable(containerd: PrivateContainerd) -> None:
    client = ContainerdClient(containerd.address)
    await client.connect()
    containerd.kill()  # crash: the socket file stays, nobody listens
    with pytest.raises(ContainerdUnavailable, match="not answering") as err:
        await client.list_images()
    assert containerd.address in str(err.value)
    await client.close()
    containerd.start()
    containerd.stop()  # clean stop removes the socket
    async with _closing(ContainerdClient(containerd.address)) as fresh:
        with pytest.raises(ContainerdUnavailable, match="does not exist"):
            await fresh.connect()


@pytest.mark.containerd
async def test_cri_disabled_is_reported_as_too_old(tmp_path: Path) -> None:
    if shutil.which("containerd") is None or os.geteuid() != 0:
        pytest.skip("needs the containerd binary and root")
    with _containerd_without_cri(tmp_path) as address:
        client = ContainerdClient(address)
        try:
            await _until(lambda: _answers(client), 30, "containerd without CRI to start")
            with pytest.raises(ContainerdTooOld) as err:
                await client.connect()
        finally:
            await client.close()
    version = (await _version_of_binary())
    assert version in str(err.value) and address in str(err.value)
    assert "runtime.v1" in str(err.value)


async def _answers(client: ContainerdClient) -> bool:
    try:
        await client.version()
    except ContainerdUnavailable:
        return False
    return True


async def _version_of_binary() -> str:
    out = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[2]


@contextlib.contextmanager
def _containerd_without_cri(tmp_path: Path) -> Iterator[str]:
    sockets = Path(tempfile.mkdtemp(prefix="na-nocri-"))  # short: sun_path is 108 bytes
    config = tmp_path / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sockets}/c.sock"\n[ttrpc]\n  address = "{sockets}/t.sock"\n'
    )
    with open(tmp_path / "containerd.log", "wb") as log:
        proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        yield f"{sockets}/c.sock"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.mark.containerd
async def test_pull_status_list_and_records(client: ContainerdClient, sample_images) -> None:  # type: ignore[no-untyped-def]
    pushed = sample_images["model-server"]
    image_id = await client.pull_image(pushed.ref)
    assert image_id == "sha256:" + hashlib.sha256(pushed.image.config).hexdigest()

    status = await client.image_status(pushed.ref)
    assert status is not None and status.id == image_id
    assert status.repo_tags == [pushed.ref] and status.repo_digests == [pushed.digest_ref]
    assert status.size > 0 and status.pinned is False
    assert [i.id for i in await client.list_images()] == [image_id]
    assert await client.image_status(sample_images["trainer"].ref) is None

    records = {r.name: r for r in await client.list_image_records()}
    assert set(records) == {pushed.ref, pushed.digest_ref, image_id}  # three per CRI pull
    for record in records.values():
        assert record.labels == MANAGED
        assert record.target_digest == pushed.digest
        assert record.target_media_type == pushed.image.media_type
        assert record.target_size == len(pushed.image.manifest)
    only_tag = await client.list_image_records([f'name=="{pushed.ref}"'])
    assert [r.name for r in only_tag] == [pushed.ref]

    await client.remove_image(pushed.ref)
    assert await client.list_images() == []
    await client.remove_image(pushed.ref)  # idempotent, as CRI requires


@pytest.mark.containerd
async def test_update_image_labels_sets_and_deletes(
    client: ContainerdClient, sample_images  # type: ignore[no-untyped-def]
) -> None:
    ref = sample_images["python"].ref
    await client.pull_image(ref)
    await client.update_image_labels(ref, {"nodeagent.io/pinned": "true", "team": "ml"})
    record = await client.get_image_record(ref)
    assert record is not None
    assert record.labels == {**MANAGED, "nodeagent.io/pinned": "true", "team": "ml"}

    await client.update_image_labels(ref, {"team": ""})
    record = await client.get_image_record(ref)
    assert record is not None and record.labels == {**MANAGED, "nodeagent.io/pinned": "true"}

    assert await client.get_image_record("example.com/not/pulled:1") is None
    with pytest.raises(ContainerdError, match=re.escape("example.com/not/pulled:1")):
        await client.update_image_labels("example.com/not/pulled:1", {"a": "b"})


@pytest.mark.containerd
async def test_content_of_the_manifest(client: ContainerdClient, sample_images) -> None:  # type: ignore[no-untyped-def]
    pushed = sample_images["trainer"]
    absent = "sha256:" + "0" * 64
    assert not await client.content_exists(pushed.digest)
    await client.pull_image(pushed.ref)
    assert await client.content_exists(pushed.digest)
    manifest = await client.read_content(pushed.digest)
    assert manifest == pushed.image.manifest
    assert json.loads(manifest)["layers"][0]["digest"] == pushed.image.layers[0].digest
    assert not await client.content_exists(absent)
    with pytest.raises(ContainerdError, match=absent):
        await client.read_content(absent)


@pytest.mark.containerd
async def test_image_events_on_pull_and_remove(
    client: ContainerdClient, sample_images  # type: ignore[no-untyped-def]
) -> None:
    first, second = sample_images["python"], sample_images["trainer"]
    await client.pull_image(first.ref)
    events: asyncio.Queue[ImageEvent] = asyncio.Queue()

    async def consume() -> None:
        async for event in client.subscribe_image_events():
            await events.put(event)

    consumer = asyncio.create_task(consume())
    try:
        await _wait_until_subscribed(client, first.ref, events)
        image_id = await client.pull_image(second.ref)
        names = {second.ref, second.digest_ref, image_id}
        created = await _collect(events, "/images/create", names)
        assert created == names
        await client.remove_image(second.ref)
        assert await _collect(events, "/images/delete", names) == names
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def _wait_until_subscribed(
    client: ContainerdClient, ref: str, events: asyncio.Queue[ImageEvent]
) -> None:
    """The stream has no 'ready' signal: poke label updates until one comes through."""
    for attempt in range(50):
        await client.update_image_labels(ref, {"nodeagent.test/poke": str(attempt)})
        with contextlib.suppress(TimeoutError):
            event = await asyncio.wait_for(events.get(), 0.2)
            assert event == ImageEvent("/images/update", ref)
            break
    else:
        raise AssertionError("no /images/update event within 50 label updates")
    while not events.empty():
        events.get_nowait()


async def _collect(events: asyncio.Queue[ImageEvent], topic: str, names: set[str]) -> set[str]:
    seen: set[str] = set()
    async with asyncio.timeout(30):
        while seen != names:
            event = await events.get()
            if event.topic == topic:
                seen.add(event.name)
    return seen


@pytest.mark.containerd
async def test_image_fs_info(containerd: PrivateContainerd, client: ContainerdClient,
                             sample_images) -> None:  # type: ignore[no-untyped-def]
    await client.pull_image(sample_images["model-server"].ref)

    async def used() -> list:  # type: ignore[type-arg]
        usage = await client.image_fs_info()
        return usage if usage and usage[0].used_bytes > 0 else []

    # containerd refreshes the numbers on its stats_collect_period (10 s by default).
    usage = await _until(used, 40, "image filesystem usage to be collected", 1.0)
    assert len(usage) == 1
    assert usage[0].mountpoint == str(containerd.root / "io.containerd.snapshotter.v1.overlayfs")
    assert usage[0].used_bytes > sum(layer.size for layer in sample_images["model-server"]
                                     .image.layers)
    assert usage[0].inodes_used > 0


@pytest.mark.containerd
async def test_snapshot_mount_dirs(containerd: PrivateContainerd, client: ContainerdClient,
                                   sample_images) -> None:  # type: ignore[no-untyped-def]
    image = sample_images["model-server"].image
    await client.pull_image(sample_images["model-server"].ref)
    chain = _chain_ids([layer.diff_id for layer in image.layers])

    dirs = await client.snapshot_mount_dirs(chain[-1])
    assert len(dirs) == len(image.layers)
    for directory, layer in zip(dirs, reversed(image.layers), strict=True):  # top first
        assert Path(directory, _first_file(layer.path)).is_file()
    assert await client.snapshot_mount_dirs(chain[0]) == [dirs[-1]]  # one layer: bind mount
    assert "nodeagent-view-" not in containerd.ctr("snapshots", "ls")  # views removed

    with pytest.raises(ContainerdError, match="sha256:" + "1" * 64):
        await client.snapshot_mount_dirs("sha256:" + "1" * 64)


@pytest.mark.containerd
async def test_ingests_grow_during_a_slow_pull(
    client: ContainerdClient, image_pusher  # type: ignore[no-untyped-def]
) -> None:
    pushed = image_pusher("ingest-progress", sizes=[3 << 20, 3 << 20])
    async with ThrottlingProxy(pushed.ref.split("/", 1)[0], rate=2 << 20) as proxy:
        ref = f"{proxy.host}/{pushed.ref.split('/', 1)[1]}"
        pull = asyncio.create_task(client.pull_image(ref))
        layers = {layer.digest: layer.size for layer in pushed.image.layers}
        offsets: dict[str, list[int]] = {}
        while not pull.done():
            for ingest in await client.list_ingests():
                if not ingest.ref.startswith("layer-"):
                    continue  # manifest/config ingests are tiny and short-lived
                digest = ingest.ref.removeprefix("layer-")
                assert ingest.total == layers[digest]
                assert ingest.expected in ("", digest)  # containerd 1.6.20 leaves it empty
                assert ingest.updated_at >= ingest.started_at
                offsets.setdefault(ingest.ref, []).append(ingest.offset)
            await asyncio.sleep(0.1)
        await pull
    assert offsets, "no ingest seen during a ~3 s pull"
    assert any(series[-1] > series[0] for series in offsets.values()), offsets
    assert all(series == sorted(series) for series in offsets.values()), offsets
    assert await client.list_ingests() == []


@pytest.mark.containerd
async def test_cancelling_the_task_cancels_the_pull(
    client: ContainerdClient, image_pusher  # type: ignore[no-untyped-def]
) -> None:
    pushed = image_pusher("cancelled-pull", sizes=[8 << 20])
    async with ThrottlingProxy(pushed.ref.split("/", 1)[0], rate=1 << 20) as proxy:
        ref = f"{proxy.host}/{pushed.ref.split('/', 1)[1]}"
        pull = asyncio.create_task(client.pull_image(ref))
        await _until(client.list_ingests, 30, "the download to start", 0.1)
        pull.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pull
        await asyncio.sleep(1.0)  # let containerd notice and drop the registry connection
        before = proxy.bytes_down
        await asyncio.sleep(1.5)
        assert proxy.bytes_down == before, "containerd kept downloading after cancel"
        assert before < pushed.total_size
    assert await client.image_status(ref) is None


@pytest.mark.containerd
async def test_pull_of_unknown_image_is_not_found(
    client: ContainerdClient, registry  # type: ignore[no-untyped-def]
) -> None:
    ref = f"{registry.host}/nodeagent-test/does-not-exist:1.0"
    with pytest.raises(ImagePullError) as err:
        await client.pull_image(ref)
    assert err.value.reason == "not_found" and err.value.image == ref
    assert ref in str(err.value)


@pytest.mark.containerd
async def test_pull_from_stopped_registry_is_unreachable(
    client: ContainerdClient, fresh_registry, image_pusher  # type: ignore[no-untyped-def]
) -> None:
    pushed = image_pusher("outage", registry=fresh_registry)
    fresh_registry.stop()
    with pytest.raises(ImagePullError) as err:
        await client.pull_image(pushed.ref)
    assert err.value.reason == "registry_unreachable"
    assert pushed.ref in str(err.value)


@pytest.mark.containerd
async def test_pull_with_wrong_password_is_auth_and_never_leaks_it(
    client: ContainerdClient, auth_sample_images, auth_credentials  # type: ignore[no-untyped-def]
) -> None:
    ref = auth_sample_images["python"].ref
    wrong = AuthConfig(username=auth_credentials.username, password="Wr0ng-Pa55word-x")
    for auth in (None, wrong):
        with pytest.raises(ImagePullError) as err:
            await client.pull_image(ref, auth)
        assert err.value.reason == "auth" and ref in str(err.value)
        assert "Wr0ng-Pa55word-x" not in str(err.value)
        assert auth_credentials.password not in str(err.value)
    right = AuthConfig(username=auth_credentials.username, password=auth_credentials.password)
    assert (await client.pull_image(ref, right)).startswith("sha256:")


@pytest.mark.containerd
async def test_full_disk_is_no_space(tmp_path: Path, image_pusher) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("containerd") is None or os.geteuid() != 0:
        pytest.skip("needs the containerd binary and root")
    small = tmp_path / "small-root"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    daemon = PrivateContainerd(tmp_path / "ctrd", root=small)
    try:
        daemon.start()
        pushed = image_pusher("too-big", sizes=[6 << 20])
        async with _closing(ContainerdClient(daemon.address)) as client:
            with pytest.raises(ImagePullError) as err:
                await client.pull_image(pushed.ref)
        assert err.value.reason == "no_space" and pushed.ref in str(err.value)
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)
