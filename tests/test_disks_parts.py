"""The disk code's parts on this host: superblock parsing against real tools, systemd
escaping against systemd-escape, the copy check against real `cp -a`, the Bottlerocket
delegation through a fake `apiclient` executable, the zipapp under a bare python3, and
the CLI's error handling. (The RAID work itself is proven in the VM: tests/test_disks_vm.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.disks_fakes import INSTANCE_STORE, FakeNode, md_superblock

from nodeagent.cli import main
from nodeagent.disks import migrate, signatures
from nodeagent.disks.apply import setup
from nodeagent.disks.discover import gather
from nodeagent.disks.options import Options
from nodeagent.disks.plan import make_plan
from nodeagent.disks.status import disk_metrics_snapshot
from nodeagent.disks.units import bind_unit, escape_path, volume_unit
from nodeagent.errors import UsageError
from nodeagent.hostfacts import sysfs

MIB = 1 << 20


def image(tmp_path: Path, name: str, size: int = 64 * MIB) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# ------------------------------------------------------------------ signatures


def test_md_superblock_fixture_is_what_mdadm_and_blkid_read(tmp_path):
    """The md superblocks the fake nodes use are real: mdadm and libblkid accept them."""
    path = image(tmp_path, "m.img")
    set_uuid = uuid.uuid4().bytes
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(md_superblock("any:kubernetes", 0, 4, 2, set_uuid, 64 * MIB, events=7))
    out = subprocess.run(["mdadm", "--examine", "--export", str(path)], check=True,
                         capture_output=True, text=True).stdout
    exported = dict(line.split("=", 1) for line in out.splitlines())
    assert exported["MD_NAME"] == "any:kubernetes"
    assert exported["MD_LEVEL"] == "raid0" and exported["MD_DEVICES"] == "4"
    sig = signatures.probe(str(path), 64 * MIB)
    assert sig.md is not None
    assert sig.md.array_uuid == exported["MD_UUID"]
    assert (sig.md.short_name, sig.md.role, sig.md.events, sig.md.raid_disks) == (
        "kubernetes", 2, 7, 4)
    assert sig.md.chunk_bytes == 256 * 1024
    assert signatures.blkid_probe(str(path))["TYPE"] == "linux_raid_member"


def test_md_superblock_with_bad_checksum_is_not_trusted(tmp_path):
    path = image(tmp_path, "m.img")
    sb = bytearray(md_superblock("any:kubernetes", 0, 2, 0, uuid.uuid4().bytes, 64 * MIB))
    sb[40] ^= 0xFF  # corrupt the name
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(sb)
    # Never taken for ours (the name could be anything); blkid still sees a RAID member,
    # so the plan treats the disk as holding foreign data and refuses it.
    sig = signatures.probe(str(path), 64 * MIB)
    assert sig.md is None
    assert (sig.kind, sig.fstype, sig.source) == ("other", "linux_raid_member", "blkid")


def test_md_v10_superblock_at_the_end_is_found(tmp_path):
    size = 64 * MIB
    path = image(tmp_path, "m.img", size)
    sectors = size // 512
    with open(path, "r+b") as f:
        f.seek(((sectors - 16) & ~7) * 512)
        f.write(md_superblock("any:kubernetes", 0, 2, 1, uuid.uuid4().bytes, size))
    sig = signatures.probe(str(path), size)
    assert sig.md is not None and sig.md.version == "1.0" and sig.md.role == 1


@pytest.mark.parametrize("fstype", ["xfs", "ext4"])
def test_filesystems_made_by_mkfs_are_parsed(tmp_path, fstype):
    node = FakeNode(tmp_path)
    node.add_disk("nvme1n1", size_mib=320)
    fs_uuid = node.mkfs("nvme1n1", fstype, label="k8s-disks-0")
    sig = signatures.probe(str(node.image("nvme1n1")), 320 * MIB)
    assert (sig.kind, sig.fstype, sig.uuid, sig.label, sig.source) == (
        "filesystem", fstype, fs_uuid, "k8s-disks-0", "superblock")


def test_unknown_signatures_come_from_blkid(tmp_path):
    path = image(tmp_path, "swap.img")
    subprocess.run(["mkswap", str(path)], check=True, capture_output=True)
    sig = signatures.probe(str(path), 64 * MIB)
    assert (sig.kind, sig.fstype, sig.source) == ("other", "swap", "blkid")
    assert signatures.probe(str(image(tmp_path, "blank.img")), 64 * MIB).blank


def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(signatures.ProbeError, match=r"cannot read .*nvme9n1"):
        signatures.probe(str(tmp_path / "nvme9n1"), MIB)


# ------------------------------------------------------------------ discovery readers


def test_pyudev_and_direct_sysfs_readers_agree_on_this_host():
    pytest.importorskip("pyudev")
    direct = [d for d in sysfs.read_sysfs(Path("/sys"))]
    through_udev, reader = sysfs.read_block_devices(Path("/sys"))
    assert reader == "pyudev"
    assert through_udev == direct


def test_fake_sysfs_partitions_holders_and_devnums(tmp_path):
    node = FakeNode(tmp_path)
    node.add_disk("nvme1n1", serial="AWS1", partitions=2)
    (node.sys / "block/nvme1n1/nvme1n1p2/holders/dm-3").write_text("")
    [disk] = sysfs.read_sysfs(node.sys)
    assert disk.model == INSTANCE_STORE and disk.serial == "AWS1"
    assert disk.partitions == ("nvme1n1p1", "nvme1n1p2")
    assert disk.holders == ("dm-3",)
    assert sysfs.resolve_devnum(node.sys, disk.partition_devnums[0]) == "nvme1n1"


# ------------------------------------------------------------------ units


@pytest.mark.parametrize("path", ["/mnt/k8s-disks/0", "/var/lib/soci-snapshotter-grpc",
                                  "/var/log/pods", "/srv/.hidden dir/ü", "/"])
def test_escape_path_matches_systemd_escape(path):
    if not shutil.which("systemd-escape"):
        pytest.skip("systemd-escape not installed")
    expected = subprocess.run(["systemd-escape", "--path", path], check=True,
                              capture_output=True, text=True).stdout.strip()
    assert escape_path(path) == expected


def test_units_mount_by_uuid_before_containerd_and_kubelet():
    vol = volume_unit("/mnt/k8s-disks/0", "1234-abcd", "xfs", "volume 0",
                      ("containerd.service", "kubelet.service"), hard=True)
    text = vol.text()
    assert "What=/dev/disk/by-uuid/1234-abcd\n" in text
    assert "Options=defaults,noatime\n" in text
    assert "Before=umount.target containerd.service kubelet.service\n" in text
    assert "After=local-fs.target nodeagent-disks.service\n" in text
    assert "DefaultDependencies=no\n" in text
    assert "RequiredBy=containerd.service kubelet.service\n" in text
    bind = bind_unit("/var/lib/containerd", "/mnt/k8s-disks/0/var-lib-containerd", vol.name,
                     ("containerd.service",), hard=False)
    assert bind.name == "var-lib-containerd.mount"
    assert "Requires=mnt-k8s\\x2ddisks-0.mount\n" in bind.text()
    assert "WantedBy=containerd.service\n" in bind.text()
    assert bind.install_links() == {
        "multi-user.target.wants/var-lib-containerd.mount": "../var-lib-containerd.mount",
        "containerd.service.wants/var-lib-containerd.mount": "../var-lib-containerd.mount"}


def test_units_pass_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    vol = volume_unit("/mnt/k8s-disks/0", "0b6c3b5e-6a0b-4c53-9a3e-2b1e8f0c9a11", "xfs",
                      "volume 0", ("containerd.service",), hard=True)
    bind = bind_unit("/var/lib/containerd", "/mnt/k8s-disks/0/var-lib-containerd", vol.name,
                     ("containerd.service",), hard=True)
    for unit in (vol, bind):
        (tmp_path / unit.name).write_text(unit.text())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *(str(tmp_path / u.name) for u in (vol, bind))],
                          capture_output=True, text=True)
    # Only complaints about this sandbox (no running systemd, units it does not have) are
    # acceptable; anything about our unit files' syntax is not.
    bad = [line for line in proc.stderr.splitlines()
           if ("Unknown" in line or "Invalid" in line or "syntax" in line.lower())]
    assert bad == [], proc.stderr


# ------------------------------------------------------------------ copy check


def populate(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello")
    os.link(src / "a.txt", src / "sub" / "hard.txt")
    with open(src / "sparse.img", "wb") as f:
        f.seek(64 * MIB)
        f.write(b"end")
    os.symlink("a.txt", src / "link")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.chown(src / "sub", 1234, 5678)
    os.chmod(src / "sub", 0o2750)
    os.setxattr(src / "a.txt", "user.nodeagent", b"kept")
    os.setxattr(src / "sub", "trusted.overlay.opaque", b"y")


def test_copy_keeps_owners_modes_xattrs_links_and_holes(tmp_path):
    src = tmp_path / "var/lib/containerd"
    populate(src)
    node = FakeNode(tmp_path / "node")
    host = node.host()
    host.root = Path("/")
    target = tmp_path / "vol" / "var-lib-containerd"
    target.parent.mkdir()
    stats = migrate.copy_dir(host, str(src), str(target))
    assert stats.files == 3 and stats.bytes == 5 + 5 + 64 * MIB + 3
    assert os.stat(target / "a.txt").st_ino == os.stat(target / "sub/hard.txt").st_ino
    assert os.getxattr(target / "sub", "trusted.overlay.opaque") == b"y"
    assert os.stat(target / "sparse.img").st_blocks * 512 < MIB
    assert not migrate.staging_path(target).exists()
    assert (src / "a.txt").read_text() == "hello"  # source untouched


@pytest.mark.parametrize("damage", ["xattr", "hardlink", "content", "owner", "missing"])
def test_copy_check_catches_what_cp_may_silently_drop(tmp_path, damage):
    src = tmp_path / "src"
    populate(src)
    dst = tmp_path / "dst"
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    migrate.check_copy(src, dst)
    if damage == "xattr":
        os.removexattr(dst / "a.txt", "user.nodeagent")
    elif damage == "hardlink":
        os.unlink(dst / "sub/hard.txt")
        shutil.copy2(dst / "a.txt", dst / "sub/hard.txt")
    elif damage == "content":
        st = os.stat(dst / "a.txt")
        (dst / "a.txt").write_text("HELLO")
        os.utime(dst / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "owner":
        os.chown(dst / "sub", 0, 0)
    else:
        os.unlink(dst / "link")
    with pytest.raises(migrate.CopyCheckError):
        migrate.check_copy(src, dst)


def test_interrupted_copy_leftover_is_replaced(tmp_path):
    src = tmp_path / "src"
    populate(src)
    target = tmp_path / "vol" / "t"
    staging = migrate.staging_path(target)
    staging.mkdir(parents=True)
    (staging / "half-written").write_text("x")
    host = FakeNode(tmp_path / "node").host()
    host.root = Path("/")
    migrate.copy_dir(host, str(src), str(target))
    assert not (target / "half-written").exists() and (target / "a.txt").exists()


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
