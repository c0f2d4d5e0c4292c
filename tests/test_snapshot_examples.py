"""The snapshot examples in daemonset/examples stay valid: documents parse, the snapshot
is wired where it should be, the IAM policy covers every AWS action nodeagent calls, and
every `nodeagent ...` command in the builder scripts parses with the real CLI parser."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from nodeagent.api.hotimageset import parse_hotimageset
from nodeagent.cli import build_parser

EXAMPLES = Path(__file__).resolve().parent.parent / "daemonset" / "examples"
SNAPSHOT_SOURCES = [Path(__file__).resolve().parent.parent / "nodeagent" / "snapshot" / name
                    for name in ("ec2.py", "workflow.py")]


def test_ec2nodeclasses_restore_the_data_volume() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "karpenter-ec2nodeclass-snapshot.yaml")
                                   .read_text()))
    assert {d["metadata"]["name"] for d in docs} == {"gpu-bottlerocket-prewarmed",
                                                     "gpu-al2023-prewarmed"}
    for doc in docs:
        assert doc["apiVersion"] == "karpenter.k8s.aws/v1" and doc["kind"] == "EC2NodeClass"
        data = [m for m in doc["spec"]["blockDeviceMappings"] if m["deviceName"] == "/dev/xvdb"]
        assert data[0]["ebs"]["snapshotID"].startswith("snap-")
    al2023 = next(d for d in docs if "al2023" in d["metadata"]["name"])
    assert "mount -o noatime /dev/xvdb /var/lib/containerd" in al2023["spec"]["userData"]
    assert "mkfs." not in al2023["spec"]["userData"]  # never format the restored volume


def test_launch_templates_resolve_the_ssm_parameter() -> None:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: f"{suffix}:{node.value}")
    doc = yaml.load((EXAMPLES / "managed-nodegroup-launch-template-snapshot.yaml")
                    .read_text(), Loader=Loader)
    assert doc["Parameters"]["SnapshotId"]["Type"] == "AWS::SSM::Parameter::Value<String>"
    for resource in doc["Resources"].values():
        (mapping,) = resource["Properties"]["LaunchTemplateData"]["BlockDeviceMappings"]
        assert mapping["DeviceName"] == "/dev/xvdb"
        assert mapping["Ebs"]["SnapshotId"] == "Ref:SnapshotId"


def test_iam_policy_allows_every_action_nodeagent_calls() -> None:
    policy = json.loads((EXAMPLES / "iam-policy-snapshot.json").read_text())
    allowed = set()
    for statement in policy["Statement"]:
        actions = statement["Action"]
        allowed.update([actions] if isinstance(actions, str) else actions)
    called = set()
    for source in SNAPSHOT_SOURCES:
        text = source.read_text()
        for method in re.findall(r"\b(?:ec2|fast|ssm)\.(\w+)\(", text):
            if method in ("client", "get_paginator"):
                continue
            service = "ssm" if method in ("put_parameter", "get_parameters") else "ec2"
            called.add(f"{service}:{''.join(p.title() for p in method.split('_'))}")
        for paginated in re.findall(r'get_paginator\("(\w+)"\)', text):
            called.add("ec2:" + "".join(p.title() for p in paginated.split("_")))
    assert called, "no AWS call found: the scan is broken"
    assert called <= allowed, f"missing from the policy: {sorted(called - allowed)}"
    delete = next(s for s in policy["Statement"] if "ec2:DeleteSnapshot" in s["Action"])
    assert delete["Condition"]["StringEquals"] == {
        "aws:ResourceTag/nodeagent.io/managed-by": "nodeagent"}


def _nodeagent_commands(script: Path) -> list[list[str]]:
    """`nodeagent ...` invocations of a shell script, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words[:-1]):
            if word.endswith("bin/nodeagent") or word == "nodeagent":
                commands.append(words[i + 1:])
    return commands


@pytest.mark.parametrize("script", ["al2023-snapshot-builder.sh", "bottlerocket-builder.sh"])
def test_builder_scripts_use_real_cli_options(script: str) -> None:
    path = EXAMPLES / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    commands = _nodeagent_commands(path)
    assert commands, f"{script}: no nodeagent command found"
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args([a.replace("$", "X") for a in argv])
        assert args.snapshot_action == "build"


def test_bottlerocket_user_data_is_a_valid_hot_list() -> None:
    import base64
    import tomllib

    settings = tomllib.loads((EXAMPLES / "bottlerocket-snapshot-builder.toml").read_text())
    container = settings["settings"]["host-containers"]["nodeagent-builder"]
    assert container["superpowered"] is True
    hot = yaml.safe_load(base64.b64decode(container["user-data"]))
    assert parse_hotimageset(hot, "user-data").images
