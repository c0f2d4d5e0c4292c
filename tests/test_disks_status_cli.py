"""The disk code's status and edges on this host: the metrics snapshot of arrays and
mounts (and the Prometheus block it feeds), the CLI's error handling, and the zipapp
under a bare python3 without nodeagent's dependencies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.disks_fakes import FakeNode

from nodeagent.cli import main
from nodeagent.disks.options import Options
from nodeagent.disks.status import disk_metrics_snapshot
from nodeagent.errors import UsageError

# ------------------------------------------------------------------ metrics snapshot


def test_metrics_snapshot_reads_arrays_and_mounts(tmp_path):
    node = FakeNode(tmp_path)
    node.add_disk("nvme1n1")
    node.add_disk("nvme2n1")
    node.add_md_members(["nvme1n1", "nvme2n1"])
    md = node.add_md("md127", ["nvme1n1", "nvme2n1"])
    node.add_md("md126", [], state="inactive")  # not ours: no members with our name
    node.mount(md, "/mnt/k8s-disks/0", source="/dev/md127")
    (node.root / "mnt/k8s-disks/0").mkdir(parents=True)
    snap = disk_metrics_snapshot(node.host(), Options())
    assert snap["arrays"] == [{"name": "kubernetes", "device": "md127", "state": "clean",
                               "members": 2, "degraded": 0}]
    [mount] = snap["mounts"]
    assert mount["mountpoint"] == "/mnt/k8s-disks/0" and mount["capacity_bytes"] > 0
    assert snap["setup_duration_seconds"] is None


# ------------------------------------------------------------------ CLI and zipapp


def test_bad_options_are_clear_usage_errors(capsys):
    assert main(["disks", "plan", "--instance-store-model", "("]) == 2
    assert "--instance-store-model '(' is not a valid regular expression" in (
        capsys.readouterr().err)
    with pytest.raises(UsageError, match="--chunk-kib 512: XFS's log stripe unit"):
        Options(chunk_kib=512)
    with pytest.raises(UsageError, match="--bind var/lib/x: must be an absolute path"):
        Options(binds=("var/lib/x",))


BARE_PYTHON = "/usr/bin/python3"


def test_zipapp_runs_on_a_python_without_nodeagents_dependencies(tmp_path):
    if not Path(BARE_PYTHON).exists():
        pytest.skip(f"{BARE_PYTHON} not present")
    heavy = subprocess.run([BARE_PYTHON, "-I", "-c",
                            "import importlib.util as u; print([m for m in ('grpc', "
                            "'lightkube', 'boto3', 'pyudev', 'prometheus_client') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, check=True)
    assert heavy.stdout.strip() == "[]", "the bare python must lack nodeagent's deps"
    pyz = tmp_path / "nodeagent.pyz"
    subprocess.run([sys.executable, "-m", "nodeagent.disks.zipapp", str(pyz)], check=True,
                   capture_output=True)
    proc = subprocess.run([BARE_PYTHON, "-I", str(pyz), "disks", "plan", "-o", "json"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["discovery"] == "sysfs"  # pyudev absent: direct sysfs reads
    assert {d["name"] for d in plan["disks"]} >= {"vda"} or plan["disks"] == []
    helped = subprocess.run([BARE_PYTHON, "-I", str(pyz), "--help"], capture_output=True,
                            text=True)
    assert "disks" in helped.stdout and "prewarm" not in helped.stdout


def test_metrics_snapshot_feeds_the_prometheus_block(tmp_path):
    from prometheus_client import generate_latest

    from nodeagent import metrics

    node = FakeNode(tmp_path)
    for name in ("nvme1n1", "nvme2n1"):
        node.add_disk(name)
    node.add_md_members(["nvme1n1", "nvme2n1"], level=10)
    md = node.add_md("md127", ["nvme1n1", "nvme2n1"], level="raid10")
    (node.sys / "block/md127/md/degraded").write_text("1\n")
    node.mount(md, "/mnt/k8s-disks/0", source="/dev/md127")
    (node.root / "mnt/k8s-disks/0").mkdir(parents=True)
    (node.root / "run/nodeagent").mkdir(parents=True)
    (node.root / "run/nodeagent/disks-setup.json").write_text(
        json.dumps({"duration_seconds": 12.5, "converged": True}))
    metrics.set_disk_metrics(disk_metrics_snapshot(node.host(), Options()))
    text = generate_latest(metrics.REGISTRY).decode()
    assert "nodeagent_disks_arrays 1.0" in text
    assert "nodeagent_disks_arrays_healthy 0.0" in text  # degraded
    assert "nodeagent_disks_array_degraded_members 1.0" in text
    assert "nodeagent_disks_setup_duration_seconds 12.5" in text
    assert 'nodeagent_disks_volume_free_bytes{mountpoint="/mnt/k8s-disks/0"}' in text
