"""Fixtures for the model cache tests: moto S3 in server mode (real boto3 over HTTP) with
the throttling TCP proxy in front, the AWS environment pointing at the proxy through
AWS_ENDPOINT_URL_S3, and helpers to put objects the way real tools do."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from nodeagent.sandbox.throttle import ThrottleProxy
from support.aws_servers import MotoServer

MiB = 2**20
BUCKET = "models"
ACCESS_KEY = "AKIAMODELSTEST000001"
SECRET_KEY = "Zm9vYmFyU2VjcmV0S2V5Rm9yVGVzdHNPbmx5MTIzNDU2Nzg5"  # test-only


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[ThrottleProxy]:
    with ThrottleProxy(moto.url, record_requests=True) as p:
        yield p


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: MotoServer, proxy: ThrottleProxy,
            tmp_path: Path) -> None:
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_DEFAULT_REGION",
                "NODEAGENT_MODEL_CACHE_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    moto.reset()


@pytest.fixture
def s3(moto: MotoServer) -> Any:
    """A boto3 client straight to moto (set-up and checks; not through the proxy)."""
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    client.create_bucket(Bucket=BUCKET)
    return client


def data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def put_multipart(s3: Any, key: str, body: bytes, tmp: Path, part: int = 5 * MiB) -> None:
    """Upload like the AWS CLI does (s3transfer, equal parts but the last, CRC32)."""
    path = tmp / f"upload-{os.getpid()}-{abs(hash(key))}"
    path.write_bytes(body)
    s3.upload_file(str(path), BUCKET, key,
                   Config=TransferConfig(multipart_threshold=part, multipart_chunksize=part))
    path.unlink()


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def put_with_checksum(s3: Any, key: str, body: bytes, algorithm: str,
                      checksum_type: str | None = None, part: int = 5 * MiB) -> None:
    """Upload with an S3 checksum the way SDKs do: one PutObject, or (``checksum_type``
    given) a multipart upload of ``part``-sized parts, COMPOSITE or FULL_OBJECT, each part
    sent with its own checksum (boto3 computes CRC32C and CRC64NVME with awscrt)."""
    if checksum_type is None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body, ChecksumAlgorithm=algorithm)
        return
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm=algorithm,
                                        ChecksumType=checksum_type)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(body), part), 1):
        answer = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number,
                                Body=body[start:start + part], ChecksumAlgorithm=algorithm)
        parts.append({"ETag": answer["ETag"], "PartNumber": number,
                      f"Checksum{algorithm}": answer[f"Checksum{algorithm}"]})
    s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": parts})
