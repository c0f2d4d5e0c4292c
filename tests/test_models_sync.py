"""Model cache sync against moto S3 (server mode, real boto3 over HTTP) behind the
throttling proxy: layout, verification, re-sync, atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from models_fixtures import (
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

from nodeagent.models import ModelSpec, SyncOptions, sync

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


def test_prefix_lands_complete_with_manifest(llm, tmp_path: Path) -> None:
    result = sync([ModelSpec("llm", f"s3://{BUCKET}/llm/", priority=5)], options(tmp_path))
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
