"""Discovery + planning over fake sysfs trees whose device images carry real signatures.

Each test builds a node (tests/disks_fakes.py), gathers facts with the real discovery code
(sysfs reader, superblock parser, real `blkid -p` on the image files) and checks the plan:
which disks are used, why the others are not, the steps, and the refusals.
"""

from __future__ import annotations

import pytest
from support.disks_fakes import EBS, FakeNode

from nodeagent.disks import steps as st
from nodeagent.disks.discover import gather
from nodeagent.disks.options import Options
from nodeagent.disks.plan import Plan, desired_units, make_plan
from nodeagent.disks.units import BOOT_SERVICE


def plan_for(node: FakeNode, **opts: object) -> Plan:
    options = Options(**opts)  # type: ignore[arg-type]
    return make_plan(gather(node.host(), options, prefer_pyudev=False), options)


def actions(plan: Plan) -> list[str]:
    return [s.action for s in plan.steps]


def reasons(plan: Plan) -> dict[str, str]:
    return {d.disk: d.reason for d in plan.decisions}


@pytest.fixture
def node(tmp_path):
    """An EC2-like node: EBS root on nvme0n1 (partition 1 mounted at /), one virtio disk."""
    n = FakeNode(tmp_path)
    n.add_disk("nvme0n1", model=EBS, serial="vol0123456789abcdef0", partitions=1)
    n.mountinfo.clear()
    n.mount(n.devnum("nvme0n1p1"), "/", fstype="xfs", source="/dev/nvme0n1p1")
    n.add_disk("vda", model="", serial="virtio0")
    return n


def test_fresh_instance_store_makes_raid0_and_moves_dirs(node):
    node.add_disk("nvme1n1", serial="AWS1")
    node.add_disk("nvme2n1", serial="AWS2")
    node.mkdir("/var/lib/containerd", {"meta.db": b"x"})
    node.mkdir("/var/lib/kubelet")
    plan = plan_for(node)
    assert plan.refusals == []
    assert actions(plan) == ["CreateArray", "MakeFilesystem", "MountVolume", "WriteUnits",
                             "MoveDir", "MoveDir", "MoveDir"]
    create = plan.steps[0]
    assert isinstance(create, st.CreateArray)
    assert create.members == ("nvme1n1", "nvme2n1") and create.level == "raid0"
    assert create.chunk_kib == 256
    mkfs = plan.steps[1]
    assert isinstance(mkfs, st.MakeFilesystem) and mkfs.fstype == "xfs"
    assert mkfs.chunk_kib == 256 and mkfs.label == "k8s-disks-0"
    why = reasons(plan)
    assert why["nvme0n1"].startswith("EBS volume")
    assert why["vda"] == "not an NVMe disk"
    moves = {s.path: s for s in plan.steps if isinstance(s, st.MoveDir)}
    assert moves["/var/lib/containerd"].copy == "yes"
    assert moves["/var/log/pods"].copy == "no"  # does not exist: nothing to copy
    assert moves["/var/lib/containerd"].target == "/mnt/k8s-disks/0/var-lib-containerd"


def test_ebs_is_never_used_even_when_the_pattern_matches_everything(node):
    node.add_disk("nvme1n1", model=EBS, serial="vol0aaa")
    plan = plan_for(node, instance_store_model=".*")
    assert not any(d.used for d in plan.decisions)
    assert reasons(plan)["nvme1n1"].startswith("EBS volume")
    assert plan.notes == ["no instance-store disks to use: nothing to do"]


def test_no_instance_store_is_nothing_to_do(node):
    plan = plan_for(node)
    assert plan.converged and plan.volumes == []


def test_root_disk_is_excluded_and_cannot_be_forced(tmp_path):
    n = FakeNode(tmp_path)
    n.add_disk("nvme0n1", partitions=1)  # instance-store model, but it holds /
    n.mountinfo.clear()
    n.mount(n.devnum("nvme0n1p1"), "/", source="/dev/nvme0n1p1")
    assert reasons(plan_for(n))["nvme0n1"] == "holds the root filesystem"
    forced = plan_for(n, force=("nvme0n1",))
    assert any("cannot be forced: holds the root filesystem" in r for r in forced.refusals)


def test_mounted_swap_and_foreign_holder_disks_are_left_alone(node):
    node.add_disk("nvme1n1")
    node.mount(node.devnum("nvme1n1"), "/data", source="/dev/nvme1n1")
    node.add_disk("nvme2n1")
    (node.sys / "block" / "nvme2n1" / "holders" / "dm-0").write_text("")
    node.add_disk("nvme3n1")
    plan = plan_for(node)
    why = reasons(plan)
    assert why["nvme1n1"] == "holds a mounted filesystem (/data)"
    assert why["nvme2n1"] == "in use by dm-0"
    assert plan.refusals == []
    assert [d.disk for d in plan.decisions if d.used] == ["nvme3n1"]


def test_foreign_filesystem_is_refused_unless_forced(node):
    node.add_disk("nvme1n1", serial="AWS1")
    node.add_disk("nvme2n1", serial="AWS2")
    node.mkfs("nvme2n1", "ext4", label="userdata")
    plan = plan_for(node)
    assert plan.steps == []
    assert len(plan.refusals) == 1
    assert "nvme2n1 (AWS2) carries ext4 label 'userdata'" in plan.refusals[0]
    assert "--force nvme2n1" in plan.refusals[0]
    assert [d.disk for d in plan.decisions if d.blocking] == ["nvme2n1"]
    forced = plan_for(node, force=("AWS2",))  # a serial works too
    assert forced.refusals == []
    assert actions(forced)[:2] == ["WipeDisk", "CreateArray"]


def test_partitioned_disk_is_refused_and_force_wipes_partitions(node):
    node.add_disk("nvme1n1", partitions=1)
    plan = plan_for(node)
    assert "has partitions (nvme1n1p1)" in plan.refusals[0]
    forced = plan_for(node, force=("/dev/nvme1n1",))
    wipe = forced.steps[0]
    assert isinstance(wipe, st.WipeDisk) and wipe.partitions == ("nvme1n1p1",)
    assert "dos partition table" in wipe.had


def test_foreign_raid_member_is_refused(node):
    node.add_disk("nvme1n1")
    node.add_disk("nvme2n1")
    node.add_md_members(["nvme1n1", "nvme2n1"], array_name="db-host:pgdata")
    plan = plan_for(node)
    assert len(plan.refusals) == 2
    assert "md member of 'db-host:pgdata'" in plan.refusals[0]


def test_unknown_force_and_disk_names_are_reported(node):
    plan = plan_for(node, force=("nvme9n1",), only=("nvme8n1",))
    assert plan.refusals == [
        "--force nvme9n1: no such disk (give a kernel name like nvme1n1, a /dev path or a "
        "serial)",
        "--disk nvme8n1: no such disk (give a kernel name like nvme1n1, a /dev path or a "
        "serial)"]


def converged_node(node: FakeNode, hard: bool = False) -> FakeNode:
    """A node exactly as setup leaves it: array md127 of ours, XFS, mounted, bound, units."""
    for i in (1, 2):
        node.add_disk(f"nvme{i}n1")
    node.add_md_members(["nvme1n1", "nvme2n1"])
    md = node.add_md("md127", ["nvme1n1", "nvme2n1"])
    fs_uuid = node.mkfs("md127", "xfs", label="k8s-disks-0")
    node.mount(md, "/mnt/k8s-disks/0", source="/dev/md127")
    for path in ("/var/lib/containerd", "/var/lib/kubelet", "/var/log/pods"):
        node.mkdir(path)
        node.mkdir(f"/mnt/k8s-disks/0/{path.strip('/').replace('/', '-')}")
        node.mount(md, path, root="/" + path.strip("/").replace("/", "-"), source="/dev/md127")
    opts = Options()
    units_dir = node.root / "etc/systemd/system"
    units_dir.mkdir(parents=True)
    if hard:
        (units_dir / "multi-user.target.wants").mkdir()
        (units_dir / "multi-user.target.wants" / BOOT_SERVICE).symlink_to(
            f"/etc/systemd/system/{BOOT_SERVICE}")
    plan = make_plan(gather(node.host(), opts, prefer_pyudev=False), opts)
    assert plan.volumes[0].fs_uuid == fs_uuid
    for unit in desired_units(opts, plan.volumes, plan.binds, hard):
        (units_dir / unit.name).write_text(unit.text())
        for link, target in unit.install_links().items():
            (units_dir / link).parent.mkdir(exist_ok=True)
            (units_dir / link).symlink_to(target)
    return node


@pytest.mark.parametrize("hard", [False, True])
def test_already_set_up_node_plans_nothing(node, hard):
    node = converged_node(node, hard)
    plan = plan_for(node)
    assert plan.converged, [s.describe() for s in plan.steps] + plan.refusals
    assert plan.volumes[0].device == "md127" and plan.volumes[0].mounted
    assert {b.state for b in plan.binds} == {"bound"}
    assert [d.reason for d in plan.decisions if d.used] == [
        "member of array 'kubernetes' (md127, clean)"] * 2


def test_unit_dependency_follows_the_boot_service(node):
    node = converged_node(node, hard=False)
    units = node.root / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(exist_ok=True)
    (units / "multi-user.target.wants" / BOOT_SERVICE).symlink_to("../" + BOOT_SERVICE)
    plan = plan_for(node)
    assert actions(plan) == ["WriteUnits"]
    assert plan.steps[0].hard
    assert "RequiredBy=containerd.service" in plan.units[1].text()


def test_stale_units_do_not_hide_blank_disks_after_stop_start(node):
    """EC2 stop/start: the root volume keeps units (old UUID) and the old copies, the
    instance store comes back blank: the plan must re-create from the disks' state."""
    node = converged_node(node)
    fresh = FakeNode(node.base.parent / "after")
    fresh.add_disk("nvme0n1", model=EBS, partitions=1)
    fresh.mountinfo.clear()
    fresh.mount(fresh.devnum("nvme0n1p1"), "/", source="/dev/nvme0n1p1")
    fresh.add_disk("nvme1n1")
    fresh.add_disk("nvme2n1")
    fresh.root.rmdir()
    (node.root).rename(fresh.root)  # same root volume, markers and all
    plan = plan_for(fresh)
    assert actions(plan)[:3] == ["CreateArray", "MakeFilesystem", "MountVolume"]
    assert {s.copy for s in plan.steps if isinstance(s, st.MoveDir)} == {"yes"}


def test_our_members_without_running_array_are_assembled(node):
    node.add_disk("nvme1n1")
    node.add_disk("nvme2n1")
    uuid = node.add_md_members(["nvme1n1", "nvme2n1"])
    plan = plan_for(node)
    assert actions(plan)[:3] == ["AssembleArray", "MakeFilesystem", "MountVolume"]
    assert plan.steps[0].uuid == uuid
    assert plan.steps[1].when == "if-blank"


def test_inactive_partial_array_is_stopped_then_assembled(node):
    node.add_disk("nvme1n1")
    node.add_disk("nvme2n1")
    node.add_md_members(["nvme1n1", "nvme2n1"])
    node.add_md("md127", ["nvme1n1"], state="inactive")
    plan = plan_for(node)
    assert actions(plan)[:2] == ["StopArray", "AssembleArray"]


def test_array_missing_members_is_refused_with_force_hint(node):
    for i in (1, 2, 3):
        node.add_disk(f"nvme{i}n1")
    node.add_md_members(["nvme1n1", "nvme2n1"], raid_disks=4)
    plan = plan_for(node)
    assert len(plan.refusals) == 1
    assert "has only 2 of 4 members" in plan.refusals[0]
    assert "--force nvme1n1 --force nvme2n1" in plan.refusals[0]
    forced = plan_for(node, force=("nvme1n1", "nvme2n1"))
    assert forced.refusals == []
    create = next(s for s in forced.steps if isinstance(s, st.CreateArray))
    assert create.members == ("nvme1n1", "nvme2n1", "nvme3n1")


def test_one_disk_is_used_directly(node):
    node.add_disk("nvme1n1")
    plan = plan_for(node)
    assert "CreateArray" not in actions(plan)
    assert plan.volumes[0].kind == "disk" and plan.volumes[0].device == "nvme1n1"
    assert plan.steps[0].chunk_kib == 0  # no RAID geometry for the log stripe


def test_one_disk_with_our_filesystem_is_reused(node):
    node.add_disk("nvme1n1")
    fs_uuid = node.mkfs("nvme1n1", "xfs", label="k8s-disks-0")
    plan = plan_for(node)
    assert actions(plan)[0] == "MountVolume"
    assert plan.volumes[0].fs_uuid == fs_uuid


def test_unfinished_xfs_of_ours_is_made_again(node):
    node.add_disk("nvme1n1")
    node.mkfs("nvme1n1", "xfs", label="k8s-disks-0")
    node.write("nvme1n1", 126, b"\x01")  # sb_inprogress: mkfs.xfs was killed
    plan = plan_for(node)
    mkfs = plan.steps[0]
    assert isinstance(mkfs, st.MakeFilesystem) and mkfs.overwrite


def test_raid10_needs_four_disks(node):
    for i in (1, 2):
        node.add_disk(f"nvme{i}n1")
    assert plan_for(node, strategy="raid10").refusals == [
        "raid10 needs at least 4 disks; found 2 (nvme1n1, nvme2n1)"]
    for i in (3, 4):
        node.add_disk(f"nvme{i}n1")
    plan = plan_for(node, strategy="raid10")
    assert plan.steps[0].level == "raid10" and len(plan.steps[0].members) == 4


def test_ext4_option(node):
    node.add_disk("nvme1n1")
    node.add_disk("nvme2n1")
    plan = plan_for(node, filesystem="ext4")
    assert plan.steps[1].fstype == "ext4"


def test_mount_strategy_keeps_existing_indexes(node):
    for i in (1, 2, 3):
        node.add_disk(f"nvme{i}n1")
    node.mkfs("nvme2n1", "xfs", label="k8s-disks-1")
    plan = plan_for(node, strategy="mount")
    assert {v.members[0]: v.mountpoint for v in plan.volumes} == {
        "nvme2n1": "/mnt/k8s-disks/1", "nvme1n1": "/mnt/k8s-disks/0",
        "nvme3n1": "/mnt/k8s-disks/2"}
    assert plan.binds == []


def test_strategy_none_touches_nothing(node):
    node.add_disk("nvme1n1")
    plan = plan_for(node, strategy="none")
    assert plan.converged and plan.decisions == []


def test_running_service_blocks_the_move_unless_restart_is_allowed(node):
    node.add_disk("nvme1n1")
    node.mkdir("/var/lib/containerd")
    node.running("containerd", "kubelet")
    plan = plan_for(node)
    assert any("containerd.service running and using /var/lib/containerd" in r
               for r in plan.refusals)
    allowed = plan_for(node, restart_services=True)
    stop = next(s for s in allowed.steps if isinstance(s, st.StopServices))
    start = next(s for s in allowed.steps if isinstance(s, st.StartServices))
    assert stop.units == ("kubelet.service", "containerd.service")
    assert start.units == ("containerd.service", "kubelet.service")
    order = actions(allowed)
    assert order.index("StopServices") < order.index("MoveDir") < order.index("StartServices")


def test_symlinked_bind_dir_is_refused(node):
    node.add_disk("nvme1n1")
    node.mkdir("/data/containerd")
    (node.root / "var/lib").mkdir(parents=True)
    (node.root / "var/lib/containerd").symlink_to("/data/containerd")
    plan = plan_for(node)
    assert any("--bind /var/lib/containerd: is a symlink" in r for r in plan.refusals)


def test_soci_dir_joins_the_default_binds_when_present(node):
    node.add_disk("nvme1n1")
    node.mkdir("/var/lib/soci-snapshotter-grpc")
    plan = plan_for(node)
    assert "/var/lib/soci-snapshotter-grpc" in [b.path for b in plan.binds]
    assert [b.path for b in plan_for(node, binds=("/srv/x",), binds_given=True).binds] == [
        "/srv/x"]


def test_something_else_mounted_on_the_mount_path_is_refused(node):
    node.add_disk("nvme1n1")
    node.mount("0:50", "/mnt/k8s-disks/0", fstype="tmpfs", source="tmpfs")
    plan = plan_for(node)
    assert plan.refusals == ["/mnt/k8s-disks/0 already has tmpfs (tmpfs) mounted: unmount "
                             "it or choose --mount-path"]


def test_foreign_bind_mount_is_left_alone(node):
    node.add_disk("nvme1n1")
    node.mkdir("/var/lib/kubelet")
    node.mount("0:51", "/var/lib/kubelet", fstype="tmpfs", source="tmpfs")
    plan = plan_for(node)
    kubelet = next(b for b in plan.binds if b.path == "/var/lib/kubelet")
    assert kubelet.state == "left-alone"
    assert "/var/lib/kubelet" not in [s.path for s in plan.steps if isinstance(s, st.MoveDir)]


def test_array_of_our_name_over_ebs_volumes_is_not_adopted(node):
    node.add_disk("nvme1n1", model=EBS, serial="vol0a")
    node.add_disk("nvme2n1", model=EBS, serial="vol0b")
    node.add_md_members(["nvme1n1", "nvme2n1"])
    node.add_md("md127", ["nvme1n1", "nvme2n1"])
    node.add_disk("nvme3n1")
    plan = plan_for(node)
    assert "built from disks that are not eligible instance store" in plan.notes[0]
    assert plan.volumes[0].members == ("nvme3n1",) and plan.volumes[0].kind == "disk"
