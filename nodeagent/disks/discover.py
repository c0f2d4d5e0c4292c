"""Gather the facts plan() decides from: disks, signatures, arrays, mounts, dirs, units.

Reads sysfs, device superblocks and /proc only (plus `blkid -p` for disks that carry
something nodeagent does not parse itself, and one `systemctl is-active` when a directory
still has to move), so `plan` and an idempotent `setup` re-run stay cheap.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from nodeagent.disks import signatures
from nodeagent.disks.host import Host
from nodeagent.disks.model import BLANK, DirState, Facts, MdArray, Signature
from nodeagent.disks.options import SOCI_DIR, Options, effective_binds
from nodeagent.disks.services import running_services, systemd_running
from nodeagent.disks.units import UNIT_MARKER, bind_target_name
from nodeagent.hostfacts import sysfs
from nodeagent.hostfacts.mountinfo import read_mountinfo, read_swaps, root_devnum
from nodeagent.hostfacts.nvme import EBS_MODEL
from nodeagent.hostfacts.sysfs import BlockDevice

log = logging.getLogger(__name__)


def gather(host: Host, opts: Options, blkid: signatures.BlkidProbe | None = None,
           prefer_pyudev: bool = True) -> Facts:
    devices, reader = sysfs.read_block_devices(host.sysfs, prefer_pyudev)
    disks = tuple(d for d in devices if not d.is_virtual)
    mounts = tuple(read_mountinfo(host.proc_mountinfo))
    sigs = {d.name: _probe(host, d, blkid) for d in disks if _worth_probing(d, opts)}
    arrays = tuple(_array(host, d, sigs, blkid) for d in devices if d.name.startswith("md"))
    binds = effective_binds(opts, host.path(SOCI_DIR).is_dir())
    facts = Facts(
        disks=disks, signatures=sigs, arrays=arrays, mounts=mounts,
        swaps=tuple(read_swaps(host.proc_swaps)), root_devnum=root_devnum(list(mounts)),
        os_id=read_os_id(host), discovery=reader, systemd=systemd_running(host),
    )
    facts.dirs.update({b: _dir_state(host, b, facts) for b in binds})
    facts.volume_dirs.update(_volume_dirs(host, opts, binds))
    facts.units.update(_read_units(host, Path(opts.units_dir)))
    linked = {opts.mount_path: _first_symlink(host, opts.mount_path, include_self=True),
              **{b: _first_symlink(host, b, include_self=False) for b in binds}}
    facts.symlinked.update({path: link for path, link in linked.items() if link})
    moving = [b for b, st in facts.dirs.items() if st.mount is None]
    owners = sorted({s for b in moving for s in opts.owners(b)})
    facts.services_running.update(running_services(host, owners, facts.systemd))
    return facts


def _worth_probing(disk: BlockDevice, opts: Options) -> bool:
    # Only instance-store candidates: probing the root disk or EBS volumes is pointless.
    if opts.only and not {disk.name, f"/dev/{disk.name}", disk.serial} & set(opts.only):
        return False
    return disk.is_nvme and disk.model != EBS_MODEL and bool(opts.model_re.match(disk.model))


def _probe(host: Host, disk: BlockDevice, blkid: signatures.BlkidProbe | None) -> Signature:
    path = str(host.dev / disk.name)
    # A disk with partitions is described by its partition table; blkid reports it.
    return signatures.probe(path, disk.size_bytes, blkid)


def _array(host: Host, dev: BlockDevice, sigs: dict[str, Signature],
           blkid: signatures.BlkidProbe | None) -> MdArray:
    md_dir = host.sysfs / "block" / dev.name / "md"
    attr = lambda name: sysfs.read_attr(md_dir / name)  # noqa: E731
    state = attr("array_state")
    members = tuple(sorted(sysfs.lower_disks(host.sysfs, dev.name)))
    member_sig = next((sigs[m] for m in members if m in sigs and sigs[m].md), None)
    if member_sig is None and members:
        member_sig = probe_md_member(host, dev.slaves)
    md = member_sig.md if member_sig else None
    uuid = attr("uuid")
    active = state not in ("inactive", "clear", "")
    fs = BLANK
    if active and dev.size_bytes:
        fs = signatures.probe(str(host.dev / dev.name), dev.size_bytes, blkid)
    degraded = attr("degraded")
    return MdArray(
        name=dev.name, devnum=dev.devnum, state=state, level=attr("level"),
        raid_disks=int(attr("raid_disks") or 0), members=members,
        degraded=int(degraded) if degraded.isdigit() else 0, size_bytes=dev.size_bytes,
        chunk_bytes=int(attr("chunk_size") or 0),
        uuid=signatures.md_uuid_text(uuid) if uuid else (md.array_uuid if md else ""),
        array_name=md.name if md else "", filesystem=fs,
    )


def probe_md_member(host: Host, slaves: tuple[str, ...]) -> Signature | None:
    """The md superblock read from the first readable member of an array."""
    for slave in slaves:
        size = sysfs.read_attr(host.sysfs / "class" / "block" / slave / "size")
        try:
            sig = signatures.probe(str(host.dev / slave), int(size or 0) * 512,
                                   blkid=lambda _p: {})
        except signatures.ProbeError:
            continue
        if sig.md:
            return sig
    return None


def _dir_state(host: Host, path: str, facts: Facts) -> DirState:
    p = host.path(path)
    return DirState(path=path, exists=p.exists(), is_dir=p.is_dir(), is_symlink=p.is_symlink(),
                    mount=facts.mount_at(path))


def _first_symlink(host: Host, path: str, include_self: bool) -> tuple[str, str] | None:
    """The first component of host path ``path`` that is a symlink, and the link's text
    (not followed: the host's absolute links would point outside ``host.root``)."""
    parts = PurePosixPath(path).parts[1:]
    current = PurePosixPath("/")
    for part in parts if include_self else parts[:-1]:
        current /= part
        seen = host.path(current)
        if seen.is_symlink():
            return str(current), os.readlink(seen)
        if not seen.exists():
            return None  # nothing below a missing directory exists yet
    return None


def _volume_dirs(host: Host, opts: Options, binds: tuple[str, ...]) -> dict[str, bool]:
    """Which copy targets already exist under volume 0's mount point (a finished earlier
    copy; plan() only trusts this while the volume is mounted there)."""
    base = opts.volume_mountpoint(0)
    return {f"{base}/{bind_target_name(b)}": host.path(f"{base}/{bind_target_name(b)}").is_dir()
            for b in binds}


def _read_units(host: Host, units_dir: Path) -> dict[str, str]:
    """Our unit files and enablement links, keyed by their path relative to units_dir."""
    base = host.path(units_dir)
    units: dict[str, str] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return units
    for name in names:
        path = base / name
        if name.endswith(".mount") and path.is_file():
            text = path.read_text(errors="replace")
            if UNIT_MARKER in text:
                units[name] = text
        elif name.endswith((".requires", ".wants")) and path.is_dir():
            for link in os.listdir(path):
                target = path / link
                if target.is_symlink():
                    units[f"{name}/{link}"] = os.readlink(target)
    return units


def read_os_id(host: Host) -> str:
    """ID= from the host's os-release (Bottlerocket's is under /.bottlerocket/rootfs in
    its bootstrap and host containers)."""
    for candidate in ("/.bottlerocket/rootfs/etc/os-release", "/etc/os-release",
                      "/usr/lib/os-release"):
        path = Path(candidate) if candidate.startswith("/.bottlerocket") else host.path(
            candidate)
        try:
            for line in path.read_text().splitlines():
                if line.startswith("ID="):
                    return line[3:].strip().strip('"')
        except OSError:
            continue
    return ""
