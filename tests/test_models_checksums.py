"""S3's modern checksums, end to end: objects uploaded by real boto3 to moto with CRC32C
and CRC64NVME (S3's default for new objects), single-part and multipart, FULL_OBJECT and
COMPOSITE, are verified by those checksums (awscrt computes them), and wrong bytes are
rejected by them."""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path

import pytest
from awscrt import checksums as crt
from support.models_fixtures import (
    BUCKET,
    MiB,
    aws_env,
    data,
    moto,
    proxy,
    put_multipart,
    put_with_checksum,
    s3,
    tree_files,
)

from nodeagent.models import ModelSpec, SyncOptions, sync
from nodeagent.models.checksums import Checksum, Expected, combine_ranges, expected_for
from nodeagent.models.plan import RANGE_BYTES
from nodeagent.sandbox.throttle import ThrottleProxy, corrupt

RANGE = 4 * MiB

# path -> (algorithm, checksum type or None for one PutObject, size, how it is verified)
OBJECTS = {
    "small-crc32c.json": ("CRC32C", None, 3000, "full CRC32C"),
    "small-crc64.json": ("CRC64NVME", None, 50_000, "full CRC64NVME"),
    "single-crc32c.bin": ("CRC32C", None, 9 * MiB + 1, "full CRC32C"),
    "single-crc64.bin": ("CRC64NVME", None, 9 * MiB + 3, "full CRC64NVME"),
    "parts-crc32c.bin": ("CRC32C", "COMPOSITE", 12 * MiB + 7, "composite CRC32C"),
    "parts-crc32c-full.bin": ("CRC32C", "FULL_OBJECT", 11 * MiB + 5, "full CRC32C"),
    "parts-crc64.bin": ("CRC64NVME", "FULL_OBJECT", 13 * MiB + 1, "full CRC64NVME"),
}


def manifest_checks(cache: Path, name: str) -> dict[str, str]:
    manifest = json.loads((cache / f"{name}.manifest.json").read_text())
    return {o["path"]: o["verified"] for o in manifest["objects"]}


def test_crc32c_and_crc64nvme_objects_are_verified_by_their_checksums(s3, tmp_path: Path
                                                                      ) -> None:
    bodies = {}
    for i, (path, (algorithm, kind, size, _how)) in enumerate(OBJECTS.items()):
        bodies[path] = data(size, 40 + i)
        put_with_checksum(s3, f"crc/{path}", bodies[path], algorithm, kind)
    head = s3.head_object(Bucket=BUCKET, Key="crc/parts-crc32c.bin", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == "COMPOSITE"
    cache = tmp_path / "cache"
    result = sync([ModelSpec("crc", f"s3://{BUCKET}/crc/")],
                  SyncOptions(cache_dir=str(cache), concurrency=6, range_bytes=RANGE))
    assert result.ok, result.models[0].error
    assert tree_files(cache / "crc") == bodies
    assert manifest_checks(cache, "crc") == {p: o[3] for p, o in OBJECTS.items()}


@pytest.mark.parametrize("path", ["single-crc64.bin", "parts-crc32c.bin", "small-crc64.json"])
def test_wrong_bytes_are_rejected_by_the_crc(s3, proxy: ThrottleProxy, tmp_path: Path,
                                             path: str) -> None:
    algorithm, kind, size, how = OBJECTS[path]
    put_with_checksum(s3, f"bad/{path}", data(size, 7), algorithm, kind)
    # Every response is corrupted from this offset on (the listing is shorter).
    proxy.inject(corrupt(after_bytes=min(MiB // 2, size // 2)), times=None)
    cache = tmp_path / "cache"
    result = sync([ModelSpec("bad", f"s3://{BUCKET}/bad/")],
                  SyncOptions(cache_dir=str(cache), concurrency=4, range_bytes=RANGE))
    error = result.models[0].error
    assert error is not None and error.reason == "corrupt"
    assert f"{how} is " in str(error) and "the source says" in str(error)
    assert not (cache / "bad").exists() and not (cache / "bad.manifest.json").exists()


def test_multipart_objects_within_one_default_range_are_verified_per_part(
        s3, proxy: ThrottleProxy, tmp_path: Path) -> None:
    """With the default range size (32 MiB) a multipart object smaller than one range is
    one GET, still checked against its composite checksum and its multipart ETag, not
    just its size (the AWS CLI uploads anything above 8 MiB in 8 MiB parts)."""
    crc32 = data(20 * MiB + 1, 50)
    put_multipart(s3, "mid/crc32.bin", crc32, tmp_path, part=8 * MiB)
    crc32c = data(17 * MiB, 51)
    put_with_checksum(s3, "mid/crc32c.bin", crc32c, "CRC32C", "COMPOSITE", part=8 * MiB)
    assert max(len(crc32), len(crc32c)) < RANGE_BYTES
    cache = tmp_path / "cache"
    result = sync([ModelSpec("mid", f"s3://{BUCKET}/mid/")], SyncOptions(cache_dir=str(cache)))
    assert result.ok, result.models[0].error
    gets = [t for m, t in proxy.requests() if m == "GET" and "list-type" not in t]
    assert sorted(gets) == ["/models/mid/crc32.bin", "/models/mid/crc32c.bin"]
    assert tree_files(cache / "mid") == {"crc32.bin": crc32, "crc32c.bin": crc32c}
    assert manifest_checks(cache, "mid") == {"crc32.bin": "composite CRC32",
                                             "crc32c.bin": "composite CRC32C"}


@pytest.mark.parametrize("algorithm,reference,width", [
    ("CRC32", zlib.crc32, 4), ("CRC32C", crt.crc32c, 4), ("CRC64NVME", crt.crc64nvme, 8)])
def test_crcs_of_parallel_ranges_combine_to_the_whole_objects(algorithm, reference,
                                                              width) -> None:
    body = data(3 * MiB + 12345, 60)
    cuts = [0, 1, 700_001, MiB, 2 * MiB + 3, len(body)]
    ranges = [(reference(body[a:b]), b - a) for a, b in itertools.pairwise(cuts)]
    assert combine_ranges(algorithm, ranges) == reference(body).to_bytes(width, "big")


def test_an_object_without_an_md5_etag_is_checked_by_its_crc() -> None:
    """SSE-KMS objects and multipart ones with an unknown layout have no usable ETag: their
    CRC64NVME or CRC32C is the check (it used to be the size alone without awscrt)."""
    for algorithm in ("CRC64NVME", "CRC32C"):
        checksum = Checksum(algorithm, "AAAAAAAAAAA=", "FULL_OBJECT")
        assert expected_for(10, "kms-etag", checksum, None) == Expected(
            "full", algorithm, "AAAAAAAAAAA=")
