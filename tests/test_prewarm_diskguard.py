"""Disk-space guard: pure decision, and the statvfs effect with an injected statvfs."""

from __future__ import annotations

import os

import pytest

from nodeagent.containerd.model import FsUsage
from nodeagent.prewarm import diskguard

MiB = 1 << 20


def fs(capacity_mib: int, used_mib: int) -> diskguard.FsStatus:
    return diskguard.FsStatus("/var/lib/containerd/snap", capacity_mib * MiB,
                              (capacity_mib - used_mib) * MiB)


def test_estimate_counts_compressed_blobs_plus_unpacked_layers():
    assert diskguard.estimate_needed(100 * MiB, 2.0) == 300 * MiB


def test_allows_a_pull_that_stays_under_the_high_water_mark():
    decision = diskguard.check("r/a:1", 100 * MiB, fs(1000, 600), 80)
    assert decision.allowed and decision.projected_percent == pytest.approx(70.0)


def test_refuses_with_a_message_naming_image_bytes_fs_and_percent():
    decision = diskguard.check("reg/big:1", 300 * MiB, fs(1000, 600), 80)
    assert not decision.allowed
    for text in ("reg/big:1", "300.0 MiB", "/var/lib/containerd/snap", "60.0%", "90.0%", "80%"):
        assert text in decision.message


def test_in_flight_reservations_count():
    assert diskguard.check("a", 50 * MiB, fs(1000, 600), 80).allowed
    decision = diskguard.check("a", 50 * MiB, fs(1000, 600), 80, reserved_bytes=200 * MiB)
    assert not decision.allowed and "reserved by pulls in flight" in decision.message


def test_high_water_100_disables_the_guard():
    assert diskguard.check("a", 10_000 * MiB, fs(1000, 990), 100).allowed


def test_read_fs_status_uses_statvfs_of_the_cri_mountpoint():
    seen = []

    def fake_statvfs(path: str) -> os.statvfs_result:
        seen.append(path)
        # bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax
        return os.statvfs_result((4096, 4096, 1000, 300, 250, 0, 0, 0, 0, 255))

    usage = [FsUsage("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs", 123, 4)]
    status = diskguard.read_fs_status(usage, host_root="/host", statvfs=fake_statvfs)
    assert seen == ["/host/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"]
    assert status.capacity_bytes == 1000 * 4096 and status.available_bytes == 250 * 4096
    assert status.used_percent == pytest.approx(75.0) and status.containerd_used_bytes == 123


def test_unmeasurable_filesystem_is_a_clear_error(tmp_path):
    missing = FsUsage(str(tmp_path / "nope"), 0, 0)
    with pytest.raises(diskguard.DiskGuardError, match="--high-water 100"):
        diskguard.read_fs_status([missing])
    with pytest.raises(diskguard.DiskGuardError, match="no image filesystem"):
        diskguard.read_fs_status([])


def test_high_water_mark_from_the_environment(monkeypatch):
    from nodeagent.prewarm.config import EngineConfig

    monkeypatch.setenv("NODEAGENT_HIGH_WATER", "90")
    assert EngineConfig().high_water_percent == 90
    assert EngineConfig(high_water_percent=70).high_water_percent == 70
    monkeypatch.delenv("NODEAGENT_HIGH_WATER")
    assert EngineConfig().high_water_percent == 80


def test_bad_high_water_environment_is_a_clear_cli_error(monkeypatch, tmp_path, capsys):
    from nodeagent.cli import main

    hot = tmp_path / "hot.yaml"
    hot.write_text("apiVersion: nodeagent.io/v1alpha1\nkind: HotImageSet\n"
                   "metadata: {name: a}\nspec: {images: [{image: 'reg.example/a:1'}]}\n")
    monkeypatch.setenv("NODEAGENT_HIGH_WATER", "lots")
    assert main(["prewarm", "-f", str(hot), "--containerd-address", str(tmp_path / "no.sock")]) == 2
    assert "NODEAGENT_HIGH_WATER='lots' is not a percentage" in capsys.readouterr().err
