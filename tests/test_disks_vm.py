"""`nodeagent disks setup` on real emulated NVMe disks in a QEMU VM (TCG), with the real
kernel md driver, mdadm, mkfs.xfs/ext4, udev and mount.

Boots are grouped to keep the suite short (each TCG boot with its scenario costs ~150 s
on the 2-core CI machine):
- test_vm_raid0_lifecycle: 3 boots of one node (EBS stand-in + 4 x 4 GiB instance store):
  fresh setup with data moved into the binds and a no-op re-run; reboot with the same disks
  (array re-assembled and mounted, not reformatted, data intact); EC2 stop/start (same
  root volume, blank instance store: array and filesystem re-created, content copied again
  from the root volume).
- test_vm_other_scenarios: 1 boot, 12 disks: no instance store, a foreign filesystem
  refused, one disk, raid10, ext4, the mount strategy, and a run SIGKILLed between array
  creation and mkfs that converges on re-run.
Every `nodeagent disks` call in the VM is the single-file zipapp run by the system
/usr/bin/python3 (no nodeagent dependencies there), as the boot service runs it on a node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.disks_vm import BOOT_TIMEOUT_S, GIB, Disk, blank_disk, run_vm, workdir

pytestmark = pytest.mark.vm

SERIALS = [f"AWS{i}" for i in range(1, 5)]


def nodeagent_json(step: dict) -> dict:
    assert step["rc"] == 0, step["err"][-3000:]
    return step["json"]


def used_serials(plan: dict) -> list[str]:
    return sorted(d["serial"] for d in plan["disks"] if d["used"])


def actions(plan_or_result: dict) -> list[str]:
    return [s["action"] for s in plan_or_result["steps"]]


def comparable(manifest: dict) -> dict:
    """A manifest without allocation sizes (ext4 and XFS allocate differently)."""
    return {k: {f: v for f, v in e.items() if f != "allocated"} for k, e in manifest.items()}


def check_copy(source: dict, bound: dict) -> None:
    assert comparable(bound) == comparable(source)
    assert bound["sparse.img"]["allocated"] < (1 << 20), "holes must survive the copy"
    snap = "io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs"
    assert bound[snap]["uid"] == 1234 and bound[snap]["mode"] == 0o2750
    assert "trusted.overlay.opaque" in bound[snap]["xattrs"]
    assert bound["meta.db.hardlink"]["inode_group"] == bound[
        "io.containerd.metadata.v1.bolt/meta.db"]["inode_group"]


def check_converged_rerun(r: dict) -> dict:
    rerun = nodeagent_json(r["rerun"])
    assert rerun["changed"] is False and rerun["steps"] == []
    return rerun


@pytest.mark.timeout(3 * BOOT_TIMEOUT_S + 300)  # three boots; the suite's 900 s is one
def test_vm_raid0_lifecycle(tmp_path):
    ebs = blank_disk(tmp_path, "EBSROOT", GIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ebs.path)], check=True)
    disks = [blank_disk(tmp_path, s, 4 * GIB) for s in SERIALS]
    work = workdir("raid0-lifecycle")
    args = {"ebs": "EBSROOT", "serials": SERIALS}

    # ---- boot 1: fresh instance store
    first = run_vm([ebs, *disks], "main", work, {**args, "phase": "fresh"}).results
    assert "driver_error" not in first, first.get("driver_error")
    plan = nodeagent_json(first["plan"])
    assert used_serials(plan) == SERIALS
    ebs_disk = next(d for d in plan["disks"] if d["serial"] == "EBSROOT")
    assert ebs_disk["reason"] == "holds a mounted filesystem (/tmp/ebs)"
    assert actions(plan)[:3] == ["CreateArray", "MakeFilesystem", "MountVolume"]
    setup = nodeagent_json(first["setup"])
    assert setup["changed"] and setup["converged"]
    md = first["after_md"]
    assert (md["MD_LEVEL"], md["MD_DEVICES"], md["MD_NAME"]) == ("raid0", "4",
                                                                 "any:kubernetes")
    assert first["after_fs"]["TYPE"] == "xfs" and first["after_fs"]["LABEL"] == "k8s-disks-0"
    assert "sunit=64 blks" in first["xfs_log"], first["xfs_log"]  # log su = 256 KiB chunk
    assert first["after_mount"]["fstype"] == "xfs"
    assert "noatime" in first["after_mount"]["options"]
    for path, mnt in first["after_binds"].items():
        name = path.strip("/").replace("/", "-")
        assert mnt["source"].endswith(f"[/{name}]"), mnt
    containerd = "/tmp/ebs/var/lib/containerd"
    check_copy(first["source_manifest"][containerd], first["bound_manifest"][containerd])
    fs_uuid = first["after_fs"]["UUID"]
    vol_unit = first["units"]["tmp-ebs-mnt-k8s\\x2ddisks-0.mount"]
    assert f"What=/dev/disk/by-uuid/{fs_uuid}\n" in vol_unit
    assert "tmp-ebs-var-lib-containerd.mount" in first["units"]
    check_converged_rerun(first)
    status = first["status"]["json"]
    assert status["healthy"] and status["arrays"][0]["state"] in ("clean", "active")
    assert first["readers_agree"]["equal"], first["readers_agree"]
    assert first["readers_agree"]["nvme_models"] == ["QEMU NVMe Ctrl"]

    # ---- boot 2: reboot, same disks
    second = run_vm([ebs, *disks], "main", work, {**args, "phase": "reboot"}).results
    assert "driver_error" not in second, second.get("driver_error")
    plan = nodeagent_json(second["plan"])
    assert "CreateArray" not in actions(plan) and "MakeFilesystem" not in actions(plan)
    assert {s["copy"] for s in plan["steps"] if s["action"] == "MoveDir"} == {"if-missing"}
    assert nodeagent_json(second["setup"])["changed"]
    assert second["after_fs"]["UUID"] == fs_uuid, "the filesystem must not be re-made"
    bound = second["bound_manifest"][containerd]
    assert "written-after-setup" in bound
    check_copy(first["source_manifest"][containerd],
               {k: v for k, v in bound.items() if k != "written-after-setup"})
    # The root volume's own copy is untouched (nothing deleted, nothing re-copied); setup
    # only made the missing /var/log/pods mount point there.
    pods = "/tmp/ebs/var/log/pods"
    assert second["source_manifest"].pop(pods) == {".": {
        "type": 0o40000, "mode": 0o755, "uid": 0, "gid": 0, "mtime_ns": 0, "xattrs": {}}}
    assert second["source_manifest"] == first["source_manifest"]
    check_converged_rerun(second)

    # ---- boot 3: EC2 stop/start: same root volume, blank instance store
    fresh = [blank_disk(tmp_path, s, 4 * GIB) for s in SERIALS]
    third = run_vm([ebs, *fresh], "main", work, {**args, "phase": "stopstart"}).results
    assert "driver_error" not in third, third.get("driver_error")
    assert not [line for line in third["before_mdstat"].splitlines() if line.startswith("md")]
    plan = nodeagent_json(third["plan"])
    assert actions(plan)[:3] == ["CreateArray", "MakeFilesystem", "MountVolume"]
    assert nodeagent_json(third["setup"])["converged"]
    new_uuid = third["after_fs"]["UUID"]
    assert new_uuid and new_uuid != fs_uuid
    check_copy(first["source_manifest"][containerd], third["bound_manifest"][containerd])
    assert f"What=/dev/disk/by-uuid/{new_uuid}\n" in third["units"][
        "tmp-ebs-mnt-k8s\\x2ddisks-0.mount"]
    check_converged_rerun(third)
    print(json.dumps({"boot_seconds": [first["_seconds"], second["_seconds"],
                                       third["_seconds"]]}))
    shutil.rmtree(work)  # kept only when a check failed, for its logs


OTHERS = ["FOREIGN1", "SINGLE1", "R10_1", "R10_2", "R10_3", "R10_4", "EXT1", "EXT2",
          "MNT1", "MNT2", "KILL1", "KILL2"]


def foreign_disk(tmp_path: Path) -> Disk:
    disk = blank_disk(tmp_path, "FOREIGN1", GIB)
    content = tmp_path / "foreign-content"
    content.mkdir()
    (content / "keep.txt").write_text("keep me")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "userdata", "-d", str(content),
                    str(disk.path)], check=True)
    return disk


def test_vm_other_scenarios(tmp_path):
    disks = [foreign_disk(tmp_path)] + [blank_disk(tmp_path, s, GIB) for s in OTHERS[1:]]
    work = workdir("others")
    r = run_vm(disks, "others", work, {"all_serials": OTHERS}).results
    assert "driver_error" not in r, r.get("driver_error")

    # No instance store at all (QEMU's model is not Amazon's): exit 0, nothing done.
    none = nodeagent_json(r["none"])
    assert none["changed"] is False and none["steps"] == []
    assert not r["none_units_dir_exists"]

    # Foreign filesystem: refused (exit 3), named, untouched.
    foreign = r["foreign"]
    assert foreign["setup"]["rc"] == 3
    assert foreign["plan"]["rc"] == 3  # plan exits as setup would
    assert "(FOREIGN1) carries ext4 label 'userdata'" in foreign["setup"]["err"]
    assert "--force nvme" in foreign["setup"]["err"]
    assert [d["blocking"] for d in foreign["plan"]["json"]["disks"]
            if d["serial"] == "FOREIGN1"] == [True]
    assert foreign["file_after"] == "keep me"
    assert foreign["disks"]["FOREIGN1"]["TYPE"] == "ext4"

    # One disk, used directly (every VM run is the zipapp under the system python3, which
    # has no pyudev: the direct sysfs reader).
    single = r["single"]
    assert nodeagent_json(single["plan"])["discovery"] == "sysfs"
    assert nodeagent_json(single["setup"])["changed"]
    assert single["mounts"]["/tmp/t-single/mnt/0"]["source"].startswith("/dev/nvme")
    assert single["disks"]["SINGLE1"]["TYPE"] == "xfs"
    assert single["preloaded"] == "single"
    check_converged_rerun(single)

    raid10 = r["raid10"]
    assert nodeagent_json(raid10["setup"])["converged"]
    assert (raid10["md"]["MD_LEVEL"], raid10["md"]["MD_DEVICES"]) == ("raid10", "4")
    assert "resync" not in raid10["mdstat"], "blank members: created clean, no resync"
    assert raid10["mounts"]["/tmp/t-raid10/mnt/0"]["fstype"] == "xfs"
    assert raid10["preloaded"] == "raid10"

    ext4 = r["ext4"]
    assert nodeagent_json(ext4["setup"])["converged"]
    assert ext4["fs"]["TYPE"] == "ext4" and ext4["fs"]["LABEL"] == "k8s-disks-0"
    assert ext4["mounts"]["/tmp/t-ext4/mnt/0"]["fstype"] == "ext4"
    check_converged_rerun(ext4)

    mount = r["mount"]
    assert nodeagent_json(mount["setup"])["converged"]
    for index in (0, 1):
        assert mount["mounts"][f"/tmp/t-mount/mnt/{index}"]["source"].startswith("/dev/nvme")
    assert {d["LABEL"] for d in mount["disks"].values()} == {"k8s-disks-0", "k8s-disks-1"}
    check_converged_rerun(mount)

    killed = r["killed"]
    assert killed["setup"]["rc"] == -9, killed["setup"]
    assert killed["md_after_kill"]["MD_LEVEL"] == "raid0"
    assert "TYPE" not in killed["fs_after_kill"]
    again = nodeagent_json(killed["plan_again"])
    assert actions(again)[0] == "MakeFilesystem", "the array is reused, not re-created"
    assert nodeagent_json(killed["setup_again"])["converged"]
    assert killed["fs_after"]["TYPE"] == "xfs"
    assert killed["mounts_after"]["/tmp/t-killed/var/lib/containerd"]["source"].endswith(
        "[/tmp-t-killed-var-lib-containerd]")
    check_converged_rerun(killed)
    print(json.dumps({"boot_seconds": r["_seconds"], "driver_seconds": r["_driver_seconds"]}))
    shutil.rmtree(work)
