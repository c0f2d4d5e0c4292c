"""Model cache sync against moto S3 (server mode, real boto3 over HTTP) behind the
throttling proxy: layout, verification, re-sync, atomic replacement."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import boto3
import pytest
from support.models_fixtures import (
    BUCKET,
    MiB,
    aws_env,
    data,
    moto,
    proxy,
    put_multipart,
    s3,
    tree_files,
)

from nodeagent import metrics
from nodeagent.models import ModelSpec, SyncOptions, sync
from nodeagent.models.plan import RANGE_BYTES
from nodeagent.sandbox.throttle import ThrottleProxy, corrupt, pause

RANGE = 4 * MiB  # small ranges so small test objects still take several ranged GETs


def options(tmp_path: Path, **kw) -> SyncOptions:
    return SyncOptions(cache_dir=str(tmp_path / "cache"), concurrency=6, range_bytes=RANGE,
                       **kw)


@pytest.fixture
def llm(s3, tmp_path: Path) -> dict[str, bytes]:
    """A prefix with nested keys, two multipart shards and many small files."""
    files = {"config.json": b'{"arch": "llama"}', "tokenizer/vocab.txt": data(70_000, 2),
             "weights/model-00001.safetensors": data(13 * MiB + 5, 3),
             "weights/model-00002.safetensors": data(11 * MiB, 4)}
    files.update({f"extra/{i:02d}.bin": data(3000 + i, 10 + i) for i in range(30)})
    for path, body in files.items():
        if len(body) > 5 * MiB:
            put_multipart(s3, f"llm/{path}", body, tmp_path)
        else:
            s3.put_object(Bucket=BUCKET, Key=f"llm/{path}", Body=body)
    s3.put_object(Bucket=BUCKET, Key="other/not-this.bin", Body=b"x")
    return files


@pytest.mark.parametrize("durable", [True, False])
def test_prefix_lands_complete_with_manifest(llm, tmp_path: Path, durable: bool) -> None:
    result = sync([ModelSpec("llm", f"s3://{BUCKET}/llm/", priority=5)],
                  options(tmp_path, durable=durable))
    assert result.ok, result.models[0].error
    cache = tmp_path / "cache"
    assert tree_files(cache / "llm") == llm
    manifest = json.loads((cache / "llm.manifest.json").read_text())
    assert manifest["source"] == "s3://models/llm/" and manifest["priority"] == 5
    by_path = {o["path"]: o for o in manifest["objects"]}
    assert set(by_path) == set(llm)
    shard = by_path["weights/model-00001.safetensors"]
    assert shard["verified"] == "composite CRC32" and shard["etag"].endswith("-3")
    assert by_path["config.json"]["verified"] in ("full CRC32", "md5 MD5")
    assert not list((cache / ".nodeagent" / "staging").iterdir())


def object_gets(proxy: ThrottleProxy, key: str) -> int:
    return sum(1 for method, target in proxy.requests()
               if method == "GET" and target.split("?")[0] == f"/{BUCKET}/{key}")


def test_unchanged_resync_downloads_nothing(llm, proxy: ThrottleProxy, tmp_path: Path) -> None:
    spec = ModelSpec("llm", f"s3://{BUCKET}/llm/")
    assert sync([spec], options(tmp_path)).ok
    inode = (tmp_path / "cache" / "llm").stat().st_ino
    proxy.reset_requests()
    result = sync([spec], options(tmp_path))
    assert result.ok and result.models[0].state == "present"
    assert result.models[0].downloaded_bytes == 0
    # One listing and nothing else: no HEAD, no GET of any object.
    assert [m for m, t in proxy.requests()] == ["GET"]
    assert "list-type=2" in proxy.requests()[0][1]
    assert (tmp_path / "cache" / "llm").stat().st_ino == inode


def test_changed_object_is_replaced_atomically(llm, s3, proxy: ThrottleProxy,
                                               tmp_path: Path) -> None:
    spec = ModelSpec("llm", f"s3://{BUCKET}/llm/")
    s3.put_object(Bucket=BUCKET, Key="llm/a.txt", Body=b"v1")
    s3.put_object(Bucket=BUCKET, Key="llm/b.txt", Body=b"v1")
    assert sync([spec], options(tmp_path)).ok
    tree = tmp_path / "cache" / "llm"
    reused_inode = (tree / "weights/model-00002.safetensors").stat().st_ino
    old_reader = open(tree / "weights/model-00001.safetensors", "rb")  # noqa: SIM115
    new_shard = data(13 * MiB + 5, 99)
    put_multipart(s3, "llm/weights/model-00001.safetensors", new_shard, tmp_path)
    s3.put_object(Bucket=BUCKET, Key="llm/a.txt", Body=b"v2")
    s3.put_object(Bucket=BUCKET, Key="llm/b.txt", Body=b"v2")
    s3.delete_object(Bucket=BUCKET, Key="llm/extra/00.bin")

    seen, stop = [], threading.Event()

    def read_at(dir_fd: int, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
        try:
            return os.read(fd, 10)
        finally:
            os.close(fd)

    def reader() -> None:  # a reader holding the model dir sees one version, whole
        while not stop.is_set():
            fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)  # never missing, not even briefly
            try:
                seen.append((read_at(fd, "a.txt"), read_at(fd, "b.txt")))
            finally:
                os.close(fd)

    proxy.reset_requests()
    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        result = sync([spec], options(tmp_path))
    finally:
        stop.set()
        watcher.join()
    assert result.ok and result.models[0].state == "updated"
    expected = {**llm, "a.txt": b"v2", "b.txt": b"v2",
                "weights/model-00001.safetensors": new_shard}
    del expected["extra/00.bin"]
    assert tree_files(tree) == expected
    assert set(seen) <= {(b"v1", b"v1"), (b"v2", b"v2")} and (b"v2", b"v2") in seen
    # Only what changed was downloaded; the unchanged shard is the same file (hard link).
    assert object_gets(proxy, "llm/weights/model-00002.safetensors") == 0
    assert object_gets(proxy, "llm/config.json") == 0
    assert object_gets(proxy, "llm/weights/model-00001.safetensors") == 3  # its 3 parts
    assert (tree / "weights/model-00002.safetensors").stat().st_ino == reused_inode
    # The reader of the old version still reads the old bytes.
    assert old_reader.read() == llm["weights/model-00001.safetensors"]
    old_reader.close()


def test_wrong_bytes_are_rejected_and_nothing_is_published(llm, proxy: ThrottleProxy,
                                                           tmp_path: Path) -> None:
    proxy.inject(corrupt(after_bytes=2 * MiB), times=None)  # every connection, every time
    result = sync([ModelSpec("llm", f"s3://{BUCKET}/llm/")], options(tmp_path))
    failed = result.models[0]
    assert failed.state == "failed" and failed.error is not None
    assert failed.error.reason == "corrupt"
    assert "model llm (s3://models/llm/)" in str(failed.error)
    assert "nothing was published" in str(failed.error)
    cache = tmp_path / "cache"
    assert not (cache / "llm").exists() and not (cache / "llm.manifest.json").exists()


def test_a_corrupted_download_is_fetched_again(s3, proxy: ThrottleProxy,
                                               tmp_path: Path) -> None:
    body = data(13 * MiB, 7)
    put_multipart(s3, "one/shard.bin", body, tmp_path)
    before = metrics.MODELS_CORRUPT_DOWNLOADS._value.get()
    # moto answers one request per connection: list, HEAD, HEAD part 1, then range GETs;
    # the first five connections are corrupted at 1 MiB, i.e. two of the range GETs.
    proxy.inject(corrupt(after_bytes=MiB), times=5)
    result = sync([ModelSpec("one", f"s3://{BUCKET}/one/")], options(tmp_path))
    assert result.ok
    assert (tmp_path / "cache" / "one" / "shard.bin").read_bytes() == body
    assert proxy.stats().faults_fired == 2
    assert metrics.MODELS_CORRUPT_DOWNLOADS._value.get() == before + 1  # one object, again


def test_objects_without_checksums_are_verified_by_their_etags(moto, tmp_path: Path) -> None:
    """Uploads without S3 checksums (older tools): a big single-part object is checked
    by its MD5 ETag (read back, ranges arrive out of order), a multipart one by the MD5
    of its parts' MD5s, with the part layout learned from HEAD ?partNumber=1."""
    from botocore.config import Config

    plain = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                         config=Config(request_checksum_calculation="when_required"))
    plain.create_bucket(Bucket=BUCKET)
    single, multi = data(9 * MiB + 1, 21), data(12 * MiB + 7, 22)
    plain.put_object(Bucket=BUCKET, Key="old/single.bin", Body=single)
    put_multipart(plain, "old/multi.bin", multi, tmp_path)
    result = sync([ModelSpec("old", f"s3://{BUCKET}/old/")], options(tmp_path))
    assert result.ok, result.models[0].error
    manifest = json.loads((tmp_path / "cache" / "old.manifest.json").read_text())
    how = {o["path"]: o["verified"] for o in manifest["objects"]}
    assert how == {"single.bin": "md5 MD5", "multi.bin": "multipart-md5 MD5"}
    assert tree_files(tmp_path / "cache" / "old") == {"single.bin": single, "multi.bin": multi}


def test_an_object_changing_mid_download_fails_cleanly(s3, proxy: ThrottleProxy,
                                                       tmp_path: Path) -> None:
    put_multipart(s3, "moving/w.bin", data(20 * MiB, 8), tmp_path)
    proxy.inject(pause(after_bytes=MiB, seconds=1.0), times=None)

    def overwrite_once_the_first_range_is_asked_for() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ("GET", "/models/moving/w.bin") not in (
                proxy.requests()):
            time.sleep(0.01)
        s3.put_object(Bucket=BUCKET, Key="moving/w.bin", Body=b"new")

    overwrite = threading.Thread(target=overwrite_once_the_first_range_is_asked_for)
    overwrite.start()
    result = sync([ModelSpec("moving", f"s3://{BUCKET}/moving/")],
                  SyncOptions(cache_dir=str(tmp_path / "cache"), concurrency=1,
                              range_bytes=RANGE))
    overwrite.join()
    error = result.models[0].error
    assert error is not None and error.reason == "source_changed"
    assert "an object changed while it was downloaded" in str(error)
    assert not (tmp_path / "cache" / "moving").exists()


def test_an_object_larger_than_the_default_range_takes_several_ranged_gets(
        s3, proxy: ThrottleProxy, tmp_path: Path) -> None:
    """Default options (32 MiB ranges): a 40 MiB object is two ranged GETs, hashed as
    they arrive and combined (boto3 sends CRC32 with PutObject)."""
    body = data(RANGE_BYTES + 8 * MiB + 3, 30)
    s3.put_object(Bucket=BUCKET, Key="wide/w.bin", Body=body)
    result = sync([ModelSpec("wide", f"s3://{BUCKET}/wide/")],
                  SyncOptions(cache_dir=str(tmp_path / "cache")))
    assert result.ok, result.models[0].error
    assert (tmp_path / "cache" / "wide" / "w.bin").read_bytes() == body
    gets = [t for m, t in proxy.requests() if m == "GET" and "list-type" not in t]
    assert gets == ["/models/wide/w.bin"] * 2
    manifest = json.loads((tmp_path / "cache" / "wide.manifest.json").read_text())
    assert manifest["objects"][0]["verified"] == "full CRC32"


def test_s3_and_oci_models_in_one_sync_are_ordered_by_priority(s3, registry,
                                                               tmp_path: Path) -> None:
    """One pool serves both kinds of source, highest priority first whatever the kind."""
    from nodeagent.sandbox.artifacts import push_artifact

    s3.put_object(Bucket=BUCKET, Key="mid/m.bin", Body=data(300_000, 31))
    low = push_artifact(registry.host, "models/low", "v1", {"l.bin": b"low"})
    high = push_artifact(registry.host, "models/high", "v1", {"h.bin": data(200_000, 32)})
    seen: list[str] = []

    class Recorder:
        def update(self, models):
            pass

        def event(self, model):
            if model.state == "present":
                seen.append(model.name)

        def close(self):
            pass

    specs = [ModelSpec("low", "oci://" + low.ref, priority=1),
             ModelSpec("mid", f"s3://{BUCKET}/mid/", priority=5),
             ModelSpec("high", "oci://" + high.ref, priority=9)]
    result = sync(specs, SyncOptions(cache_dir=str(tmp_path / "cache"), concurrency=1),
                  reporter=Recorder())
    assert result.ok, [m.error for m in result.models]
    assert seen == ["high", "mid", "low"]
    cache = tmp_path / "cache"
    assert (cache / "mid" / "m.bin").read_bytes() == data(300_000, 31)
    assert (cache / "high" / "h.bin").read_bytes() == data(200_000, 32)
