"""Host facts: mountinfo parsing and escapes, the mount serving a path, NVMe identities."""

from __future__ import annotations

import pytest

from nodeagent.hostfacts.mountinfo import find_mount, parse_mountinfo, unescape
from nodeagent.hostfacts.nvme import ebs_volume_id_from_serial


def test_parse_mountinfo_handles_optional_fields_and_escapes() -> None:
    text = (
        "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 shared:3 - ext3 /dev/root rw\n"
        "37 35 0:40 / /run rw - tmpfs tmpfs rw,size=10\n"
        "garbage line\n"
    )
    first, second = parse_mountinfo(text)
    assert (first.major, first.minor, first.root) == (98, 0, "/mnt1")
    assert first.mountpoint == "/mnt/my disk"
    assert (first.fstype, first.source, first.options) == ("ext3", "/dev/root", "rw,noatime,rw")
    assert (second.devnum, second.options) == ("0:40", "rw,rw,size=10")


@pytest.mark.parametrize(("field", "text"), [
    ("/mnt/a\\040b", "/mnt/a b"),  # space
    ("/mnt/a\\011b\\012c", "/mnt/a\tb\nc"),  # tab, newline
    ("/mnt/a\\134b", "/mnt/a\\b"),  # the backslash itself
    ("/mnt/a\\134040", "/mnt/a\\040"),  # a literal "\040" in a name: decoded once
    ("/mnt/end\\040", "/mnt/end "),  # an escape at the very end
    ("/mnt/a\\089", "/mnt/a\\089"),  # 8 and 9 are no octal digits: taken literally
    ("/mnt/a\\04", "/mnt/a\\04"),  # too short to be an escape
])
def test_unescape_decodes_only_three_octal_digits(field: str, text: str) -> None:
    assert unescape(field) == text
    (entry,) = parse_mountinfo(f"1 0 8:1 / {field} rw - xfs /dev/sda1 rw\n")
    assert entry.mountpoint == text


def test_find_mount_longest_prefix_and_last_mounted_wins() -> None:
    mounts = parse_mountinfo(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 8:2 / /var/lib rw - xfs /dev/sda2 rw\n"
        "3 1 8:3 / /var/lib/containerd rw - xfs /dev/sdb rw\n"
        "4 1 8:4 / /var/lib/containerd rw - xfs /dev/sdc rw\n"
        "5 1 8:5 / /var/lib/containerd-other rw - xfs /dev/sdd rw\n"
    )
    found = find_mount(mounts, "/var/lib/containerd/io.containerd.content.v1.content")
    assert found is not None and found.source == "/dev/sdc"
    assert find_mount(mounts, "/var/lib/kubelet").source == "/dev/sda2"
    assert find_mount(mounts, "/etc").source == "/dev/sda1"
    assert find_mount(mounts[1:], "/etc") is None


def test_serial_to_volume_id() -> None:
    assert ebs_volume_id_from_serial("vol0123456789abcdef0") == "vol-0123456789abcdef0"
    assert ebs_volume_id_from_serial("vol-0123456789abcdef0 ") == "vol-0123456789abcdef0"
    assert ebs_volume_id_from_serial("AWS1234567890ABCDEF") is None
