"""What users type into `snapshot` and `hydrate`: the region and where it comes from,
numbers within their documented ranges (NaN and infinities refused), AWS names checked
before anything is asked of AWS, and one-line errors instead of tracebacks. moto in server
mode behind the recording proxy (tests/support/snapshot_env.py) where AWS is asked."""

from __future__ import annotations

import json
import os

import boto3
import pytest
from support import snapshot_env
from support.aws_servers import AwsProxy, MotoServer

from nodeagent.cli import main
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.ec2 import AwsClients, AwsOptions

moto = snapshot_env.moto
proxy = snapshot_env.proxy
aws_env = snapshot_env.aws_env

NO_CONTAINERD = ["--containerd-address", "/nonexistent/containerd.sock"]


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """argparse's refusal: exit 2 before any handler ran; its stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------- the region


def _our_snapshot_in(moto: MotoServer, region: str) -> str:
    ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name=region)
    volume = ec2.create_volume(Size=8, AvailabilityZone=f"{region}a")["VolumeId"]
    return ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{
        "ResourceType": "snapshot",
        "Tags": [{"Key": T.MANAGED_BY, "Value": T.MANAGED_BY_VALUE}]}])["SnapshotId"]


def test_aws_region_alone_is_honoured(monkeypatch: pytest.MonkeyPatch, moto: MotoServer,
                                      proxy: AwsProxy,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    snap = _our_snapshot_in(moto, "eu-west-1")
    assert main(["snapshot", "list", "--endpoint-url", proxy.url, "-o", "json"]) == 0
    assert [s["snapshotId"] for s in json.loads(capsys.readouterr().out)] == [snap]


def test_region_order_flag_then_aws_region_then_aws_default_region(
        monkeypatch: pytest.MonkeyPatch, proxy: AwsProxy) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert AwsClients(AwsOptions(endpoint_url=proxy.url)).region == "eu-west-1"
    assert AwsClients(AwsOptions(region="ap-south-1")).region == "ap-south-1"
    monkeypatch.delenv("AWS_REGION")
    assert AwsClients(AwsOptions()).region == "us-east-1"


def test_a_bad_region_is_refused_naming_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch, proxy: AwsProxy,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_REGION", "us east 1")
    assert main(["snapshot", "list", "--endpoint-url", proxy.url]) == 2
    assert "region 'us east 1' (from AWS_REGION): not an AWS region name" \
        in capsys.readouterr().err
    err = refused(capsys, ["snapshot", "list", "--region", "us east"])
    assert "argument --region: 'us east': not an AWS region name" in err
    assert proxy.actions() == []


# ---------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("argv", "message"), [
    (["hydrate", "--workers", "100000"], "--workers: 100000: must be within [1, 64]"),
    (["hydrate", "--workers", "0"], "--workers: 0: must be within [1, 64]"),
    (["snapshot", "create", "--timeout", "nan"], "--timeout: nan: must be a finite number"),
    (["snapshot", "create", "--timeout", "0"], "--timeout: 0: must be within (0, 604800]"),
    (["snapshot", "create", "--poll-interval", "inf"],
     "--poll-interval: inf: must be a finite number"),
    (["snapshot", "build", "-f", "x", "--poll-interval", "0.001"],
     "--poll-interval: 0.001: must be within [0.01, 3600]"),
    (["snapshot", "create", "--max-freeze-seconds", "NaN"],
     "--max-freeze-seconds: NaN: must be a finite number"),
    (["snapshot", "create", "--max-freeze-seconds", "3600"],
     "--max-freeze-seconds: 3600: must be within (0, 300]"),
    (["snapshot", "list", "--max-attempts", "100000"],
     "--max-attempts: 100000: must be within [1, 50]"),
    (["snapshot", "prune", "--keep", "1001"], "--keep: 1001: must be within [1, 1000]"),
])
def test_numbers_outside_their_range_are_refused(argv: list[str], message: str,
                                                 proxy: AwsProxy,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, [*argv, *NO_CONTAINERD])
    assert f"argument {message}" in err
    assert proxy.actions() == []


@pytest.mark.parametrize("rate", ["1e999", "1KiB", "2TiB", "nan"])
def test_hydrate_rate_outside_its_range_is_refused(rate: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hydrate", "--rate", rate, *NO_CONTAINERD]) == 2
    assert f"--rate '{rate}':" in capsys.readouterr().err


def test_agent_hydrate_rate_is_bounded_too() -> None:
    from nodeagent.errors import UsageError
    from nodeagent.snapshot.hydrate_read import parse_rate

    assert parse_rate("64KiB") == 64 * 1024 and parse_rate("1TiB") == 2**40
    with pytest.raises(UsageError, match="NODEAGENT_HYDRATE_RATE '1e400'"):
        parse_rate("1e400", "NODEAGENT_HYDRATE_RATE")


# ---------------------------------------------------------------------- names and paths


@pytest.mark.parametrize(("argv", "message"), [
    (["snapshot", "create", "--ssm-parameter", "bad name"],
     "--ssm-parameter: 'bad name': may only contain letters"),
    (["snapshot", "create", "--ssm-parameter", "nodeagent/snap"],
     "--ssm-parameter: 'nodeagent/snap': a name with a hierarchy must start with /"),
    (["snapshot", "prune", "--ssm-parameter", "/aws/snap"],
     "--ssm-parameter: '/aws/snap': names starting with aws or ssm are reserved"),
    (["snapshot", "create", "--name", "n" * 300], "--name: 'nnnn"),
    (["snapshot", "create", "--volume-id", "vol-xyz"], "--volume-id: 'vol-xyz': expected"),
    (["snapshot", "create", "--instance-id", "i-0builder"],
     "--instance-id: 'i-0builder': expected an id like i-0123456789abcdef0"),
    (["snapshot", "list", "--endpoint-url", "notaurl"],
     "--endpoint-url: 'notaurl': expected an http(s) URL"),
])
def test_aws_names_are_refused_before_aws_is_asked(argv: list[str], message: str,
                                                   proxy: AwsProxy,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, [*argv, *NO_CONTAINERD])
    assert f"argument {message}" in err
    assert proxy.actions() == []


def test_a_bad_endpoint_from_the_environment_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", "notaurl")
    assert main(["snapshot", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nodeagent: error: creating the ec2 client: ")
    assert "Invalid endpoint: notaurl" in err and len(err.strip().splitlines()) == 1


def test_containerd_root_in_a_system_tree_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "create", "--containerd-root", "/proc/self", "--volume-id",
                 "vol-0123456789abcdef0", *NO_CONTAINERD]) == 2
    assert "--containerd-root /proc/self: inside the system tree /proc" \
        in capsys.readouterr().err


@pytest.mark.parametrize("device", ["/dev/null", "tmp-dir", "missing"])
def test_hydrate_full_device_must_be_a_block_device(device: str, tmp_path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = {"tmp-dir": str(tmp_path), "missing": str(tmp_path / "absent")}.get(device, device)
    assert main(["hydrate", "--full-device", path, *NO_CONTAINERD]) == 2
    err = capsys.readouterr().err
    assert f"--full-device {path}: " in err
    assert ("No such file" in err) if device == "missing" else ("not a block device" in err)


def test_a_device_that_cannot_be_read_keeps_the_hot_result(
        containerd, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import stat

    device = tmp_path / "no-driver"  # a block device node no driver answers: ENXIO on open
    os.mknod(device, 0o600 | stat.S_IFBLK, os.makedev(240, 7))
    code = main(["hydrate", "--containerd-address", containerd.address, "--containerd-root",
                 str(containerd.root), "--full-device", str(device), "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["hot"]["files"] >= 1 and out["device"] is None  # the metadata was read
    assert out["problems"] == [f"cannot open {device} for reading: No such device or address"]


def test_aws_configuration_problems_are_one_line(
        monkeypatch: pytest.MonkeyPatch, proxy: AwsProxy, tmp_path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_PROFILE", "absent")
    assert main(["snapshot", "list", "--endpoint-url", proxy.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nodeagent: error: reading the AWS configuration")
    assert "The config profile (absent) could not be found" in err
    monkeypatch.delenv("AWS_PROFILE")
    broken = tmp_path / "config"
    broken.write_text("[default\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(broken))
    assert main(["snapshot", "list", "--endpoint-url", proxy.url]) == 1
    err = capsys.readouterr().err
    assert f"Unable to parse config file: {broken}" in err and len(err.splitlines()) == 1
    assert proxy.actions() == []
