"""Snapshot list / prune against moto in server mode over HTTP.

boto3 talks to a real HTTP proxy (tests/support/aws_servers.py) in front of moto's server,
which records every call (so a dry run is seen to delete nothing). The fleet's ages and
states are set on moto's own snapshot objects, which the server then reports over HTTP,
as EC2 would; launch templates and SSM parameters hold the references prune must keep.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from support import snapshot_env
from support.aws_servers import AwsProxy, MotoServer
from support.snapshot_env import ours

from nodeagent.cli import main
from nodeagent.snapshot import tags as T
from nodeagent.snapshot import workflow
from nodeagent.snapshot.ec2 import AwsClients

moto = snapshot_env.moto
proxy = snapshot_env.proxy
aws_env = snapshot_env.aws_env
direct = snapshot_env.direct
aws = snapshot_env.aws
volume_id = snapshot_env.volume_id


# ---------------------------------------------------------------------- list / prune


def _make_snapshot(direct: dict, moto: MotoServer, volume_id: str, digest: str | None,
                   age_days: int, state: str = "completed") -> str:
    tags = [{"Key": "team", "Value": "ml"}]
    if digest is not None:
        tags += [{"Key": T.MANAGED_BY, "Value": "nodeagent"},
                 {"Key": T.HOTLIST_DIGEST, "Value": digest}]
    snap_id = direct["ec2"].create_snapshot(
        VolumeId=volume_id, TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
    )["SnapshotId"]
    model = moto.snapshot(snap_id)
    model.start_time = datetime.now(UTC) - timedelta(days=age_days)
    model.status = state
    return snap_id


@pytest.fixture
def fleet(direct: dict, moto: MotoServer, volume_id: str) -> dict[str, str]:
    """Snapshots of two hot lists, references from launch templates and SSM."""
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    s = {
        "a0": _make_snapshot(direct, moto, volume_id, a, 0),
        "a1": _make_snapshot(direct, moto, volume_id, a, 1),
        "a2_lt_default": _make_snapshot(direct, moto, volume_id, a, 2),
        "a3_ssm": _make_snapshot(direct, moto, volume_id, a, 3),
        "a4_old": _make_snapshot(direct, moto, volume_id, a, 4),
        "a5_lt_old_version": _make_snapshot(direct, moto, volume_id, a, 5),
        "a6_failed": _make_snapshot(direct, moto, volume_id, a, 6, state="error"),
        "a7_pending": _make_snapshot(direct, moto, volume_id, a, 7, state="pending"),
        "b0": _make_snapshot(direct, moto, volume_id, b, 3),
        "foreign": _make_snapshot(direct, moto, volume_id, None, 30),
    }
    ec2 = direct["ec2"]

    def data(snap: str) -> dict:
        return {"BlockDeviceMappings": [{"DeviceName": "/dev/xvdb", "Ebs": {"SnapshotId": snap}}]}

    ec2.create_launch_template(LaunchTemplateName="gpu-nodes", LaunchTemplateData=data(
        s["a5_lt_old_version"]))  # version 1: neither latest nor default later
    ec2.create_launch_template_version(LaunchTemplateName="gpu-nodes",
                                       LaunchTemplateData=data(s["a2_lt_default"]))
    ec2.modify_launch_template(LaunchTemplateName="gpu-nodes", DefaultVersion="2")
    ec2.create_launch_template_version(LaunchTemplateName="gpu-nodes",
                                       LaunchTemplateData=data(s["a0"]))  # $Latest = 3
    direct["ssm"].put_parameter(Name="/nodeagent/ml/snapshot", Value=s["a3_ssm"],
                                Type="String")
    return s


def _decisions(result: workflow.PruneResult) -> dict[str, tuple[bool, str]]:
    return {d.snapshot.snapshot_id: (d.delete, d.reason) for d in result.decisions}


def test_prune_plan(aws: AwsClients, fleet: dict[str, str], direct: dict,
                    volume_id: str) -> None:
    result = workflow.prune(aws, keep=1, ssm_parameters=["/nodeagent/ml/snapshot",
                                                         "/nodeagent/absent"], execute=False)
    d = _decisions(result)
    by_name = {name: d[snap] for name, snap in fleet.items() if snap in d}
    assert "foreign" not in by_name  # not ours: never listed, never deleted
    assert by_name["a0"][0] is False and "version 3" in by_name["a0"][1]
    assert by_name["a1"] == (True, "older than the newest 1 of its hot list")
    assert by_name["a2_lt_default"][0] is False
    assert "launch template gpu-nodes" in by_name["a2_lt_default"][1]
    assert by_name["a3_ssm"] == (False, "still referenced by SSM parameter "
                                        "/nodeagent/ml/snapshot")
    assert by_name["a4_old"][0] is True
    assert by_name["a5_lt_old_version"][0] is True  # only $Latest/$Default protect
    assert by_name["a6_failed"][0] is True and "failed" in by_name["a6_failed"][1]
    assert by_name["a7_pending"][0] is False
    assert by_name["b0"] == (False, "among the newest 1 of its hot list")
    # Dry run: everything is still there.
    assert len(ours(direct, volume_id)) == len(fleet)


def test_prune_cli_dry_run_by_default_then_yes(proxy: AwsProxy, fleet: dict[str, str],
                                               direct: dict, volume_id: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["snapshot", "prune", "--keep", "1", "--endpoint-url", proxy.url,
            "--ssm-parameter", "/nodeagent/ml/snapshot"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing deleted; 4 snapshot(s) would be deleted" in out
    assert "DeleteSnapshot" not in proxy.actions()
    assert main([*base, "--dry-run"]) == 0
    assert "DeleteSnapshot" not in proxy.actions()

    assert main([*base, "--yes"]) == 0
    assert "deleted 4 snapshot(s)" in capsys.readouterr().out
    left = {s["SnapshotId"] for s in
            ours(direct, volume_id)}
    expected_gone = {fleet[k] for k in ("a1", "a4_old", "a5_lt_old_version", "a6_failed")}
    assert left == set(fleet.values()) - expected_gone


def test_prune_rejects_keep_zero(proxy: AwsProxy, fleet: dict[str, str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["snapshot", "prune", "--keep", "0", "--yes", "--endpoint-url", proxy.url])
    assert exit_.value.code == 2
    assert "argument --keep: 0: must be within [1, 1000]" in capsys.readouterr().err
    assert "DeleteSnapshot" not in proxy.actions()


def test_list_cli(proxy: AwsProxy, fleet: dict[str, str],
                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "list", "--endpoint-url", proxy.url, "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["snapshotId"] for s in listed][:2] == [fleet["a0"], fleet["a1"]]
    assert fleet["foreign"] not in {s["snapshotId"] for s in listed}
    assert main(["snapshot", "list", "--endpoint-url", proxy.url]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("SNAPSHOT")
    assert fleet["a7_pending"] in table


def test_list_cli_without_credentials(monkeypatch: pytest.MonkeyPatch, proxy: AwsProxy,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(["snapshot", "list", "--endpoint-url", proxy.url]) == 1
    assert "no AWS credentials found" in capsys.readouterr().err
