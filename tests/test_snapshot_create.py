"""Snapshot create / wait / FSR against moto in server mode over HTTP.

boto3 talks to a real HTTP proxy (tests/support/aws_servers.py) in front of moto's server;
the proxy injects AWS throttling errors (moto cannot throttle). Moto completes snapshots
at once, so the tests that need "pending" (progress) or "error" drive the state of moto's
own snapshot object, which the server then reports over HTTP, as EC2 would. Moto does not
implement EnableFastSnapshotRestores: those tests get the EC2 API reference's response
shape from the proxy and check the request boto3 actually sent. The freeze is real: an
XFS on a loop device.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from support import snapshot_env
from support.aws_servers import AwsProxy, MotoServer, Recorded
from support.loopfs import LoopMount
from support.snapshot_env import INSTANCE, metadata, ours

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


def test_an_unparsable_answer_to_a_read_is_asked_again(
        aws: AwsClients, proxy: AwsProxy, direct: dict, volume_id: str) -> None:
    # botocore does not retry an answer it cannot parse (an empty 200 body); reads do
    proxy.fail("DescribeVolumes", 2, status=200, body=b"")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None,
                                 poll_s=0.02)
    assert workflow.create(aws, req).state == "completed"
    assert len(proxy.requests_for("DescribeVolumes")) == 3
    assert len(ours(direct, volume_id)) == 1


def test_an_answer_that_stays_unparsable_is_one_line_naming_the_call(
        aws: AwsClients, proxy: AwsProxy, volume_id: str) -> None:
    proxy.fail("DescribeVolumes", 100, status=200, body=b"")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None)
    with pytest.raises(AwsError, match=rf"DescribeVolumes {volume_id}: unexpected failure "
                                       r"or answer \(ResponseParserError"):
        workflow.create(aws, req)
    assert len(proxy.requests_for("DescribeVolumes")) == 3
    assert "CreateSnapshot" not in proxy.actions()


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
