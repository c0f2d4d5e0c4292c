"""Model specs, the cache dir (default, override, validation) and the pure plan parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeagent.api.model_source import parse_s3_url
from nodeagent.errors import UsageError
from nodeagent.models.checksums import Checksum, Expected, checksum_type, expected_for
from nodeagent.models.layout import (
    CACHE_DIR_ENV,
    FALLBACK_CACHE_DIR,
    disks_mount,
    resolve_cache_dir,
    validate_cache_dir,
)
from nodeagent.models.plan import diff, split
from nodeagent.models.source import RemoteObject, safe_relative_path
from nodeagent.models.spec import ModelSpec

MiB = 2**20


@pytest.mark.parametrize("name", ["Llama", "-a", "a-", "a_b", "a.b", "x" * 64, ""])
def test_model_names_are_dns_labels(name: str) -> None:
    with pytest.raises(UsageError, match="DNS-1123 label"):
        ModelSpec(name, "s3://bucket/p/")


@pytest.mark.parametrize("source,message", [
    ("https://x/y", "not supported"), ("s3://B/x/", "not a valid S3 bucket name"),
    ("s3://ab/x/", "not a valid S3 bucket name"), ("s3://bucket/a/..", "ends in"),
    ("s3://bucket//x", "starts with '/'")])
def test_bad_sources_name_the_model(source: str, message: str) -> None:
    with pytest.raises(UsageError, match=f"model llm: source .*{message}"):
        ModelSpec("llm", source)


def test_s3_urls() -> None:
    assert parse_s3_url("s3://models/llama/").is_prefix
    assert parse_s3_url("s3://models").key == "" and parse_s3_url("s3://models").is_prefix
    one = parse_s3_url("s3://models/llama/model.safetensors")
    assert not one.is_prefix and one.key == "llama/model.safetensors"


def test_cache_dir_explicit_then_env_then_disks_mount_then_fallback(tmp_path: Path) -> None:
    explicit = str(tmp_path / "x")
    assert resolve_cache_dir(explicit, env={CACHE_DIR_ENV: "/nope"}) == Path(explicit)
    assert resolve_cache_dir(None, env={CACHE_DIR_ENV: str(tmp_path / "e")}) == (
        tmp_path / "e")
    mnt = str(tmp_path / "mnt0")
    assert resolve_cache_dir(None, env={}, mount_finder=lambda: mnt) == Path(mnt) / "models"
    assert resolve_cache_dir(None, env={}, mount_finder=lambda: None) == Path(
        FALLBACK_CACHE_DIR)


def test_disks_mount_from_the_setup_record(tmp_path: Path) -> None:
    record = tmp_path / "disks-setup.json"
    record.write_text(json.dumps({"steps": [
        {"action": "MountVolume", "volume": 0, "mountpoint": "/data/nvme/0"}]}))
    mounted = {"/data/nvme/0"}
    assert disks_mount(str(record), is_mount=mounted.__contains__) == "/data/nvme/0"
    assert disks_mount(str(record), is_mount={"/mnt/k8s-disks/0"}.__contains__) == (
        "/mnt/k8s-disks/0")
    assert disks_mount(str(tmp_path / "none"), is_mount=lambda p: False) is None


@pytest.mark.parametrize("path", ["relative/dir", "/", "/proc/x", "/sys", "/etc/models",
                                  "/usr/local/models", "/var/lib/containerd/models",
                                  "/var/lib/kubelet", "/dev/shm/m", "/boot", "/run/models"])
def test_system_or_relative_cache_dirs_are_refused(path: str) -> None:
    with pytest.raises(UsageError, match=r"--cache-dir"):
        validate_cache_dir(path, "--cache-dir")


def test_inside_containerd_root_only_its_own_directory() -> None:
    """A data volume mounted at containerd's root (snapshot builders): the cache may sit
    in its own directory there, nowhere else in containerd's tree."""
    assert str(validate_cache_dir("/var/lib/containerd/nodeagent-models/", "x")) == (
        "/var/lib/containerd/nodeagent-models")
    with pytest.raises(UsageError, match="inside containerd's root only "
                                         "/var/lib/containerd/nodeagent-models"):
        validate_cache_dir("/var/lib/containerd/nodeagent-models/../io.containerd.x", "x")


def test_cache_dir_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        validate_cache_dir(str(tmp_path / "file" / "models"), "--cache-dir")
    assert validate_cache_dir(str(tmp_path / "new" / "models"), "x") == (
        tmp_path / "new" / "models")


@pytest.mark.parametrize("key", ["a//b", "../x", "a/./b", "a/../../b", ""])
def test_unsafe_keys(key: str) -> None:
    assert safe_relative_path(key) is None


def test_diff_reuses_only_unchanged_present_files() -> None:
    old = {"a": RemoteObject("a", "p/a", 5, "e1"), "b": RemoteObject("b", "p/b", 5, "e2"),
           "gone": RemoteObject("gone", "p/gone", 1, "e3")}
    listing = [RemoteObject("a", "p/a", 5, "e1"), RemoteObject("b", "p/b", 5, "e2-new"),
               RemoteObject("c", "p/c", 9, "e4")]
    d = diff(listing, old, present={"a": 5, "b": 5})
    assert [o.path for o in d.reuse] == ["a"]
    assert [o.path for o in d.fetch] == ["b", "c"] and d.removed == ("gone",)
    assert [o.path for o in diff(listing, old, present={}).fetch] == ["a", "b", "c"]
    assert diff(listing[:1], {"a": old["a"]}, {"a": 5}).up_to_date


def test_ranges_follow_upload_parts_when_verified_per_part() -> None:
    obj = RemoteObject("w", "k", 23 * MiB, "x-5")
    parts = (5 * MiB,) * 4 + (3 * MiB,)
    per_part = Expected("composite", "CRC32", "v", parts)
    assert [(r.start, r.length, r.parts) for r in split(obj, per_part, 8 * MiB)] == [
        (0, 10 * MiB, (5 * MiB, 5 * MiB)), (10 * MiB, 10 * MiB, (5 * MiB, 5 * MiB)),
        (20 * MiB, 3 * MiB, (3 * MiB,))]
    fixed = split(obj, Expected("full", "CRC32", "v"), 8 * MiB)
    assert [r.length for r in fixed] == [8 * MiB, 8 * MiB, 7 * MiB]


def test_which_check_an_object_gets() -> None:
    md5 = "0" * 32
    crc = Checksum("CRC32", "AAAAAA==", "FULL_OBJECT")
    assert expected_for(10, md5, crc, None).method == "full"
    composite = Checksum("CRC32", "AAAAAA==", "COMPOSITE")
    assert expected_for(10, f"{md5}-2", composite, (5, 5)).method == "composite"
    assert expected_for(10, f"{md5}-2", composite, None).method == "size"
    assert expected_for(10, f"{md5}-2", None, (5, 5)).method == "multipart-md5"
    assert expected_for(10, md5, None, None).method == "md5"
    assert expected_for(10, "kms-etag", None, None).method == "size"
    assert checksum_type("CRC32", "x", None, f"{md5}-3") == "COMPOSITE"
    assert checksum_type("CRC64NVME", "x", None, f"{md5}-3") == "FULL_OBJECT"
    assert checksum_type("SHA256", "x-3", None, md5) == "COMPOSITE"
    assert checksum_type("SHA256", "x", "FULL_OBJECT", f"{md5}-3") == "FULL_OBJECT"
