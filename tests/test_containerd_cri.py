"""ContainerdClient's CRI image service against a real containerd (1.6.20 from Debian) and
a real registry: pull, status, list, remove, image filesystem usage, cancellation, and
each pull error's reason.

Daemons come from the shared fixtures in conftest.py (private containerd per test,
docker-registry per session). One test starts its own containerd because it needs a
config the fixture does not offer (root on a tiny tmpfs). Slow downloads go through a
throttling TCP proxy in front of the real registry so cancellation can be observed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import containerd_helpers
from support.containerd_helpers import MANAGED, ThrottlingProxy, closing, until

from nodeagent.containerd.client import AuthConfig, ContainerdClient, ImagePullError
from nodeagent.containerd.model import classify_pull_error
from nodeagent.sandbox.containerd import PrivateContainerd

client = containerd_helpers.client


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


# -- against the real daemon ------------------------------------------------------------------


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
async def test_image_fs_info(containerd: PrivateContainerd, client: ContainerdClient,
                             sample_images) -> None:  # type: ignore[no-untyped-def]
    await client.pull_image(sample_images["model-server"].ref)

    async def used() -> list:  # type: ignore[type-arg]
        usage = await client.image_fs_info()
        return usage if usage and usage[0].used_bytes > 0 else []

    # containerd refreshes the numbers on its stats_collect_period (10 s by default).
    usage = await until(used, 40, "image filesystem usage to be collected", 1.0)
    assert len(usage) == 1
    assert usage[0].mountpoint == str(containerd.root / "io.containerd.snapshotter.v1.overlayfs")
    assert usage[0].used_bytes > sum(layer.size for layer in sample_images["model-server"]
                                     .image.layers)
    assert usage[0].inodes_used > 0


@pytest.mark.containerd
async def test_cancelling_the_task_cancels_the_pull(
    client: ContainerdClient, image_pusher  # type: ignore[no-untyped-def]
) -> None:
    pushed = image_pusher("cancelled-pull", sizes=[8 << 20])
    async with ThrottlingProxy(pushed.ref.split("/", 1)[0], rate=1 << 20) as proxy:
        ref = f"{proxy.host}/{pushed.ref.split('/', 1)[1]}"
        pull = asyncio.create_task(client.pull_image(ref))
        await until(client.list_ingests, 30, "the download to start", 0.1)
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
        async with closing(ContainerdClient(daemon.address)) as client:
            with pytest.raises(ImagePullError) as err:
                await client.pull_image(pushed.ref)
        assert err.value.reason == "no_space" and pushed.ref in str(err.value)
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)
