"""Snapshot create / wait / FSR / SSM / list / prune against moto in server mode over HTTP.

boto3 talks to a real HTTP proxy (tests/aws_servers.py) in front of moto's server; the
proxy injects AWS throttling errors (moto cannot throttle). Moto completes snapshots at
once, so the tests that need "pending" (progress) or "error" drive the state of moto's own
snapshot object, which the server then reports over HTTP, as EC2 would. Moto does not
implement EnableFastSnapshotRestores: those tests get the EC2 API reference's response
shape from the proxy and check the request boto3 actually sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import snapshot_env
from support.aws_servers import AwsProxy, MotoServer, Recorded
from support.loopfs import LoopMount
from support.snapshot_env import INSTANCE, cli_base, metadata, ours

from nodeagent.cli import main
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.snapshot import tags as T
from nodeagent.snapshot import workflow
from nodeagent.snapshot.ec2 import AwsClients, AwsError, AwsOptions

WRITER = ("import os, sys; print('start', flush=True); "
          "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); os.write(fd, b'x'); os.fsync(fd)")


moto = snapshot_env.moto
proxy = snapshot_env.proxy
aws_env = snapshot_env.aws_env
direct = snapshot_env.direct
aws = snapshot_env.aws
volume_id = snapshot_env.volume_id
xfs = snapshot_env.xfs
node = snapshot_env.node


def progress_through(moto: MotoServer, proxy: AwsProxy, steps: list[tuple[str, str]]) -> None:
    """New snapshots start pending; each DescribeSnapshots moves to the next state."""
    remaining = list(steps)

    def advance(record: Recorded) -> None:
        ids = record.params.get("SnapshotId.1")
        if not ids or not remaining:
            return
        snap = moto.snapshot(ids[0])
        state, progress = remaining.pop(0)
        snap.status = state
        type(snap).progress = property(lambda self: self.__dict__.get("_progress", "100%"))
        snap._progress = progress

    proxy.on("DescribeSnapshots", advance)


@pytest.fixture(autouse=True)
def restore_moto_progress() -> Iterator[None]:
    from moto.ec2.models.elastic_block_store import Snapshot

    original = Snapshot.__dict__["progress"]
    yield
    Snapshot.progress = original


# ---------------------------------------------------------------------- create


def test_create_freezes_only_around_create_snapshot_then_waits_and_publishes(
        aws: AwsClients, proxy: AwsProxy, moto: MotoServer, direct: dict, volume_id: str,
        xfs: LoopMount) -> None:
    frozen_during_create: list[bool] = []
    writers: list[subprocess.Popen[str]] = []

    def check_frozen(_record: Recorded) -> None:
        # Runs in the proxy while the client waits for CreateSnapshot's answer.
        writer = subprocess.Popen([sys.executable, "-c", WRITER,
                                   str(xfs.mount_point / "probe")],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "start"
        time.sleep(0.4)
        frozen_during_create.append(writer.poll() is None)
        writers.append(writer)

    proxy.on("CreateSnapshot", check_frozen)
    steps = [("pending", "0%"), ("pending", "45%"), ("pending", "90%"), ("completed", "100%")]
    progress_through(moto, proxy, steps)
    seen: list[tuple[str, str]] = []
    req = workflow.CreateRequest(
        volume_id=volume_id, metadata=metadata(), freeze_path=str(xfs.mount_point),
        name="ml-hot", poll_s=0.05, ssm_parameter="/nodeagent/ml/snapshot",
    )
    result = workflow.create(aws, req, on_progress=lambda _id, st, pct: seen.append((st, pct)))

    assert frozen_during_create == [True]
    assert result.consistency == "frozen"
    assert result.freeze_seconds is not None and result.freeze_seconds < 5
    assert writers[0].wait(timeout=10) == 0  # the blocked writer finished after the thaw
    assert (xfs.mount_point / "probe").exists()
    assert seen[-1] == ("completed", "100%")
    assert ("pending", "45%") in seen
    assert result.state == "completed" and not result.duplicates

    snap = direct["ec2"].describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"][0]
    tags = T.tag_map(snap["Tags"])
    assert tags[T.MANAGED_BY] == "nodeagent"
    assert tags[T.HOTLIST_DIGEST] == metadata().hotlist_digest
    assert T.images_from_tags(tags) == (metadata().images, True)
    assert tags[T.ARCHITECTURE] == "amd64"
    assert tags[T.CONTAINERD_VERSION] == "1.7.22"
    assert tags[T.SOURCE_NODE] == "ip-10-0-1-23.ec2.internal"
    assert tags[T.SOURCE_INSTANCE] == INSTANCE
    assert tags[T.CREATED_AT] == "2026-05-01T12:00:00Z"
    assert tags[T.CONSISTENCY] == "frozen"
    assert tags["Name"] == "ml-hot"
    assert snap["VolumeId"] == volume_id
    param = direct["ssm"].get_parameter(Name="/nodeagent/ml/snapshot")["Parameter"]
    assert param["Value"] == result.snapshot_id

    actions = proxy.actions()
    assert actions.index("DescribeVolumes") < actions.index("CreateSnapshot")
    assert actions[-1] == "PutParameter"


def test_snapshot_in_error_state_is_reported_and_not_published(
        aws: AwsClients, proxy: AwsProxy, moto: MotoServer, direct: dict, volume_id: str,
        xfs: LoopMount) -> None:
    progress_through(moto, proxy, [("pending", "10%"), ("error", "10%")])
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(),
                                 freeze_path=str(xfs.mount_point), poll_s=0.05,
                                 ssm_parameter="/nodeagent/ml/snapshot")
    result = workflow.create(aws, req)
    assert result.state == "error" and not result.complete
    wait, publish = result.steps
    assert wait.status == "failed"
    assert re.search(rf"snap-\w+ of {volume_id} failed \(state error", wait.detail)
    assert (publish.name, publish.status) == ("ssm-parameter", "skipped")
    assert "PutParameter" not in proxy.actions()
    with pytest.raises(direct["ssm"].exceptions.ParameterNotFound):
        direct["ssm"].get_parameter(Name="/nodeagent/ml/snapshot")
    (xfs.mount_point / "still-writable").write_text("ok")


def test_waiter_gives_up_at_its_deadline(aws: AwsClients, proxy: AwsProxy, moto: MotoServer,
                                         volume_id: str) -> None:
    progress_through(moto, proxy, [("pending", "5%")] * 1000)
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None,
                                 poll_s=0.05, timeout_s=0.5)
    result = workflow.create(aws, req)
    assert (result.state, result.complete) == ("pending", False)
    assert "still pending after 0s; it continues in EC2" in result.steps[0].detail


def test_throttling_is_retried_everywhere(aws: AwsClients, proxy: AwsProxy, direct: dict,
                                          volume_id: str, xfs: LoopMount) -> None:
    proxy.fail("CreateSnapshot", 2, status=503, code="RequestLimitExceeded")
    proxy.fail("DescribeSnapshots", 2, status=503, code="RequestLimitExceeded")
    proxy.fail("PutParameter", 2, status=400, code="ThrottlingException")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(),
                                 freeze_path=str(xfs.mount_point), poll_s=0.05,
                                 ssm_parameter="/nodeagent/p")
    result = workflow.create(aws, req)
    assert result.state == "completed"
    assert proxy.state.failed.count("CreateSnapshot") == 2
    assert proxy.state.failed.count("PutParameter") == 2
    assert len(proxy.requests_for("CreateSnapshot")) == 3
    assert len(ours(direct, volume_id)) == 1
    assert direct["ssm"].get_parameter(Name="/nodeagent/p")["Parameter"]["Value"] \
        == result.snapshot_id


def test_waiter_outlasts_throttling_beyond_botocore_retries(
        proxy: AwsProxy, volume_id: str) -> None:
    aws = AwsClients(AwsOptions(endpoint_url=proxy.url, max_attempts=2))
    proxy.fail("DescribeSnapshots", 5, status=503, code="RequestLimitExceeded")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None,
                                 poll_s=0.02)
    assert workflow.create(aws, req).state == "completed"
    assert proxy.state.failed.count("DescribeSnapshots") == 5


def test_throttled_create_snapshot_gives_up_and_thaws(
        aws: AwsClients, proxy: AwsProxy, direct: dict, volume_id: str,
        xfs: LoopMount) -> None:
    proxy.fail("CreateSnapshot", 100, status=503, code="RequestLimitExceeded")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(),
                                 freeze_path=str(xfs.mount_point))
    with pytest.raises(AwsError, match=r"CreateSnapshot of vol-\w+: AWS still answered "
                                       r"RequestLimitExceeded after 4 attempts"):
        workflow.create(aws, req)
    assert len(proxy.requests_for("CreateSnapshot")) == workflow.FREEZE_WINDOW_ATTEMPTS
    assert ours(direct, volume_id) == []
    (xfs.mount_point / "still-writable").write_text("ok")


def test_permission_denied_names_the_action_and_the_policy(
        aws: AwsClients, proxy: AwsProxy, volume_id: str, xfs: LoopMount) -> None:
    proxy.fail("CreateSnapshot", 1, status=403, code="UnauthorizedOperation")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(),
                                 freeze_path=str(xfs.mount_point))
    with pytest.raises(AwsError, match=r"CreateSnapshot of vol-\w+: not permitted "
                                       r"\(UnauthorizedOperation.*iam-policy-snapshot.json"):
        workflow.create(aws, req)
    (xfs.mount_point / "still-writable").write_text("ok")


def test_unknown_volume_fails_before_freezing(aws: AwsClients, proxy: AwsProxy) -> None:
    req = workflow.CreateRequest(volume_id="vol-0123456789abcdef0", metadata=metadata(),
                                 freeze_path="/nonexistent-so-freezing-would-fail")
    with pytest.raises(AwsError, match=r"DescribeVolumes vol-0123456789abcdef0: "
                                       r"InvalidVolume.NotFound"):
        workflow.create(aws, req)
    assert "CreateSnapshot" not in proxy.actions()


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, proxy: AwsProxy) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    aws = AwsClients(AwsOptions(endpoint_url=proxy.url))
    req = workflow.CreateRequest(volume_id="vol-0123456789abcdef0", metadata=metadata(),
                                 freeze_path="/")
    with pytest.raises(AwsError, match="no AWS credentials found"):
        workflow.create(aws, req)
    assert proxy.actions() == []


def test_no_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(AwsError, match="no AWS region: pass --region"):
        AwsClients(AwsOptions())


def test_no_wait_cannot_publish() -> None:
    req = workflow.CreateRequest(volume_id="vol-1", metadata=metadata(), freeze_path=None,
                                 wait=False, ssm_parameter="/x")
    with pytest.raises(Exception, match="--no-wait cannot be combined"):
        workflow.validate(req)


FSR_OK = b"""<EnableFastSnapshotRestoresResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>7b5e7a55-0000-0000-0000-000000000000</requestId>
<successful><item><snapshotId>%s</snapshotId><availabilityZone>us-east-1a</availabilityZone>
<state>enabling</state></item><item><snapshotId>%s</snapshotId>
<availabilityZone>us-east-1c</availabilityZone><state>enabling</state></item></successful>
<unsuccessful/>
</EnableFastSnapshotRestoresResponse>"""

FSR_FAILED = b"""<EnableFastSnapshotRestoresResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>7b5e7a55-0000-0000-0000-000000000001</requestId><successful/>
<unsuccessful><item><snapshotId>snap-x</snapshotId><fastSnapshotRestoreStateErrorSet><item>
<availabilityZone>us-east-1b</availabilityZone><error><code>InvalidParameterValue</code>
<message>Fast snapshot restores limit exceeded</message></error></item>
</fastSnapshotRestoreStateErrorSet></item></unsuccessful>
</EnableFastSnapshotRestoresResponse>"""


def test_fast_snapshot_restore_request(aws: AwsClients, proxy: AwsProxy,
                                       volume_id: str) -> None:
    proxy.respond("EnableFastSnapshotRestores", 200, FSR_OK % (b"snap-any", b"snap-any"))
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None,
                                 poll_s=0.02, fsr_zones=("us-east-1a", "us-east-1c"))
    result = workflow.create(aws, req)
    assert result.fsr_zones == ("us-east-1a", "us-east-1c")
    (sent,) = proxy.requests_for("EnableFastSnapshotRestores")
    assert sent.params["SourceSnapshotId.1"] == [result.snapshot_id]
    assert sent.params["AvailabilityZone.1"] == ["us-east-1a"]
    assert sent.params["AvailabilityZone.2"] == ["us-east-1c"]


def test_fast_snapshot_restore_failure_names_the_zone(aws: AwsClients, proxy: AwsProxy,
                                                      volume_id: str) -> None:
    proxy.respond("EnableFastSnapshotRestores", 200, FSR_FAILED)
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None,
                                 poll_s=0.02, fsr_zones=("us-east-1b",))
    result = workflow.create(aws, req)
    assert (result.state, result.complete, result.fsr_zones) == ("completed", False, ())
    assert "failed in us-east-1b: InvalidParameterValue: Fast snapshot restores limit " \
        "exceeded" in result.steps[-1].detail


def test_many_images_are_split_over_tags(aws: AwsClients, direct: dict,
                                         volume_id: str) -> None:
    images = tuple(f"123456789012.dkr.ecr.us-east-1.amazonaws.com/team-{i:03d}/model-server:v1"
                   for i in range(60))
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(images),
                                 freeze_path=None, poll_s=0.02)
    result = workflow.create(aws, req)
    snap = direct["ec2"].describe_snapshots(SnapshotIds=[result.snapshot_id])["Snapshots"][0]
    tags = T.tag_map(snap["Tags"])
    assert len(tags) <= 50
    assert all(len(v) <= 256 for v in tags.values())
    assert T.images_from_tags(tags) == (images, True)


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


# ---------------------------------------------------------------------- CLI on a node
# A private containerd whose root is on a loop-mounted XFS stands in for the node's data
# volume. A loop device is not EBS, so these runs pass --volume-id (a moto volume); the
# freeze still happens on the real XFS.


async def _pull_and_pin(address: str, refs: list[str]) -> None:
    from nodeagent.containerd.client import ContainerdClient

    async with ContainerdClient(address) as client:
        for ref in refs:
            await client.pull_image(ref)
            target = (await client.get_image_record(ref)).target_digest
            for rec in await client.list_image_records():
                if rec.target_digest == target:
                    await client.update_image_labels(rec.name, {
                        "io.cri-containerd.pinned": "pinned", "nodeagent.io/pinned": "true"})


def test_cli_create_records_pinned_images(node: PrivateContainerd, proxy: AwsProxy,
                                          direct: dict, volume_id: str, sample_images,
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    server, trainer = sample_images["model-server"], sample_images["trainer"]
    asyncio.run(_pull_and_pin(node.address, [server.ref, trainer.ref]))
    code = main(["snapshot", "create", *cli_base(node, proxy, tmp_path),
                 "--volume-id", volume_id, "--ssm-parameter", "/nodeagent/snap", "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["consistency"] == "frozen" and out["state"] == "completed"
    assert out["images"] == sorted([server.ref, trainer.ref])
    assert out["hotlistDigest"] == T.hotlist_digest([server.ref, trainer.ref])
    snap = direct["ec2"].describe_snapshots(SnapshotIds=[out["snapshotId"]])["Snapshots"][0]
    tags = T.tag_map(snap["Tags"])
    assert tags[T.CONTAINERD_VERSION].startswith("1.")
    assert tags[T.SOURCE_NODE] == "builder-1" and tags[T.SOURCE_INSTANCE] == INSTANCE
    assert direct["ssm"].get_parameter(Name="/nodeagent/snap")["Parameter"]["Value"] \
        == out["snapshotId"]


@pytest.mark.containerd
def test_cli_create_refuses_a_volume_that_is_not_ebs(node: PrivateContainerd,
                                                     proxy: AwsProxy, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["snapshot", "create", *cli_base(node, proxy, tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "/dev/loop" in err and "not an EBS volume" in err
    assert proxy.actions() == []  # nothing asked of AWS, nothing frozen
    (node.root / "still-writable").write_text("ok")


@pytest.mark.containerd
def test_cli_create_refuses_to_clone_kubelet_credentials(
        node: PrivateContainerd, proxy: AwsProxy, volume_id: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    kubelet = node.root.parent / "kubelet"
    (kubelet / "pki").mkdir(parents=True)
    args = [*cli_base(node, proxy, tmp_path), "--volume-id", volume_id]
    args[args.index("--kubelet-dir") + 1] = str(kubelet)
    assert main(["snapshot", "create", *args]) == 2
    assert "kubelet credentials" in capsys.readouterr().err
    assert proxy.actions() == []


def test_cli_create_refuses_the_root_filesystem(containerd: PrivateContainerd,
                                                proxy: AwsProxy, volume_id: str,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["snapshot", "create", *cli_base(containerd, proxy, tmp_path),
                 "--volume-id", volume_id])
    assert code == 2
    assert "is on the root filesystem" in capsys.readouterr().err


def test_cli_build_prewarms_verifies_and_snapshots(node: PrivateContainerd, proxy: AwsProxy,
                                                   direct: dict, volume_id: str,
                                                   sample_images, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from support.prewarm_helpers import hotlist_yaml

    refs = [sample_images["python"].ref, sample_images["tools"].ref]
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("ml", refs, selector="role: gpu"))  # builder: all sets
    code = main(["snapshot", "build", "-f", str(hot), *cli_base(node, proxy, tmp_path),
                 "--volume-id", volume_id, "-o", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["images"] == sorted(refs)
    snap = direct["ec2"].describe_snapshots(SnapshotIds=[out["snapshotId"]])["Snapshots"][0]
    assert T.images_from_tags(T.tag_map(snap["Tags"])) == (tuple(sorted(refs)), True)


def test_cli_build_does_not_snapshot_when_an_image_is_missing(
        node: PrivateContainerd, proxy: AwsProxy, registry, sample_images, volume_id: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support.prewarm_helpers import hotlist_yaml

    absent = f"{registry.host}/nodeagent-test/absent:1"
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("ml", [sample_images["python"].ref, absent]))
    code = main(["snapshot", "build", "-f", str(hot), *cli_base(node, proxy, tmp_path),
                 "--volume-id", volume_id])
    assert code == 1
    assert f"not snapshotting: {absent} is not in containerd" in capsys.readouterr().err
    assert "CreateSnapshot" not in proxy.actions()


def test_xen_device_resolved_through_attachments(aws: AwsClients, direct: dict) -> None:
    from nodeagent.snapshot.ec2 import find_attached_volume

    ec2 = direct["ec2"]
    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
        BlockDeviceMappings=[{"DeviceName": "/dev/sdb", "Ebs": {"VolumeSize": 20}}],
    )["Instances"][0]["InstanceId"]
    (vol,) = ec2.describe_volumes(Filters=[
        {"Name": "attachment.instance-id", "Values": [instance]},
        {"Name": "attachment.device", "Values": ["/dev/sdb"]}])["Volumes"]
    assert find_attached_volume(aws.ec2, instance, "xvdb") == vol["VolumeId"]
    with pytest.raises(AwsError, match=r"/dev/xvdc: found 0 EBS volumes attached"):
        find_attached_volume(aws.ec2, instance, "xvdc")
