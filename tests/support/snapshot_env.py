"""Fixtures and helpers of the snapshot tests against moto in server mode (over HTTP,
through the recording and throttling proxy of aws_servers.py), and a "node": a private
containerd whose root is on a loop-mounted XFS, standing in for the data volume (a loop
device is not EBS, so CLI runs pass --volume-id of a moto volume; the freeze is real).

A test module takes the fixtures by assignment (``moto = snapshot_env.moto``): pytest
finds them, and no import is shadowed by the test arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.ec2 import AwsClients, AwsOptions
from support.aws_servers import REGION, AwsProxy, MotoServer
from support.loopfs import LoopMount, loop_xfs

INSTANCE = "i-0b1d2e3f4a5b6c7d8"
AWS_ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN",
                   "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_REGION")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(moto: MotoServer) -> Iterator[AwsProxy]:
    p = AwsProxy(moto.url)
    yield p
    p.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, moto: MotoServer, proxy: AwsProxy,
            tmp_path: Path) -> None:
    isolate_aws(monkeypatch, moto, proxy, tmp_path)


def isolate_aws(monkeypatch: pytest.MonkeyPatch, moto: MotoServer, proxy: AwsProxy,
                tmp_path: Path) -> None:
    """Test credentials and region only (no profile, config file, IMDS or endpoint from
    the machine), and a fresh moto and proxy."""
    for key in AWS_ENV_CLEARED:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    moto.reset()
    proxy.reset()


@pytest.fixture
def direct(moto: MotoServer) -> dict[str, object]:
    """boto3 clients straight to moto, for set-up and checks (not through the proxy)."""
    return {
        "ec2": boto3.client("ec2", endpoint_url=moto.url, region_name=REGION),
        "ssm": boto3.client("ssm", endpoint_url=moto.url, region_name=REGION),
    }


@pytest.fixture
def aws(proxy: AwsProxy) -> AwsClients:
    return AwsClients(AwsOptions(endpoint_url=proxy.url, max_attempts=5))


@pytest.fixture
def volume_id(direct: dict) -> str:
    return direct["ec2"].create_volume(Size=50, AvailabilityZone=f"{REGION}a")["VolumeId"]


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[LoopMount]:
    with loop_xfs(tmp_path) as mount:
        yield mount


@pytest.fixture
def node(tmp_path: Path) -> Iterator[PrivateContainerd]:
    from conftest import require, require_root

    require("containerd")
    require_root()
    with loop_xfs(tmp_path / "disk") as mount:
        daemon = PrivateContainerd(tmp_path / "ctrd", root=mount.mount_point / "containerd")
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


def metadata(images: tuple[str, ...] = ("registry.example/ml/pytorch:2.3",
                                        "registry.example/ml/triton:24.05")) -> T.SnapshotMetadata:
    return T.SnapshotMetadata(
        hotlist_digest=T.hotlist_digest(images), images=images, architecture="amd64",
        containerd_version="1.7.22", source_node="ip-10-0-1-23.ec2.internal",
        created_at=datetime(2026, 5, 1, 12, 0, tzinfo=UTC), source_instance=INSTANCE,
    )


def ours(direct: dict, volume_id: str) -> list[dict]:
    """Snapshots of the test's volume (moto also has snapshots behind its default AMIs)."""
    return direct["ec2"].describe_snapshots(
        Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Snapshots"]


def cli_base(node: PrivateContainerd, proxy: AwsProxy, tmp_path: Path) -> list[str]:
    """The flags of a `snapshot create|build` on the test node, through the proxy."""
    return ["--containerd-address", node.address, "--containerd-root", str(node.root),
            "--endpoint-url", proxy.url, "--poll-interval", "0.05",
            "--kubelet-dir", str(tmp_path / "no-kubelet"), "--node-name", "builder-1",
            "--instance-id", INSTANCE]
