"""systemd unit text for the volume mounts and the bind mounts (pure functions).

Units make the layout survive reboots and order it before containerd and kubelet:
- mounts are by filesystem UUID (never by /dev/md name, which can change across boots);
- DefaultDependencies=no + After=nodeagent-disks.service: when the boot service is
  installed it runs first (re-creating the array after an EC2 stop/start and rewriting
  What=), then these units find everything mounted; without it they mount on their own.
  (Default dependencies would order them before local-fs.target, i.e. before the boot
  service itself: an ordering cycle.)
- Before= containerd/kubelet; RequiredBy= them when the boot service is enabled, so they
  never start on the root volume's stale copy. Without the boot service a blank
  instance store after stop/start would then keep containerd down, so the dependency is
  WantedBy only.
"""

from __future__ import annotations

from dataclasses import dataclass

UNIT_MARKER = "# Written by `nodeagent disks setup`"
BOOT_SERVICE = "nodeagent-disks.service"
CONSUMERS = ("containerd.service", "kubelet.service")


def escape_path(path: str) -> str:
    """systemd-escape --path: the unit name stem for a mount point."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "-"
    out = []
    for i, ch in enumerate("/".join(parts)):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and (ch.isalnum() or ch in ":_.")) and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def mount_unit_name(where: str) -> str:
    return escape_path(where) + ".mount"


def bind_target_name(path: str) -> str:
    """Directory on the volume that holds a bound dir: /var/lib/containerd -> var-lib-containerd."""
    return "-".join(p for p in path.split("/") if p)


@dataclass(frozen=True)
class MountUnit:
    where: str
    what: str  # /dev/disk/by-uuid/<uuid> or, for binds, the directory on the volume
    fstype: str  # xfs, ext4, or "none" for binds
    options: str
    description: str
    requires: tuple[str, ...] = ()  # other units this one needs (the volume, for binds)
    consumers: tuple[str, ...] = CONSUMERS  # services that must start after it
    hard: bool = True  # RequiredBy= consumers (see module doc) rather than WantedBy=

    @property
    def name(self) -> str:
        return mount_unit_name(self.where)

    def text(self) -> str:
        after = " ".join(("local-fs.target", BOOT_SERVICE, *self.requires))
        lines = [
            UNIT_MARKER + "; rewritten on every run, do not edit.",
            "[Unit]",
            f"Description={self.description}",
            "DefaultDependencies=no",
            f"After={after}",
            f"Before={' '.join(dict.fromkeys(('umount.target', *CONSUMERS, *self.consumers)))}",
            "Conflicts=umount.target",
        ]
        if self.requires:
            lines.append(f"Requires={' '.join(self.requires)}")
        lines += [
            "", "[Mount]", f"What={self.what}", f"Where={self.where}",
            f"Type={self.fstype}", f"Options={self.options}", "", "[Install]",
            "WantedBy=multi-user.target",
        ]
        if self.consumers:
            key = "RequiredBy" if self.hard else "WantedBy"
            lines.append(f"{key}={' '.join(self.consumers)}")
        return "\n".join(lines) + "\n"

    def install_links(self) -> dict[str, str]:
        """Enablement symlinks (relative to the units dir) -> their target, as
        `systemctl enable` would make them."""
        links = {f"multi-user.target.wants/{self.name}": f"../{self.name}"}
        kind = "requires" if self.hard else "wants"
        for consumer in self.consumers:
            links[f"{consumer}.{kind}/{self.name}"] = f"../{self.name}"
        return links


def volume_unit(where: str, uuid: str, fstype: str, description: str,
                consumers: tuple[str, ...], hard: bool) -> MountUnit:
    return MountUnit(where=where, what=f"/dev/disk/by-uuid/{uuid}", fstype=fstype,
                     options="defaults,noatime", description=description,
                     consumers=consumers, hard=hard)


def bind_unit(where: str, source: str, volume_unit_name: str, consumers: tuple[str, ...],
              hard: bool) -> MountUnit:
    return MountUnit(where=where, what=source, fstype="none", options="bind",
                     description=f"nodeagent: {where} on local NVMe storage",
                     requires=(volume_unit_name,), consumers=consumers, hard=hard)
