"""The model cache's OCI source against the real registry (docker-registry): ORAS-style
artifacts pushed over the registry API (nodeagent/sandbox/artifacts.py), fetched through
the throttling proxy where the wire matters (request counts, corrupted bytes)."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from pathlib import Path

import pytest

from nodeagent import metrics
from nodeagent.credentials.options import CredentialOptions
from nodeagent.models import ModelSpec, SyncOptions, sync
from nodeagent.sandbox.artifacts import ArtifactFile, push_artifact
from nodeagent.sandbox.throttle import ThrottleProxy, corrupt

MiB = 2**20
RANGE = 4 * MiB


def data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def options(tmp_path: Path, **kw) -> SyncOptions:
    return SyncOptions(cache_dir=str(tmp_path / "cache"), concurrency=6, range_bytes=RANGE,
                       **kw)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


FILES = {"config.json": b'{"arch": "bert"}', "tokenizer/vocab.txt": data(50_000, 1),
         "weights/model.safetensors": data(9 * MiB + 7, 2), "empty.txt": b""}


@pytest.fixture
def proxy(registry):
    with ThrottleProxy(registry.host, record_requests=True) as p:
        yield p


def _via(proxy: ThrottleProxy, ref: str, registry_host: str) -> str:
    host, port = proxy.address
    return "oci://" + ref.replace(registry_host, f"{host}:{port}")


def blob_gets(proxy: ThrottleProxy) -> list[str]:
    return [target for method, target in proxy.requests()
            if method == "GET" and "/blobs/" in target]


def test_artifact_lands_verified_then_resync_downloads_nothing(registry, proxy, tmp_path):
    art = push_artifact(registry.host, "models/bert", "v1", FILES)
    spec = ModelSpec("bert", _via(proxy, art.ref, registry.host), priority=3)
    result = sync([spec], options(tmp_path))
    assert result.ok, result.models[0].error
    cache = tmp_path / "cache"
    assert tree(cache / "bert") == FILES
    manifest = json.loads((cache / "bert.manifest.json").read_text())
    assert manifest["source"] == spec.source
    entries = {e["path"]: e for e in manifest["objects"]}
    assert {e["verified"] for e in entries.values()} == {"full SHA256"}
    assert entries["weights/model.safetensors"]["key"] == art.layers[2][1]
    # The 9 MiB layer came in ranged GETs (4 MiB ranges), every blob fetched once.
    assert len(blob_gets(proxy)) == 3 + 3  # three small layers whole, the big one in 3
    proxy.reset_requests()
    again = sync([spec], options(tmp_path))
    assert [m.state for m in again.models] == ["present"]
    assert blob_gets(proxy) == []  # only the manifest was read


def test_new_tag_replaces_the_model_reusing_unchanged_layers(registry, proxy, tmp_path):
    push_artifact(registry.host, "models/reuse", "v1", FILES)
    source = _via(proxy, f"{registry.host}/models/reuse:v1", registry.host)
    assert sync([ModelSpec("m", source)], options(tmp_path)).ok
    cache = tmp_path / "cache"
    weights_inode = (cache / "m/weights/model.safetensors").stat().st_ino
    changed = {**FILES, "config.json": b'{"arch": "bert", "v": 2}'}
    del changed["empty.txt"]
    push_artifact(registry.host, "models/reuse", "v1", changed)  # the tag moves
    proxy.reset_requests()
    result = sync([ModelSpec("m", source)], options(tmp_path))
    assert [m.state for m in result.models] == ["updated"]
    assert tree(cache / "m") == changed
    assert len(blob_gets(proxy)) == 1  # only the changed file
    assert (cache / "m/weights/model.safetensors").stat().st_ino == weights_inode  # linked


def test_pinned_by_digest(registry, tmp_path):
    art = push_artifact(registry.host, "models/pinned", "v1", {"a.bin": data(1000, 3)})
    result = sync([ModelSpec("p", "oci://" + art.digest_ref)], options(tmp_path))
    assert result.ok
    assert (tmp_path / "cache/p/a.bin").read_bytes() == data(1000, 3)


def test_a_corrupted_download_is_fetched_again(registry, proxy, tmp_path):
    body = data(6 * MiB, 4)
    art = push_artifact(registry.host, "models/flaky", "v1", {"w.bin": body})
    before = metrics.MODELS_CORRUPT_DOWNLOADS._value.get()
    proxy.inject(corrupt(after_bytes=200_000), times=1)  # the first connection lies once
    result = sync([ModelSpec("f", _via(proxy, art.ref, registry.host))], options(tmp_path))
    assert result.ok, result.models[0].error
    assert (tmp_path / "cache/f/w.bin").read_bytes() == body
    assert proxy.stats().faults_fired == 1
    assert metrics.MODELS_CORRUPT_DOWNLOADS._value.get() == before + 1


def test_a_registry_serving_wrong_bytes_is_rejected_and_nothing_is_published(
        fresh_registry, tmp_path):
    """The registry's stored blob is damaged (bad disk, broken mirror): the bytes served
    never match the layer digest, so every attempt fails and nothing is published."""
    good = data(6 * MiB, 5)
    art = push_artifact(fresh_registry.host, "models/damaged", "v1",
                        {"w.bin": good, "ok.txt": b"fine"})
    digest = art.layers[0][1].partition(":")[2]
    [blob] = fresh_registry.storage.glob(f"docker/registry/v2/blobs/sha256/*/{digest}/data")
    damaged = bytearray(good)
    damaged[3 * MiB] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    [model] = sync([ModelSpec("d", "oci://" + art.ref)], options(tmp_path)).models
    assert model.state == "failed" and model.error.reason == "corrupt"
    assert f"model d (oci://{art.ref}): the bytes received do not match" in str(model.error)
    assert "nothing was published" in str(model.error)
    assert not (tmp_path / "cache/d").exists()
    assert not (tmp_path / "cache/d.manifest.json").exists()


@pytest.mark.parametrize(("layers", "message"), [
    ([ArtifactFile("../escape.bin", b"x")], "leaves the model directory"),
    ([ArtifactFile("/etc/passwd", b"x")], "is titled '/etc/passwd', which is absolute"),
    ([ArtifactFile("a/../../b", b"x")], "leaves the model directory"),
    ([ArtifactFile(None, b"x")], "has no org.opencontainers.image.title annotation"),
    ([ArtifactFile("dir", b"x", annotations={"io.deis.oras.content.unpack": "true"})],
     "is a packed directory"),
    ([ArtifactFile("a", b"x"), ArtifactFile("a/b", b"y")], "'a' is also a directory of 'a/b'"),
])
def test_unsafe_or_unsupported_layers_are_refused(registry, tmp_path, layers, message):
    art = push_artifact(registry.host, "models/bad", "v1", layers)
    result = sync([ModelSpec("bad", "oci://" + art.ref)], options(tmp_path))
    [model] = result.models
    assert model.state == "failed" and model.error.reason == "invalid_source"
    assert message in str(model.error)
    assert str(model.error).startswith(f"model bad (oci://{art.ref}): ")
    cache = tmp_path / "cache"
    assert not (cache / "bad").exists() and not (tmp_path / "escape.bin").exists()


def test_unknown_tag_and_unreachable_registry(registry, tmp_path):
    missing = f"oci://{registry.host}/models/none:v9"
    [model] = sync([ModelSpec("x", missing)], options(tmp_path)).models
    assert model.error.reason == "not_found"
    assert "HTTP 404" in str(model.error) and "models/none" in str(model.error)
    [model] = sync([ModelSpec("y", "oci://127.0.0.1:9/models/none:v1")],
                   options(tmp_path)).models
    assert model.error.reason == "unreachable" and "cannot reach 127.0.0.1:9" in str(model.error)


def test_private_registry_credentials_and_their_absence(auth_registry, auth_credentials,
                                                        tmp_path, caplog):
    art = push_artifact(auth_registry.host, "models/private", "v1", {"w.bin": data(1000, 5)},
                        auth_credentials.username, auth_credentials.password)
    spec = ModelSpec("private", "oci://" + art.ref)
    caplog.set_level(logging.DEBUG)
    [model] = sync([spec], options(tmp_path)).models
    assert model.error.reason == "no_credentials"
    assert "requires credentials and none were found" in str(model.error)
    assert "docker config or kubelet credential provider" in str(model.error)

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"auths": {auth_registry.host: {
        "username": auth_credentials.username, "password": "not-the-password"}}}))
    [model] = sync([spec], options(tmp_path, credentials=CredentialOptions((wrong,)))).models
    assert model.error.reason == "access_denied" and "rejected" in str(model.error)

    good = tmp_path / "config.json"
    good.write_text(json.dumps({"auths": {auth_registry.host: {
        "username": auth_credentials.username, "password": auth_credentials.password}}}))
    result = sync([spec], options(tmp_path, credentials=CredentialOptions((good,))))
    assert result.ok, result.models[0].error
    assert (tmp_path / "cache/private/w.bin").read_bytes() == data(1000, 5)
    assert auth_credentials.password not in caplog.text
    assert "not-the-password" not in caplog.text


def test_registry_mirror_from_hosts_toml(registry, tmp_path):
    """containerd's hosts.toml maps a registry name to a mirror: the model comes from it."""
    push_artifact(registry.host, "models/mirrored", "v1", {"m.bin": data(2000, 6)})
    hosts = tmp_path / "certs.d"
    (hosts / "models.example.com").mkdir(parents=True)
    (hosts / "models.example.com/hosts.toml").write_text(
        f'server = "https://models.example.com"\n[host."http://{registry.host}"]\n'
        'capabilities = ["pull", "resolve"]\n')
    spec = ModelSpec("mirrored", "oci://models.example.com/models/mirrored:v1")
    result = sync([spec], options(tmp_path, hosts_dir=hosts))
    assert result.ok, result.models[0].error
    assert (tmp_path / "cache/mirrored/m.bin").read_bytes() == data(2000, 6)


def test_an_interrupted_download_resumes_without_fetching_finished_ranges(registry, proxy,
                                                                          tmp_path):
    body = data(12 * MiB, 8)
    art = push_artifact(registry.host, "models/resume", "v1",
                        {"w.bin": body, "config.json": b"{}"})
    spec = ModelSpec("r", _via(proxy, art.ref, registry.host))
    journal = tmp_path / "cache" / ".nodeagent" / "staging" / "r" / "journal.jsonl"
    stop = threading.Event()

    def stop_after_two_ranges() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) >= 3:
                stop.set()
            time.sleep(0.02)

    proxy.set_limits(None, 4 * MiB)
    watcher = threading.Thread(target=stop_after_two_ranges)
    watcher.start()
    first = sync([spec], SyncOptions(cache_dir=str(tmp_path / "cache"), concurrency=2,
                                     range_bytes=RANGE, stop=stop))
    watcher.join()
    assert first.models[0].error is not None and first.models[0].error.reason == "cancelled"
    assert not (tmp_path / "cache" / "r").exists()
    done = len(journal.read_text().splitlines()) - 1  # header, then one line per range
    assert 2 <= done < 4  # of config.json (one) and w.bin (three 4 MiB ranges)

    proxy.set_limits(None, None)
    proxy.reset_requests()
    again = sync([spec], options(tmp_path))
    assert again.ok and again.models[0].state == "updated"
    assert tree(tmp_path / "cache" / "r") == {"w.bin": body, "config.json": b"{}"}
    assert len(blob_gets(proxy)) == 4 - done  # only what the first run had not finished
