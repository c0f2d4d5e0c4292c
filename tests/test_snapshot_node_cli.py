"""`nodeagent snapshot create|build` on a node, against moto in server mode over HTTP.

boto3 talks to a real HTTP proxy (tests/support/aws_servers.py) in front of moto's server,
which records every call (so a refusal is seen to ask nothing of AWS). The node is a
real private containerd on a real XFS (below), its images pulled from the real registry.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import snapshot_env
from support.aws_servers import AwsProxy
from support.snapshot_env import INSTANCE, cli_base

from nodeagent.cli import main
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.ec2 import AwsClients, AwsError

moto = snapshot_env.moto
proxy = snapshot_env.proxy
aws_env = snapshot_env.aws_env
direct = snapshot_env.direct
aws = snapshot_env.aws
volume_id = snapshot_env.volume_id
node = snapshot_env.node


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
