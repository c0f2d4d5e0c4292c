"""The sandbox itself: image builder, real registry push/pull, private containerd."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.images import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    build_image,
    build_index,
    sample_image_set,
)
from nodeagent.sandbox.layers import LayerSpec
from nodeagent.sandbox.local_registry import LocalRegistry
from nodeagent.sandbox.process import SandboxError
from nodeagent.sandbox.push import RegistryAuthError, push_image

KiB = 1024


# ------------------------------------------------------------------ builder (no daemons)


def test_layers_are_deterministic_across_caches(tmp_path: Path) -> None:
    spec = LayerSpec("t/base", 300 * KiB)
    a = build_image("t/a:1", [spec], cache_dir=tmp_path / "c1")
    b = build_image("t/a:1", [spec], cache_dir=tmp_path / "c2")
    assert a.layers[0].data == b.layers[0].data
    assert a.manifest_digest == b.manifest_digest
    assert a.layers[0].digest == "sha256:" + hashlib.sha256(a.layers[0].data).hexdigest()


def test_shared_base_layer_has_same_digest_and_other_layers_differ(tmp_path: Path) -> None:
    base = LayerSpec("t/base", 200 * KiB)
    one = build_image("t/one", [base, LayerSpec("t/one", 100 * KiB)], cache_dir=tmp_path)
    two = build_image("t/two", [base, LayerSpec("t/two", 100 * KiB)], cache_dir=tmp_path)
    assert one.layers[0].digest == two.layers[0].digest
    assert one.layers[1].digest != two.layers[1].digest
    assert one.manifest_digest != two.manifest_digest


def test_layer_is_valid_gzip_tar_with_diff_id_and_realistic_ratio(tmp_path: Path) -> None:
    image = build_image("t/r", [LayerSpec("t/ratio", 4096 * KiB)], cache_dir=tmp_path)
    layer = image.layers[0]
    raw = gzip.decompress(layer.data)
    assert layer.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
    assert len(files) > 10
    assert 1.8 <= len(raw) / layer.size <= 3.5  # like real layers, not all-zero or random
    assert abs(layer.size - 4096 * KiB) < 4096 * KiB * 0.1  # size is the compressed target


def test_config_lists_diff_ids_and_platform(tmp_path: Path) -> None:
    specs = [LayerSpec("t/l1", 50 * KiB), LayerSpec("t/l2", 50 * KiB)]
    image = build_image("t/cfg:2", specs, platform="linux/arm64", media="docker",
                        cache_dir=tmp_path)
    config = json.loads(image.config)
    manifest = json.loads(image.manifest)
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    assert (config["os"], config["architecture"]) == ("linux", "arm64")
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert [d["digest"] for d in manifest["layers"]] == [la.digest for la in image.layers]
    assert (image.repository, image.tag) == ("t/cfg", "2")


def test_index_names_both_platforms(tmp_path: Path) -> None:
    index = build_index("t/multi:1", {"linux/amd64": [LayerSpec("t/x", 20 * KiB)],
                                      "linux/arm64": [LayerSpec("t/y", 20 * KiB)]},
                        cache_dir=tmp_path)
    body = json.loads(index.manifest)
    assert body["mediaType"] == OCI_INDEX
    assert [m["platform"]["architecture"] for m in body["manifests"]] == ["amd64", "arm64"]
    assert index.for_platform("linux/arm64").manifest_digest == body["manifests"][1]["digest"]


def test_bad_input_names_the_item(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="bogus"):
        build_image("t/p", [LayerSpec("t/p", KiB)], platform="bogus", cache_dir=tmp_path)
    with pytest.raises(SandboxError, match="'nope'"):
        sample_image_set("nope")


def test_bench_set_scales_and_shares_base_layers(tmp_path: Path) -> None:
    images = sample_image_set("bench", total_size=8 << 20, cache_dir=tmp_path)
    assert len(images) == 8
    distinct = {la.digest: la.size for i in images for la in i.layers}
    assert 0.8 * (8 << 20) < sum(distinct.values()) < 1.25 * (8 << 20)
    bases = [i.layers[0].digest for i in images]
    assert len(set(bases)) < len(bases)  # some images share their base layer


# ------------------------------------------------------------------ registry + containerd


def test_push_then_pull_with_ctr(registry: LocalRegistry, containerd: PrivateContainerd,
                                 sample_images) -> None:
    pushed = sample_images["model-server"]
    out = containerd.ctr("images", "pull", "--plain-http", pushed.ref)
    assert "done" in out
    listing = containerd.ctr("images", "ls")
    assert pushed.ref in listing and pushed.digest in listing
    # Every layer is in the content store under the digest we computed.
    content = containerd.ctr("content", "ls", "-q")
    assert all(layer.digest in content for layer in pushed.image.layers)


def test_multiarch_index_pulls_the_requested_platform(containerd: PrivateContainerd,
                                                      sample_images) -> None:
    pushed = sample_images["tools"]
    containerd.ctr("images", "pull", "--plain-http", "--platform", "linux/arm64", pushed.ref)
    content = containerd.ctr("content", "ls", "-q")
    arm = pushed.image.for_platform("linux/arm64")
    amd = pushed.image.for_platform("linux/amd64")
    assert arm.layers[-1].digest in content
    assert amd.layers[-1].digest not in content


def test_skopeo_sees_pushed_manifest(sample_images) -> None:
    if subprocess.run(["which", "skopeo"], capture_output=True).returncode:
        pytest.skip("'skopeo' not installed (Debian package 'skopeo')")
    pushed = sample_images["python"]
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                          f"docker://{pushed.ref}"], capture_output=True, check=True)
    assert "sha256:" + hashlib.sha256(out.stdout).hexdigest() == pushed.digest


def test_push_skips_blobs_the_registry_has(registry: LocalRegistry, image_pusher,
                                           tmp_path: Path) -> None:
    base = LayerSpec("t/skip-base", 64 * KiB)
    first = image_pusher("t/skip-one", [32 * KiB], shared=[base])
    second = image_pusher("t/skip-two", [32 * KiB], shared=[base])
    assert first.image.layers[0].digest == second.image.layers[0].digest
    # Uploading the base again reports "already there" (HEAD hit), not a new upload.
    from nodeagent.sandbox.push import RegistryPusher, _Blob

    pusher = RegistryPusher(registry.host)
    pusher.login()
    layer = first.image.layers[0]
    assert pusher.upload_blob("t/skip-one", _Blob(layer.digest, layer.size, layer.path)) is False


def test_auth_registry_rejects_wrong_and_missing_password(auth_registry: LocalRegistry,
                                                          auth_credentials, tmp_path: Path,
                                                          containerd: PrivateContainerd) -> None:
    image = build_image("t/private:1", [LayerSpec("t/private", 32 * KiB)], cache_dir=tmp_path)
    with pytest.raises(RegistryAuthError, match="rejected user 'tester'") as wrong:
        push_image(auth_registry.host, image, auth_credentials.username, "wrong-password")
    assert "wrong-password" not in str(wrong.value)
    with pytest.raises(RegistryAuthError, match="requires credentials"):
        push_image(auth_registry.host, image)
    ref = push_image(auth_registry.host, image, auth_credentials.username,
                     auth_credentials.password)
    with pytest.raises(SandboxError, match=r"401|unauthorized|authorization"):
        containerd.ctr("images", "pull", "--plain-http", "--user", "tester:wrong-password", ref)
    with pytest.raises(SandboxError):
        containerd.ctr("images", "pull", "--plain-http", ref)
    user = f"{auth_credentials.username}:{auth_credentials.password}"
    assert "done" in containerd.ctr("images", "pull", "--plain-http", "--user", user, ref)


def test_containerd_restart_and_kill_keep_content(containerd: PrivateContainerd,
                                                  sample_images) -> None:
    pushed = sample_images["trainer"]
    containerd.ctr("images", "pull", "--plain-http", pushed.ref)
    containerd.restart()
    assert pushed.ref in containerd.ctr("images", "ls", "-q")
    containerd.kill()
    with pytest.raises(SandboxError):
        containerd.ctr("version")
    containerd.start()
    assert pushed.ref in containerd.ctr("images", "ls", "-q")
    assert pushed.image.layers[-1].digest in containerd.ctr("content", "ls", "-q")


def test_two_private_containerds_coexist(containerd: PrivateContainerd, tmp_path: Path,
                                         sample_images) -> None:
    with PrivateContainerd(tmp_path / "second") as other:
        assert other.address != containerd.address
        containerd.ctr("images", "pull", "--plain-http", sample_images["python"].ref)
        assert sample_images["python"].ref not in other.ctr("images", "ls", "-q")
    config = containerd.config_file.read_text()
    assert '"/var/lib/containerd' not in config and '"/run/containerd' not in config


def test_registry_can_go_down_and_come_back_on_same_port(fresh_registry: LocalRegistry,
                                                         tmp_path: Path) -> None:
    image = build_image("t/updown", [LayerSpec("t/updown", 16 * KiB)], cache_dir=tmp_path)
    host = fresh_registry.host
    push_image(host, image)
    fresh_registry.stop()
    with pytest.raises(SandboxError, match="unreachable"):
        push_image(host, image)
    fresh_registry.start()
    assert fresh_registry.host == host
    assert push_image(host, image) == f"{host}/t/updown:latest"


def test_hosts_toml_maps_a_name_to_the_local_registry(containerd: PrivateContainerd,
                                                      registry: LocalRegistry,
                                                      sample_images) -> None:
    containerd.map_registry("registry.example.internal", f"http://{registry.host}")
    ref = "registry.example.internal/nodeagent-demo/python:3.11"
    containerd.ctr("images", "pull", "--hosts-dir", str(containerd.config_path), ref)
    assert ref in containerd.ctr("images", "ls", "-q")


def test_missing_binary_error_names_package(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="'docker-registry'"):
        LocalRegistry(tmp_path).start()


async def test_cri_pull_uses_private_hosts_dir_and_auth(containerd: PrivateContainerd,
                                                        registry: LocalRegistry,
                                                        auth_registry: LocalRegistry,
                                                        auth_credentials, sample_images,
                                                        auth_sample_images) -> None:
    """The CRI plugin (what kubelet and nodeagent use) reads our config_path and auth."""
    from nodeagent.containerd.client import AuthConfig, ContainerdClient, ImagePullError

    containerd.map_registry("mirror.example.internal", f"http://{registry.host}")
    private = auth_sample_images["trainer"]
    async with ContainerdClient(containerd.address) as client:
        await client.pull_image("mirror.example.internal/nodeagent-demo/python:3.11")
        with pytest.raises(ImagePullError) as denied:
            await client.pull_image(private.ref, AuthConfig(username="tester",
                                                            password="wrong-password"))
        assert denied.value.reason == "auth"
        good = AuthConfig(username=auth_credentials.username, password=auth_credentials.password)
        await client.pull_image(private.ref, good)
        tags = {t for image in await client.list_images() for t in image.repo_tags}
    assert {"mirror.example.internal/nodeagent-demo/python:3.11", private.ref} <= tags


def test_registry_port_taken_while_down_fails_naming_log_then_recovers(
    fresh_registry: LocalRegistry,
) -> None:
    import socket

    port = fresh_registry.port
    fresh_registry.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(SandboxError, match="address already in use") as taken:
            fresh_registry.start()
        assert str(fresh_registry.log_file) in str(taken.value)
    fresh_registry.start()
    assert fresh_registry.port == port


def test_registry_first_start_picks_another_port_if_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from nodeagent.sandbox import local_registry as registry_module

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = registry_module.free_port
        monkeypatch.setattr(registry_module, "free_port", lambda: next(ports, None) or real())
        with LocalRegistry(tmp_path / "reg") as reg:
            assert reg.port != taken


def test_docker_v2_manifest_and_shared_layers_pull(containerd: PrivateContainerd,
                                                   image_pusher) -> None:
    base = LayerSpec("t/docker-base", 96 * KiB)
    first = image_pusher("t/docker-one", [48 * KiB], shared=[base], media="docker")
    second = image_pusher("t/docker-two", [48 * KiB], shared=[base], media="docker")
    assert first.image.media_type == DOCKER_MANIFEST
    for pushed in (first, second):
        containerd.ctr("images", "pull", "--plain-http", pushed.ref)
    listing = containerd.ctr("images", "ls")
    assert first.digest in listing and second.digest in listing


async def test_bearer_registry_push_and_cri_pull_with_tokens(bearer_registry: LocalRegistry,
                                                             auth_credentials, tmp_path: Path,
                                                             containerd: PrivateContainerd
                                                             ) -> None:
    from nodeagent.containerd.client import AuthConfig, ContainerdClient, ImagePullError

    tokens = bearer_registry.token_server
    assert tokens is not None
    image = build_image("t/bearer:1", [LayerSpec("t/bearer", 32 * KiB)], cache_dir=tmp_path)
    with pytest.raises(RegistryAuthError, match="refused user 'tester'"):
        push_image(bearer_registry.host, image, auth_credentials.username, "wrong-password")
    issued = tokens.issued
    ref = push_image(bearer_registry.host, image, auth_credentials.username,
                     auth_credentials.password)
    assert tokens.issued > issued  # the push went through the token service
    async with ContainerdClient(containerd.address) as client:
        with pytest.raises(ImagePullError) as denied:
            await client.pull_image(ref, AuthConfig(username="tester", password="wrong"))
        assert denied.value.reason == "auth"
        issued = tokens.issued
        await client.pull_image(ref, AuthConfig(username=auth_credentials.username,
                                                password=auth_credentials.password))
        assert tokens.issued > issued
        assert await client.image_status(ref) is not None


def test_daemons_die_with_a_killed_parent(tmp_path: Path) -> None:
    """A pytest run killed mid-test (timeout, Ctrl-C twice) must not leave daemons behind."""
    import os
    import signal
    import sys
    import time

    if os.geteuid() != 0:
        pytest.skip("private containerd needs root")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nodeagent.sandbox import LocalRegistry, PrivateContainerd\n"
        f"r = LocalRegistry(Path({str(tmp_path / 'r')!r})); r.start()\n"
        f"c = PrivateContainerd(Path({str(tmp_path / 'c')!r})); c.start()\n"
        "print(r.pid, c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)
    survivors = [pid for pid in pids if _running(pid)]
    for pid in survivors:  # don't leave them behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
