"""`nodeagent demo`: work-dir safety, the sample hot list, and a real end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodeagent.api.hotimageset import load_hotimageset_file
from nodeagent.errors import UsageError
from nodeagent.prewarm.desired import select_and_merge
from nodeagent.sandbox.commands import MARKER, hotlist_yaml, prepare_workdir
from nodeagent.sandbox.images import sample_image_set


def test_sample_hotlist_is_valid_and_selects_every_image(tmp_path: Path) -> None:
    images = sample_image_set("demo", cache_dir=tmp_path / "cache")
    path = tmp_path / "hot.yaml"
    path.write_text(hotlist_yaml("127.0.0.1:5000", images))
    sets = load_hotimageset_file(path)
    assert [s.name for s in sets] == ["demo-serving", "demo-batch"]
    desired = select_and_merge(sets, {"kubernetes.io/os": "linux"})
    assert {str(d.reference) for d in desired} == {i.ref("127.0.0.1:5000") for i in images}
    assert desired[0].pin and desired[0].priority == 100


def test_workdir_that_is_not_ours_is_refused_and_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    with pytest.raises(UsageError, match=str(tmp_path)):
        prepare_workdir(tmp_path)
    assert precious.read_text() == "keep me"


def test_our_own_previous_workdir_is_reset(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    prepare_workdir(workdir)
    (workdir / "leftover").write_text("x")
    prepare_workdir(workdir)
    assert not (workdir / "leftover").exists() and (workdir / MARKER).exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", "--log-format", "json", *args],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.containerd
def test_demo_end_to_end_keep_then_stop(tmp_path: Path) -> None:
    """Runs the real demo: registry + private containerd + prewarm + images listing."""
    for binary in ("containerd", "docker-registry"):
        if subprocess.run(["which", binary], capture_output=True).returncode:
            pytest.skip(f"{binary!r} not installed (./.ci/setup installs it)")
    if os.geteuid() != 0:
        pytest.skip("the demo's private containerd needs root")
    workdir = tmp_path / "demo"
    run = _cli("demo", "--workdir", str(workdir), "--keep")
    assert run.returncode == 0, run.stdout + run.stderr
    pids = json.loads((workdir / MARKER).read_text())["pids"]
    try:
        assert set(pids) == {"containerd", "docker-registry"}
        assert "nodeagent-demo/model-server:1.0" in run.stdout  # `nodeagent images` output
        assert "nodeagent demo --stop" in run.stdout
        again = _cli("demo", "--workdir", str(workdir))
        assert again.returncode != 0 and "--stop" in again.stderr  # refuses a running demo
    finally:
        stop = _cli("demo", "--workdir", str(workdir), "--stop")
    assert stop.returncode == 0, stop.stderr
    for pid in pids.values():
        assert not _running(pid)


def _running(pid: int) -> bool:
    """Alive and not a zombie (the kept daemons' parent is gone; init reaps them later)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
