"""Clear errors from the model cache: no credentials, access denied (moto with IAM
enforcement on), missing bucket or prefix, each naming the model and the source; and
credentials never in errors, logs or metrics."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import boto3
import pytest
from moto import settings as moto_settings
from prometheus_client import generate_latest
from support.models_fixtures import ACCESS_KEY, BUCKET, SECRET_KEY, aws_env, moto, proxy, s3

from nodeagent import metrics
from nodeagent.log import JsonFormatter
from nodeagent.models import ModelSpec, SyncOptions, make_reporter, sync

SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN" + "x" * 60


@pytest.fixture
def captured_logs() -> io.StringIO:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nodeagent")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)  # later tests see the levels the CLI sets


def run(tmp_path: Path, source: str, name: str = "llm"):
    result = sync([ModelSpec(name, source)], SyncOptions(cache_dir=str(tmp_path / "cache")),
                  reporter=make_reporter(io.StringIO(), live=False))
    model = result.models[0]
    assert model.state == "failed" and model.error is not None
    return model.error


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET_KEY, ACCESS_KEY, SESSION_TOKEN):
            assert secret not in text


def test_no_credentials(monkeypatch, s3, tmp_path: Path, captured_logs) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    error = run(tmp_path, f"s3://{BUCKET}/llm/")
    assert error.reason == "no_credentials"
    assert str(error).startswith("model llm (s3://models/llm/): no AWS credentials found")
    assert '"reason": "no_credentials"' in captured_logs.getvalue()


def test_missing_bucket_and_empty_prefix(s3, tmp_path: Path) -> None:
    error = run(tmp_path, "s3://no-such-bucket/llm/")
    assert error.reason == "not_found" and "bucket 'no-such-bucket' does not exist" in str(
        error)
    error = run(tmp_path, f"s3://{BUCKET}/nothing-here/")
    assert error.reason == "not_found"
    assert "no objects below s3://models/nothing-here/" in str(error)
    error = run(tmp_path, f"s3://{BUCKET}/missing.bin", name="one")
    assert error.reason == "not_found" and "model one (s3://models/missing.bin)" in str(error)


def test_access_denied_names_model_source_and_permission(monkeypatch, moto, s3,
                                                         tmp_path: Path,
                                                         captured_logs) -> None:
    s3.put_object(Bucket=BUCKET, Key="llm/a.bin", Body=b"a")
    iam = boto3.client("iam", endpoint_url=moto.url, region_name="us-east-1",
                       aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    iam.create_user(UserName="no-s3")
    key = iam.create_access_key(UserName="no-s3")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # enforce IAM
    error = run(tmp_path, f"s3://{BUCKET}/llm/")
    assert error.reason == "access_denied"
    assert str(error).startswith("model llm (s3://models/llm/): access denied by S3 "
                                 "(AccessDenied) on ListObjectsV2")
    assert "s3:ListBucket" in str(error)
    for text in (str(error), captured_logs.getvalue()):
        assert key["SecretAccessKey"] not in text and key["AccessKeyId"] not in text


def test_secrets_never_in_errors_logs_or_metrics(monkeypatch, proxy, s3, tmp_path: Path,
                                                 captured_logs) -> None:
    """Wrong session credentials: S3 refuses them; nothing secret is shown anywhere."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    error = run(tmp_path, f"s3://{BUCKET}/llm/")
    assert error.reason == "access_denied"
    assert_no_secret(str(error), repr(error), captured_logs.getvalue(),
                     generate_latest(metrics.REGISTRY).decode())


def test_region_comes_from_aws_region_too(monkeypatch) -> None:
    from nodeagent.models.s3 import make_client

    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert make_client(2).meta.region_name == "eu-west-3"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert make_client(2).meta.region_name == "ap-south-1"
    assert make_client(2, region="us-west-2").meta.region_name == "us-west-2"


def test_endpoint_from_aws_endpoint_url_when_there_is_no_s3_one(monkeypatch, proxy, s3,
                                                                 tmp_path: Path) -> None:
    """AWS_ENDPOINT_URL alone is used (botocore's service-independent variable), and
    AWS_ENDPOINT_URL_S3 wins over it when both are set."""
    s3.put_object(Bucket=BUCKET, Key="llm/a.bin", Body=b"a")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    result = sync([ModelSpec("llm", f"s3://{BUCKET}/llm/")],
                  SyncOptions(cache_dir=str(tmp_path / "one")))
    assert result.ok and ("GET", "/models/llm/a.bin") in proxy.requests()
    proxy.reset_requests()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    result = sync([ModelSpec("llm", f"s3://{BUCKET}/llm/")],
                  SyncOptions(cache_dir=str(tmp_path / "two")))
    assert result.ok and ("GET", "/models/llm/a.bin") in proxy.requests()
