"""`snapshot create|build` once the snapshot exists: every later step (wait, Fast Snapshot
Restore, SSM) is attempted on its own, the result so far is printed (text and JSON) and
the exit is non-zero when a step failed; and the zones are checked against the region
before anything is frozen or created. moto in server mode behind the recording proxy
(tests/support/snapshot_env.py); the proxy answers EnableFastSnapshotRestores, which moto
lacks, with the answers a test gives it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import snapshot_env
from support.aws_servers import AwsProxy
from support.loopfs import LoopMount
from support.snapshot_env import cli_base, metadata, ours

from nodeagent.cli import main
from nodeagent.errors import UsageError
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.snapshot import workflow
from nodeagent.snapshot.ec2 import AwsClients

moto = snapshot_env.moto
proxy = snapshot_env.proxy
aws_env = snapshot_env.aws_env
direct = snapshot_env.direct
aws = snapshot_env.aws
volume_id = snapshot_env.volume_id
xfs = snapshot_env.xfs
node = snapshot_env.node

PARAM = "/nodeagent/gpu/snapshot"
NS = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'


def fsr_answer(ok: list[str], failed: dict[str, str]) -> bytes:
    """An EnableFastSnapshotRestores answer as the EC2 API reference shapes it."""
    good = "".join(f"<item><snapshotId>snap-x</snapshotId><availabilityZone>{z}"
                   "</availabilityZone><state>enabling</state></item>" for z in ok)
    bad = "".join(f"<item><availabilityZone>{z}</availabilityZone><error><code>"
                  f"InvalidParameterValue</code><message>{m}</message></error></item>"
                  for z, m in failed.items())
    unsuccessful = (f"<item><snapshotId>snap-x</snapshotId><fastSnapshotRestoreStateErrorSet>"
                    f"{bad}</fastSnapshotRestoreStateErrorSet></item>") if failed else ""
    return (f"<EnableFastSnapshotRestoresResponse {NS}><requestId>1</requestId>"
            f"<successful>{good}</successful><unsuccessful>{unsuccessful}</unsuccessful>"
            "</EnableFastSnapshotRestoresResponse>").encode()


def create(node: PrivateContainerd, proxy: AwsProxy, tmp_path: Path, volume_id: str,
           *extra: str) -> list[str]:
    return ["snapshot", "create", *cli_base(node, proxy, tmp_path), "--volume-id", volume_id,
            "--ssm-parameter", PARAM, *extra]


def parameter(direct: dict) -> str | None:
    try:
        return direct["ssm"].get_parameter(Name=PARAM)["Parameter"]["Value"]
    except direct["ssm"].exceptions.ParameterNotFound:
        return None


def steps(out: dict) -> dict[str, tuple[str, str]]:
    return {s["step"]: (s["status"], s["detail"]) for s in out["steps"]}


# ---------------------------------------------------------------------- after the snapshot


def test_fsr_failure_still_publishes_and_prints_the_result_as_json(
        node: PrivateContainerd, proxy: AwsProxy, direct: dict, volume_id: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proxy.respond("EnableFastSnapshotRestores", 200, fsr_answer(
        ["us-east-1a"], {"us-east-1b": "Fast snapshot restores limit exceeded"}))
    code = main(create(node, proxy, tmp_path, volume_id,
                       "--fast-restore-az", "us-east-1a,us-east-1b", "-o", "json"))
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 1
    (snap,) = ours(direct, volume_id)
    assert out["snapshotId"] == snap["SnapshotId"] and out["state"] == "completed"
    assert out["complete"] is False
    assert out["fastRestoreZones"] == ["us-east-1a"]  # what EC2 confirmed
    done = steps(out)
    assert done["wait"][0] == "done"
    assert done["fast-restore"][0] == "failed"
    assert "us-east-1b: InvalidParameterValue: Fast snapshot restores limit exceeded" \
        in done["fast-restore"][1]
    assert done["ssm-parameter"][0] == "done"  # usable without FSR: still published
    assert out["errors"] == [done["fast-restore"][1]]
    assert out["ssmParameter"] == PARAM and parameter(direct) == snap["SnapshotId"]
    assert f"snapshot {snap['SnapshotId']} exists" in captured.err
    assert "Traceback" not in captured.err


def test_an_unparsable_answer_is_a_one_line_error_and_the_text_result_is_printed(
        node: PrivateContainerd, proxy: AwsProxy, direct: dict, volume_id: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proxy.respond("EnableFastSnapshotRestores", 200, b"not xml at all")  # captive portal...
    code = main(create(node, proxy, tmp_path, volume_id, "--fast-restore-az", "us-east-1a",
                       "--max-attempts", "1"))
    captured = capsys.readouterr()
    (snap,) = ours(direct, volume_id)
    assert code == 1
    assert captured.out.strip() == snap["SnapshotId"]  # stdout: the id, as on success
    report = [line for line in captured.err.splitlines() if "fast-restore: failed" in line]
    assert len(report) == 1
    assert f"EnableFastSnapshotRestores for {snap['SnapshotId']} in us-east-1a: unexpected " \
           "failure or answer (ResponseParserError" in report[0]
    assert "  wait: done" in captured.err and "  ssm-parameter: done" in captured.err
    assert "Traceback" not in captured.err
    assert parameter(direct) == snap["SnapshotId"]


def test_an_ssm_failure_keeps_fast_restore_and_is_reported(
        node: PrivateContainerd, proxy: AwsProxy, direct: dict, volume_id: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proxy.respond("EnableFastSnapshotRestores", 200, fsr_answer(["us-east-1c"], {}))
    proxy.fail("PutParameter", 100, status=400, code="AccessDeniedException")
    code = main(create(node, proxy, tmp_path, volume_id, "--fast-restore-az", "use1-az2",
                       "-o", "json"))  # a zone ID: moto's use1-az2 is us-east-1c
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["fastRestoreZones"] == ["us-east-1c"] and out["ssmParameter"] is None
    (sent,) = proxy.requests_for("EnableFastSnapshotRestores")
    assert sent.params["AvailabilityZone.1"] == ["us-east-1c"]
    status, detail = steps(out)["ssm-parameter"]
    assert status == "failed"
    assert detail.startswith(f"PutParameter {PARAM}: not permitted (AccessDeniedException")
    assert parameter(direct) is None


def test_build_prints_the_result_when_fast_restore_fails(
        node: PrivateContainerd, proxy: AwsProxy, direct: dict, volume_id: str,
        sample_images, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support.prewarm_helpers import hotlist_yaml

    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("ml", [sample_images["python"].ref]))
    proxy.fail("EnableFastSnapshotRestores", 100, status=503, code="RequestLimitExceeded")
    code = main(["snapshot", "build", "-f", str(hot), *cli_base(node, proxy, tmp_path),
                 "--volume-id", volume_id, "--ssm-parameter", PARAM, "--fast-restore-az",
                 "us-east-1a", "--max-attempts", "2", "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["images"] == [sample_images["python"].ref] and out["state"] == "completed"
    assert "AWS still answered RequestLimitExceeded after 2 attempts" in \
        steps(out)["fast-restore"][1]
    assert parameter(direct) == out["snapshotId"]


def test_interrupted_wait_still_reports_the_snapshot(aws: AwsClients, proxy: AwsProxy,
                                                     volume_id: str) -> None:
    def interrupt(_id: str, _state: str, _pct: str) -> None:
        raise KeyboardInterrupt

    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None,
                                 poll_s=0.02, ssm_parameter=PARAM)
    result = workflow.create(aws, req, on_progress=interrupt)
    assert result.snapshot_id.startswith("snap-") and result.interrupted
    assert [(s.name, s.status, s.detail) for s in result.steps] == [
        ("wait", "failed", "interrupted"), ("ssm-parameter", "skipped", "interrupted")]
    assert "PutParameter" not in proxy.actions()


def test_a_failed_crash_retag_after_an_overrun_is_reported_not_raised(
        aws: AwsClients, proxy: AwsProxy, direct: dict, volume_id: str,
        xfs: LoopMount) -> None:
    import time

    proxy.on("CreateSnapshot", lambda _record: time.sleep(1.5))  # the window overruns
    proxy.fail("CreateTags", 100, status=403, code="UnauthorizedOperation")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(),
                                 freeze_path=str(xfs.mount_point), poll_s=0.02,
                                 max_freeze_s=0.5)
    result = workflow.create(aws, req)
    assert (result.consistency, result.state, result.complete) == ("crash", "completed", False)
    retag, wait = result.steps
    assert (retag.name, retag.status) == ("consistency-tag", "failed")
    assert "CreateTags nodeagent.io/consistency=crash on snap-" in retag.detail
    assert "not permitted" in retag.detail
    assert wait.status == "done"
    assert [s["SnapshotId"] for s in ours(direct, volume_id)] == [result.snapshot_id]


# ---------------------------------------------------------------------- zones


def test_a_zone_the_region_does_not_have_is_refused_before_anything_is_created(
        node: PrivateContainerd, proxy: AwsProxy, direct: dict, volume_id: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(create(node, proxy, tmp_path, volume_id,
                       "--fast-restore-az", "us-east-1a,us-east-1q"))
    err = capsys.readouterr().err
    assert code == 2
    assert "--fast-restore-az: us-east-1q: not a zone of region us-east-1 (its zones: " \
           "us-east-1a, us-east-1b" in err
    assert "us-east-1a:" not in err  # only the unknown one is named
    assert ours(direct, volume_id) == []
    assert "CreateSnapshot" not in proxy.actions()
    (node.root / "never-frozen").write_text("ok")


def test_build_refuses_an_unknown_zone_before_pulling(
        node: PrivateContainerd, proxy: AwsProxy, direct: dict, volume_id: str,
        sample_images, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support.prewarm_helpers import hotlist_yaml

    from nodeagent.containerd.client import ContainerdClient

    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("ml", [sample_images["python"].ref]))
    code = main(["snapshot", "build", "-f", str(hot), *cli_base(node, proxy, tmp_path),
                 "--volume-id", volume_id, "--fast-restore-az", "use1-az9"])
    assert code == 2
    assert "use1-az9: not a zone of region us-east-1" in capsys.readouterr().err
    assert ours(direct, volume_id) == []

    async def images() -> list:
        async with ContainerdClient(node.address) as client:
            return await client.list_image_records()

    import asyncio

    assert asyncio.run(images()) == []  # nothing was pulled


@pytest.mark.parametrize("zone", ["us-east1a", "US-EAST-1A", "us-east-1", "az1", ""])
def test_zone_syntax_is_refused_at_argument_time(zone: str, proxy: AwsProxy,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["snapshot", "create", "--fast-restore-az", zone, "--endpoint-url", proxy.url,
              "--containerd-address", "/nonexistent/containerd.sock"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --fast-restore-az:" in err and (repr(zone) in err)
    assert proxy.actions() == []


def test_zone_names_and_ids_are_checked_against_the_region(aws: AwsClients,
                                                           proxy: AwsProxy) -> None:
    from nodeagent.snapshot.ec2 import check_zones

    assert check_zones(aws.ec2, aws.region, ["use1-az1", "us-east-1b", "us-east-1a"]) == (
        "us-east-1b", "us-east-1a")  # use1-az1 is us-east-1b in moto: once
    with pytest.raises(UsageError, match=r"us-west-2a: not a zone of region us-east-1"):
        check_zones(aws.ec2, aws.region, ["us-west-2a"])
    assert proxy.actions() == ["DescribeAvailabilityZones"] * 2


def test_a_snapshot_whose_create_answer_was_lost_is_found_and_finished(
        aws: AwsClients, proxy: AwsProxy, direct: dict, volume_id: str,
        xfs: LoopMount) -> None:
    from dataclasses import replace

    from nodeagent.snapshot import tags as T

    # EC2 took the snapshot, but what came back could not be read (a proxy in the way).
    taken = direct["ec2"].create_snapshot(VolumeId=volume_id, TagSpecifications=[{
        "ResourceType": "snapshot",
        "Tags": [{"Key": T.REQUEST_ID, "Value": "req-lost-answer"}]}])["SnapshotId"]
    proxy.respond("CreateSnapshot", 200, b"<html>gateway</html>")
    req = workflow.CreateRequest(volume_id=volume_id,
                                 metadata=replace(metadata(), request_id="req-lost-answer"),
                                 freeze_path=str(xfs.mount_point), poll_s=0.02,
                                 ssm_parameter=PARAM)
    result = workflow.create(aws, req)
    assert result.snapshot_id == taken and result.complete
    assert parameter(direct) == taken
    (xfs.mount_point / "thawed").write_text("ok")


def test_a_failed_create_with_no_snapshot_in_ec2_is_still_an_error(
        aws: AwsClients, proxy: AwsProxy, direct: dict, volume_id: str) -> None:
    from nodeagent.snapshot.ec2 import AwsError

    proxy.respond("CreateSnapshot", 200, b"<html>gateway</html>")
    req = workflow.CreateRequest(volume_id=volume_id, metadata=metadata(), freeze_path=None)
    with pytest.raises(AwsError, match=r"CreateSnapshot of vol-\w+: unexpected failure or "
                                       r"answer \(KeyError: 'SnapshotId'\)"):  # parsed, empty
        workflow.create(aws, req)
    assert ours(direct, volume_id) == []
