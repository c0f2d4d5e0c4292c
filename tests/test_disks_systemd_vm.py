"""Boot integration with a real systemd and the real Debian containerd package.

A debootstrap'ed Debian bookworm image (tests/disks_image.py: systemd, udev, mdadm,
xfsprogs, python3 and `containerd` installed from Debian, not a stand-in) boots under
QEMU/TCG with 4 emulated NVMe disks. nodeagent is installed as the disks-only zipapp at
/usr/local/bin/nodeagent with systemd/nodeagent-disks.service; a test unit
(tests/support/disks_systemd_guest.py) acts and records each boot:

1. first boot: containerd runs on the root volume with a pre-loaded image; `nodeagent
   disks setup` run from another mount namespace (as from the DaemonSet's container,
   so through nsenter) refuses while containerd runs, then moves everything with
   --restart-services; a second image is imported onto the array.
2. reboot: nothing runs nodeagent; the mount units alone mount the array and the binds
   before containerd starts, and containerd has both images. The boot service is then
   enabled.
3. EC2 stop/start (blank instance store): nodeagent-disks.service re-creates the array
   before containerd starts; containerd comes up with the pre-loaded image copied again
   from the root volume (the second image lived on the wiped instance store).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.disks_image import (
    base_image,
    debugfs,
    kernel_files,
    put_file,
    read_file,
    writable_copy,
)
from support.disks_vm import BOOT_TIMEOUT_S, GIB, REPO, Disk, blank_disk, build_zipapp

pytestmark = pytest.mark.vm

SERIALS = [f"AWS{i}" for i in range(1, 5)]
CONTAINERD_DROPIN = """[Service]
ExecStartPre=/bin/sh -c 'mkdir -p /run/nodeagent-test; { cat /proc/uptime; \
findmnt -n -o SOURCE,FSTYPE --mountpoint /var/lib/containerd || echo NOT-MOUNTED; } \
> /run/nodeagent-test/containerd-start'
"""
TEST_UNIT = """[Unit]
Description=nodeagent test driver
After=containerd.service nodeagent-disks.service
Wants=containerd.service

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /opt/nodeagent-test/guest.py
StandardOutput=journal+console
TimeoutStartSec=1500

[Install]
WantedBy=multi-user.target
"""


def install(root: Path, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    build_zipapp(files / "nodeagent.pyz")
    (files / "defaults").write_text('NODEAGENT_DISKS_ARGS="--instance-store-model '
                                    'QEMU.NVMe.Ctrl"\n')
    (files / "dropin.conf").write_text(CONTAINERD_DROPIN)
    (files / "test.service").write_text(TEST_UNIT)
    units = "/etc/systemd/system"
    debugfs(root, ["mkdir /opt/nodeagent-test", f"mkdir {units}/containerd.service.d",
                   f"mkdir {units}/multi-user.target.wants",
                   f"symlink {units}/multi-user.target.wants/nodeagent-test.service "
                   f"{units}/nodeagent-test.service"])
    put_file(root, files / "nodeagent.pyz", "/usr/local/bin/nodeagent", 0o755)
    put_file(root, REPO / "systemd/nodeagent-disks.service",
             f"{units}/nodeagent-disks.service")
    put_file(root, files / "defaults", "/etc/default/nodeagent-disks")
    put_file(root, files / "dropin.conf", f"{units}/containerd.service.d/10-nodeagent-test.conf")
    put_file(root, files / "test.service", f"{units}/nodeagent-test.service")
    put_file(root, Path(__file__).parent / "support" / "disks_systemd_guest.py",
             "/opt/nodeagent-test/guest.py")


def boot(root: Path, disks: list[Disk], phase: str, tmp_path: Path) -> dict:
    phase_file = tmp_path / "phase"
    phase_file.write_text(phase)
    put_file(root, phase_file, "/opt/nodeagent-test/phase")
    vmlinuz, initrd, _ = kernel_files()
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1G", "-smp", "2", "-nographic",
           "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
           "-append", "console=ttyS0 root=/dev/vda rw panic=-1",
           "-drive", f"file={root},if=virtio,format=raw,cache=unsafe"]
    for i, disk in enumerate(disks):
        cmd += disk.qemu(i).split()
    log = tmp_path / f"console-{phase}.log"
    with open(log, "w") as out:
        try:
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=BOOT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"boot '{phase}' still running after {BOOT_TIMEOUT_S} s "
                                 "(killed); console:\n"
                                 + log.read_text(errors="replace")[-6000:]) from None
    text = read_file(root, f"/var/lib/nodeagent-test/{phase}.json")
    if not text.strip():
        raise AssertionError(f"boot '{phase}' recorded nothing; console:\n"
                             + log.read_text(errors="replace")[-6000:])
    result = json.loads(text)
    assert "guest_error" not in result, result["guest_error"]
    return result


def started_after(units: dict, later: str, earlier: str) -> bool:
    start = int(units[later]["InactiveExitTimestampMonotonic"])
    ready = int(units[earlier]["ActiveEnterTimestampMonotonic"])
    return ready > 0 and start >= ready


@pytest.mark.timeout(3 * BOOT_TIMEOUT_S + 300)  # three boots; the suite's 900 s is one
def test_vm_systemd_boot_integration(tmp_path):
    root = writable_copy(base_image(), tmp_path / "root.img")
    install(root, tmp_path)
    disks = [blank_disk(tmp_path, s, 2 * GIB) for s in SERIALS]

    first = boot(root, disks, "first", tmp_path)
    assert "docker.io/library/preloaded:v1" in first["images_before"]
    assert sorted(d["serial"] for d in first["plan"]["json"]["disks"] if d["used"]) == SERIALS
    assert first["plan"]["rc"] == 3  # plan says setup would refuse: same exit code
    assert first["refused"]["rc"] == 3
    assert "containerd.service running and using /var/lib/containerd" in first["refused"]["err"]
    setup = first["setup"]["json"]
    assert setup["changed"] and setup["converged"]
    assert [s["action"] for s in setup["steps"]].count("StopServices") == 1
    assert first["rerun"]["json"]["changed"] is False
    assert first["containerd_active"]
    assert "docker.io/library/preloaded:v1" in first["images"]
    assert first["mounts"]["/mnt/k8s-disks/0"].endswith("xfs")
    assert first["mounts"]["/var/lib/containerd"].startswith("/dev/md127[/var-lib-containerd]")
    # containerd was restarted onto the bind, not left running on the root volume's copy.
    assert "/dev/md127[/var-lib-containerd]" in first["containerd_start"]
    assert first["import_after"]["rc"] == 0, first["import_after"]["err"]
    assert "docker.io/library/after-setup:v1" in first["images_end"]
    fs_uuid = first["md_uuid_fs"]

    second = boot(root, disks, "reboot", tmp_path)
    units = second["units"]
    assert units["nodeagent-disks.service"]["ActiveState"] == "inactive"  # units alone
    for unit in ("mnt-k8s\\x2ddisks-0.mount", "var-lib-containerd.mount",
                 "var-lib-kubelet.mount", "var-log-pods.mount"):
        assert units[unit]["ActiveState"] == "active", (unit, units[unit])
        assert started_after(units, "containerd.service", unit), (unit, units)
    assert "/dev/md127[/var-lib-containerd]" in second["containerd_start"]
    assert {"docker.io/library/preloaded:v1", "docker.io/library/after-setup:v1"} <= set(
        second["images"])
    assert second["md_uuid_fs"] == fs_uuid
    assert json.loads(second["rerun"]["out"])["changed"] is False
    assert second["enable"]["rc"] == 0, second["enable"]["err"]

    fresh = [blank_disk(tmp_path, s, 2 * GIB) for s in SERIALS]
    third = boot(root, fresh, "stopstart", tmp_path)
    units = third["units"]
    assert units["nodeagent-disks.service"]["Result"] == "success", third["disks_journal"]
    assert started_after(units, "containerd.service", "nodeagent-disks.service")
    for unit in ("mnt-k8s\\x2ddisks-0.mount", "var-lib-containerd.mount"):
        assert started_after(units, "containerd.service", unit), (unit, units)
    # No wait on the old filesystem's UUID: containerd starts right after the service.
    gap = (int(units["containerd.service"]["InactiveExitTimestampMonotonic"])
           - int(units["nodeagent-disks.service"]["ActiveEnterTimestampMonotonic"]))
    assert gap < 30_000_000, f"containerd started {gap / 1e6:.1f} s after setup"
    assert third["md_uuid_fs"] and third["md_uuid_fs"] != fs_uuid
    assert "docker.io/library/preloaded:v1" in third["images"]
    assert "docker.io/library/after-setup:v1" not in third["images"]
    assert "/dev/md127[/var-lib-containerd]" in third["containerd_start"]
    assert "var-lib-containerd.mount" in third["requires"]  # RequiredBy once enabled
    assert third["failed_units"].strip() == "", third["failed_units"]
    assert json.loads(third["rerun"]["out"])["changed"] is False
    print(json.dumps({"containerd_start_s": {
        b["phase"]: int(b["units"]["containerd.service"]["InactiveExitTimestampMonotonic"]) / 1e6
        for b in (first, second, third)}, "setup_s_first_boot": setup["duration_seconds"]}))
