"""The disk code on Bottlerocket: setup delegated to `apiclient ephemeral-storage`
through a fake `apiclient` executable that records its arguments, what apiclient cannot
do refused in the plan, and a failing apiclient reported.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from support.disks_fakes import FakeNode

from nodeagent.disks.apply import setup
from nodeagent.disks.discover import gather
from nodeagent.disks.options import Options
from nodeagent.disks.plan import make_plan

# ------------------------------------------------------------------ Bottlerocket


def fake_apiclient(bin_dir: Path, log: Path) -> None:
    """A real executable named apiclient that records its argv, one JSON line per call."""
    bin_dir.mkdir(parents=True)
    script = bin_dir / "apiclient"
    script.write_text(f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
""")
    script.chmod(0o755)


def bottlerocket_node(tmp_path: Path) -> FakeNode:
    node = FakeNode(tmp_path / "node")
    node.add_disk("nvme0n1", model="Amazon Elastic Block Store", partitions=1)
    node.add_disk("nvme2n1", serial="AWS2")
    (node.root / "etc").mkdir(parents=True)
    (node.root / "etc/os-release").write_text('NAME=Bottlerocket\nID=bottlerocket\n')
    return node


def test_bottlerocket_setup_delegates_to_apiclient(tmp_path, monkeypatch):
    node = bottlerocket_node(tmp_path)
    log = tmp_path / "argv.jsonl"
    fake_apiclient(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    opts = Options(filesystem="ext4", only=("AWS2",))
    result = setup(node.host(), opts)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [
        ["ephemeral-storage", "init", "--filesystem", "ext4", "--disks", "/dev/nvme2n1"],
        ["ephemeral-storage", "bind", "--dirs", "/var/lib/containerd", "/var/lib/kubelet",
         "/var/log/pods"],
    ]
    assert result.plan.bottlerocket
    assert json.loads((node.root / "run/nodeagent/disks-setup.json").read_text())["changed"]


def test_bottlerocket_refuses_what_apiclient_cannot_do(tmp_path):
    node = bottlerocket_node(tmp_path)
    opts = Options(strategy="raid10")
    plan = make_plan(gather(node.host(), opts, prefer_pyudev=False), opts)
    assert plan.steps == [] and "raid10" in plan.refusals[0]


def test_failing_apiclient_is_reported(tmp_path, monkeypatch):
    node = bottlerocket_node(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apiclient").write_text("#!/bin/sh\necho 'no ephemeral disks' >&2\nexit 3\n")
    (bin_dir / "apiclient").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    from nodeagent.disks.host import CommandError
    with pytest.raises(CommandError, match=r"exit 3.*no ephemeral disks"):
        setup(node.host(), Options())
