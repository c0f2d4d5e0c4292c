"""The fast pull against the real thing: Debian's containerd 1.6.20 (two private
instances, one unpacking with its own CRI pull, one filled by nodeagent) and a real
registry. What it must show: the same rootfs as containerd's own unpack, path by path;
an image CRI and kubelet see as a normal, unpacked image; wrong bytes and unsafe layers
refused with nothing left behind; the fallback taken, with its reason, where the fast
path cannot run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from support.prewarm_helpers import desired
from support.pull_features import base_entries, feature_layers, upper_entries
from support.pull_helpers import (
    assert_nothing_of,
    assert_same_layers,
    blob_files,
    corrupt_blob,
    extra_containerd,
    fast_pull,
    labels_of,
    push,
    staged_files,
)

from nodeagent import metrics
from nodeagent.containerd.client import ContainerdClient
from nodeagent.containerd.store import ContainerdStore
from nodeagent.prewarm.config import EngineConfig
from nodeagent.prewarm.engine import PrewarmEngine
from nodeagent.pull.plan import chain_ids
from nodeagent.pull.preconditions import FastPathUnavailable, check_fast_path
from nodeagent.pull.puller import FastPuller
from nodeagent.pull.unpack import UnpackError
from nodeagent.registry.reference import parse_reference
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.featured import (
    Entry,
    build_featured,
    build_featured_index,
    layer_blob,
    sparse_tar,
)
from nodeagent.sandbox.throttle import MiB, ThrottleProxy

pytestmark = pytest.mark.containerd


@pytest.fixture
def second_containerd(tmp_path: Path, containerd: PrivateContainerd):
    yield from extra_containerd(tmp_path)


# ----------------------------------------------------------------------------- equivalence


async def test_rootfs_equals_containerd_unpack(tmp_path, registry, containerd,
                                               second_containerd):
    """Every tar feature, OCI + docker media types, gzip/zstd/uncompressed, sparse,
    empty layers, a PAX global header, and a multi-arch index: layer by layer the
    committed trees are identical, and so are the labels containerd's GC relies on."""
    since = time.time() - 1
    featured = build_featured("fast/featured", feature_layers(), tmp_path / "blobs")
    docker = build_featured("fast/docker", [layer_blob(base_entries()),
                                            layer_blob(upper_entries())],
                            tmp_path / "blobs", media="docker")
    arm = build_featured("fast/multi", [layer_blob([Entry("arm", data=b"arm64")])],
                         tmp_path / "blobs", platform="linux/arm64")
    amd = build_featured("fast/multi", feature_layers()[:2], tmp_path / "blobs")
    index = build_featured_index("fast/multi", [amd, arm])
    refs = push(registry, featured, docker, index)
    async with ContainerdClient(containerd.address) as client:
        for ref in refs:
            await client.pull_image(ref)
    for ref in refs:
        await fast_pull(second_containerd, ref)
    for image in (featured, docker, amd):
        await assert_same_layers(image, second_containerd, containerd, since)
    for what in ("content", "snapshots", "images"):
        assert labels_of(second_containerd, what) == labels_of(containerd, what), what
    assert second_containerd.ctr("leases", "ls").splitlines()[1:] == []


async def test_cri_sees_a_normal_image_and_never_unpacks_it_again(registry, containerd,
                                                                   tmp_path):
    image = build_featured("fast/cri", feature_layers()[:3], tmp_path / "blobs")
    (ref,) = push(registry, image)
    image_id = await fast_pull(containerd, ref)
    assert image_id == image.config_digest
    snapshots_before = labels_of(containerd, "snapshots")
    async with ContainerdClient(containerd.address) as client:
        status = None
        for _ in range(50):  # CRI learns of new records from containerd's events
            status = await client.image_status(ref)
            if status is not None:
                break
            await asyncio.sleep(0.1)
        assert status is not None and status.id == image.config_digest
        assert ref in status.repo_tags
        listed = {i.id for i in await client.list_images()}
        assert image.config_digest in listed
        started = time.monotonic()
        assert await client.pull_image(ref) == image.config_digest
        assert time.monotonic() - started < 5
    assert labels_of(containerd, "snapshots") == snapshots_before
    # `ctr images mount` unpacks what is missing: nothing is, and the view has the files.
    mount = tmp_path / "mnt"
    mount.mkdir()
    containerd.ctr("images", "mount", ref, str(mount))
    try:
        assert (mount / "usr/lib/libx.so.2").read_bytes() == b"new version"
        assert not (mount / "etc/hostname").exists()  # whited out by layer 2
    finally:
        containerd.ctr("images", "unmount", "--rm", str(mount))
    assert labels_of(containerd, "snapshots") == snapshots_before


# ----------------------------------------------------------------------------- refusals


async def test_wrong_bytes_from_the_registry(fresh_registry, containerd, tmp_path):
    image = build_featured("fast/corrupt", feature_layers()[:3], tmp_path / "blobs")
    (ref,) = push(fresh_registry, image)
    bad = image.layers[1].digest
    corrupt_blob(fresh_registry, bad)
    with pytest.raises(UnpackError) as info:
        await fast_pull(containerd, ref)
    assert bad in str(info.value) and "does not match its digest" in str(info.value)
    assert info.value.bad_blob
    assert_nothing_of(containerd, image)


async def test_path_traversal_is_refused(registry, containerd, tmp_path):
    evil = layer_blob([Entry("ok", data=b"1"), Entry("../../escaped", data=b"owned")])
    image = build_featured("fast/traversal", [evil], tmp_path / "blobs")
    (ref,) = push(registry, image)
    with pytest.raises(UnpackError, match=r'"\.\./\.\./escaped": path climbs out'):
        await fast_pull(containerd, ref)
    assert not any(p.name == "escaped" for p in tmp_path.rglob("escaped"))
    assert_nothing_of(containerd, image)


async def test_old_gnu_sparse_is_refused_like_containerd(registry, containerd,
                                                         second_containerd, tmp_path):
    image = build_featured("fast/gnusparse", [layer_blob(sparse_tar("gnu"))],
                           tmp_path / "blobs")
    (ref,) = push(registry, image)
    async with ContainerdClient(containerd.address) as client:
        with pytest.raises(Exception, match="unhandled tar header type 83"):
            await client.pull_image(ref)
    with pytest.raises(UnpackError, match="unhandled tar header type 83"):
        await fast_pull(second_containerd, ref)
    assert_nothing_of(second_containerd, image)


# ----------------------------------------------------------------------------- concurrency


def race_image(name: str, cache: Path):
    """Small-file layers (the tar features) under four incompressible 3 MiB layers: enough
    bytes that two throttled pulls overlap for seconds, layer after layer."""
    noise = [layer_blob([Entry(f"blob{i}", data=os.urandom(3 * MiB), mode=0o640)])
             for i in range(4)]
    return build_featured(name, [layer_blob(base_entries()),
                                 layer_blob(upper_entries(), "zstd"), *noise], cache)


def hosts_via(directory: Path, registry_host: str, proxy: ThrottleProxy) -> Path:
    """A hosts.toml directory that sends ``registry_host``'s pulls through ``proxy``."""
    path = directory / registry_host / "hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'[host."{proxy.url}"]\n  capabilities = ["pull", "resolve"]\n')
    return directory


def layer_gets(proxy: ThrottleProxy, image) -> int:
    """How many of the image's layers ``proxy`` was asked for so far."""
    digests = {layer.digest for layer in image.layers}
    return len({target.split("/blobs/")[1].split("?")[0] for method, target in proxy.requests()
                if method == "GET" and "/blobs/" in target} & digests)


@pytest.mark.parametrize("leader", ["containerd", "nodeagent", "either"])
async def test_kubelet_pulling_the_same_image_meanwhile(registry, containerd, second_containerd,
                                                        tmp_path, leader, caplog):
    """CRI PullImage (what kubelet does) and the fast pull of the same image in the same
    containerd, each through its own throttling proxy so both are on the wire at once:
    both succeed, there is one image (3 records), one snapshot per chain, each blob once
    with containerd's labels, and the layers equal containerd's own unpack.

    ``containerd``: our download is faster, but each Prepare of ours waits until
    containerd has committed that chain: it lands in the window between our check and
    Prepare, and containerd answers ALREADY_EXISTS. ``nodeagent``: containerd's downloads
    are open but crawl (8 KiB/s) until the fast pull is done; it finds our snapshots (and
    commits the same blobs over ours). ``either``: the same speed, whoever gets there
    first. Without the ALREADY_EXISTS handling in commit.py, ``containerd`` fails."""
    since = time.time() - 1
    image = race_image(f"fast/race-{leader}", tmp_path / "blobs")
    (ref,) = push(registry, image)
    chains = chain_ids([layer.diff_id for layer in image.layers])
    async with ContainerdClient(second_containerd.address) as client:
        await client.pull_image(ref)  # the reference: containerd alone
    rates = {"containerd": (MiB, 4 * MiB), "nodeagent": (8 << 10, 4 * MiB),
             "either": (2 * MiB, 2 * MiB)}[leader]  # total B/s: containerd's, ours
    caplog.set_level("DEBUG", logger="nodeagent.pull")
    answers: list[object] = []

    def prepare_after_containerd(puller: FastPuller) -> None:
        prepare = puller.store.prepare

        async def late_prepare(snapshotter, key, parent, labels, lease):
            while await puller.store.snapshot(snapshotter, key.split()[-1]) is None:
                await asyncio.sleep(0.05)
            answers.append(await prepare(snapshotter, key, parent, labels, lease))
            return answers[-1]

        puller.store.prepare = late_prepare  # type: ignore[method-assign]

    async def cri() -> str:
        async with ContainerdClient(containerd.address) as client:
            return await client.pull_image(ref)

    with ThrottleProxy(registry.host, total_bps=rates[0], chunk_bytes=4 << 10,
                       record_requests=True) as cri_proxy, \
            ThrottleProxy(registry.host, per_connection_bps=rates[1] / 4, total_bps=rates[1],
                          chunk_bytes=64 << 10, record_requests=True) as our_proxy:
        containerd.map_registry(registry.host, cri_proxy.url)
        hosts = hosts_via(tmp_path / "our-hosts", registry.host, our_proxy)
        hook = prepare_after_containerd if leader == "containerd" else None
        fast = asyncio.create_task(fast_pull(containerd, ref, hosts_dir=str(hosts), hook=hook))
        kubelet = asyncio.create_task(cri())
        await asyncio.wait({fast, kubelet}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        on_the_wire = layer_gets(cri_proxy, image), layer_gets(our_proxy, image)
        cri_proxy.set_limits(None, None)
        ours, theirs = await asyncio.wait_for(asyncio.gather(fast, kubelet), 120)
    assert ours == theirs == image.config_digest
    assert min(on_the_wire) >= 2, f"the pulls did not overlap: {on_the_wire}"
    committed = [r.fields["chain"] for r in caplog.records if r.getMessage() == "layer committed"]
    theirs_first = [r.fields["chain"] for r in caplog.records
                    if r.getMessage() == "layer committed by someone else"]
    assert set(committed) | set(theirs_first) <= set(chains)  # the rest: there before us
    if leader == "containerd":  # ALREADY_EXISTS; containerd's later commits beat our Stat
        assert answers and all(a is None for a in answers) and committed == []
    elif leader == "nodeagent":  # containerd may win the two tiny layers, not the rest
        big = {chain for chain, layer in zip(chains, image.layers, strict=True)
               if layer.size > MiB}
        assert big <= set(committed)

    assert sorted(labels_of(containerd, "snapshots")) == sorted(chains)
    images = labels_of(containerd, "images")
    assert len(images) == 3 and images == labels_of(second_containerd, "images")
    assert labels_of(containerd, "content") == labels_of(second_containerd, "content")
    assert blob_files(containerd) == sorted(
        d.partition(":")[2] for d in labels_of(second_containerd, "content"))
    async with ContainerdClient(containerd.address) as client:
        assert await client.list_ingests() == []
    assert containerd.ctr("leases", "ls").splitlines()[1:] == []
    assert staged_files(containerd) == []
    await assert_same_layers(image, containerd, second_containerd, since)


# ----------------------------------------------------------------------------- fallback


def _fallbacks(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("nodeagent_prewarm_pull_fallbacks_total",
                                             {"reason": reason}) or 0.0


async def test_prewarm_falls_back_to_cri_and_says_why(tmp_path, sample_images, caplog):
    """On a containerd whose CRI plugin uses the native snapshotter, `auto` pulls through
    CRI (logged and counted); `fast` refuses, naming the reason."""
    native = PrivateContainerd(tmp_path / "native", snapshotter="native")
    native.start()
    pushed = sample_images["python"]
    caplog.set_level("INFO", logger="nodeagent.prewarm")
    before = _fallbacks("snapshotter")
    try:
        async with ContainerdClient(native.address) as client:
            auto = await PrewarmEngine(client, None, EngineConfig(pull_path="auto")).reconcile(
                desired(pushed.ref))
            forced = await PrewarmEngine(client, None, EngineConfig(
                pull_path="fast", max_retries=0)).reconcile(desired(sample_images["tools"].ref))
    finally:
        native.stop()
    assert auto.ok and auto.states[0].pull_path == "cri"
    assert _fallbacks("snapshotter") == before + 1
    said = [r.fields for r in caplog.records if "fast pull unavailable" in r.getMessage()]
    assert said and said[0]["reason"] == "snapshotter"
    assert 'the CRI plugin unpacks with the "native" snapshotter' in said[0]["detail"]
    assert not forced.ok
    assert "the fast path cannot run on this node" in forced.states[0].message
    assert '"native" snapshotter' in forced.states[0].message


async def test_fallback_reason_on_the_native_snapshotter(tmp_path):
    native = PrivateContainerd(tmp_path / "native", snapshotter="native")
    native.start()
    try:
        async with ContainerdClient(native.address) as client:
            with pytest.raises(FastPathUnavailable) as info:
                await check_fast_path(ContainerdStore(client))
    finally:
        native.stop()
    assert info.value.code == "snapshotter"
    assert '"native" snapshotter' in str(info.value)


async def test_through_a_host_root_as_the_daemonset_sees_it(registry, containerd, tmp_path):
    """In the DaemonSet containerd's paths are reached under the host's root as mounted
    in the container (NODEAGENT_HOST_ROOT, /proc/1/root there): here a bind mount of /."""
    host = tmp_path / "host"
    host.mkdir()
    subprocess.run(["mount", "--bind", "/", str(host)], check=True)
    try:
        image = build_featured("fast/hostroot", feature_layers()[:2], tmp_path / "blobs")
        (ref,) = push(registry, image)
        assert await fast_pull(containerd, ref, host_root=str(host)) == image.config_digest
    finally:
        subprocess.run(["umount", str(host)], check=True)
    assert len(labels_of(containerd, "snapshots")) == 2


async def test_fallback_reason_when_the_store_is_not_reachable(containerd, tmp_path):
    async with ContainerdClient(containerd.address) as client:
        with pytest.raises(FastPathUnavailable) as info:
            await check_fast_path(ContainerdStore(client), host_root=str(tmp_path / "nohost"))
    assert info.value.code == "not_reachable"
    assert "not reachable here" in str(info.value)



async def test_images_sharing_layers_pulled_at_once(sample_images, containerd):
    """One puller, every demo image at the same time: shared layers are unpacked once,
    every image ends up whole."""
    async with ContainerdClient(containerd.address) as client:
        setup = await check_fast_path(ContainerdStore(client))
        assert setup.staging.lock()
        puller = FastPuller(client, setup)
        try:
            ids = await asyncio.gather(*(puller.pull(parse_reference(p.ref), None, None)
                                         for p in sample_images))
        finally:
            await puller.close()
        for pushed, image_id in zip(sample_images, ids, strict=True):
            status = None
            for _ in range(50):
                status = await client.image_status(pushed.ref)
                if status is not None:
                    break
                await asyncio.sleep(0.1)
            assert status is not None and status.id == image_id
    chains = set()
    for pushed in sample_images:
        image = pushed.image
        if hasattr(image, "images"):
            image = image.for_platform("linux/amd64")
        chains |= set(chain_ids([layer.diff_id for layer in image.layers]))
    assert set(labels_of(containerd, "snapshots")) == chains
    assert list(Path(setup.staging.blob_dir).iterdir()) == []
