"""The disk code's mount units and copy on this host: systemd escaping against
systemd-escape, the units against systemd-analyze, and the copy of a directory onto the
new volume (owners, modes, xattrs, links, holes) with its check against real `cp -a`.
(The RAID work itself is proven in the VM: tests/test_disks_vm.py.)
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from support.disks_fakes import MIB, FakeNode

from nodeagent.disks import migrate
from nodeagent.disks.units import bind_unit, escape_path, volume_unit

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
