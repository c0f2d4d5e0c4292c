"""The steps a plan is made of (data only; apply.py carries them out, each idempotently).

`order` sorts them: disks before arrays before filesystems before mounts, units before
directory moves, services stopped around the moves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from nodeagent.disks.options import SERVICE_ORDER


@dataclass(frozen=True)
class Step:
    order = 0

    @property
    def action(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        raise TypeError(f"{self.action} has no description")  # every subclass has one

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action, "description": self.describe(), **asdict(self)}


@dataclass(frozen=True)
class WipeDisk(Step):
    disk: str
    had: str
    partitions: tuple[str, ...] = ()
    order = 10

    def describe(self) -> str:
        return f"wipe signatures from /dev/{self.disk} (forced; it had {self.had})"


@dataclass(frozen=True)
class StopArray(Step):
    array: str
    why: str
    order = 20

    def describe(self) -> str:
        return f"stop /dev/{self.array} ({self.why})"


@dataclass(frozen=True)
class AssembleArray(Step):
    name: str
    uuid: str
    members: tuple[str, ...]
    order = 30

    def describe(self) -> str:
        return (f"assemble existing array '{self.name}' (uuid {self.uuid}) from "
                f"{', '.join(self.members)}")


@dataclass(frozen=True)
class CreateArray(Step):
    name: str
    level: str
    chunk_kib: int
    members: tuple[str, ...]
    order = 30

    def describe(self) -> str:
        return (f"create {self.level} array /dev/md/{self.name} over "
                f"{', '.join(self.members)} (chunk {self.chunk_kib} KiB, homehost any)")


@dataclass(frozen=True)
class MakeFilesystem(Step):
    volume: int
    fstype: str
    label: str
    when: str = "always"  # "if-blank": the device was not readable at plan time
    overwrite: bool = False  # an unfinished mkfs of ours is redone
    chunk_kib: int = 0  # RAID chunk, for the XFS log stripe unit
    order = 40

    def describe(self) -> str:
        cond = " if it has no filesystem yet" if self.when == "if-blank" else ""
        return f"make {self.fstype} filesystem '{self.label}' on volume {self.volume}{cond}"


@dataclass(frozen=True)
class MountVolume(Step):
    volume: int
    mountpoint: str
    order = 50

    def describe(self) -> str:
        return f"mount volume {self.volume} at {self.mountpoint} (noatime)"


@dataclass(frozen=True)
class WriteUnits(Step):
    hard: bool
    order = 60

    def describe(self) -> str:
        dep = "RequiredBy" if self.hard else "WantedBy"
        return f"write systemd mount units (by filesystem UUID; {dep} containerd/kubelet)"


@dataclass(frozen=True)
class StopServices(Step):
    units: tuple[str, ...]
    order = 70

    def describe(self) -> str:
        return f"stop {', '.join(self.units)} (--restart-services)"


@dataclass(frozen=True)
class MoveDir(Step):
    path: str
    target: str
    copy: str  # "yes", "no" (already on the volume), "if-missing"
    owners: tuple[str, ...] = ()
    order = 80

    def describe(self) -> str:
        copy = {"yes": f"copy {self.path} to {self.target} (owners, modes, xattrs, hard "
                       "links, sparseness), check the copy, then ",
                "no": "", "if-missing": f"copy {self.path} to {self.target} unless the "
                                        "volume already has it, then "}[self.copy]
        return f"{copy}bind {self.target} onto {self.path}"


@dataclass(frozen=True)
class StartServices(Step):
    units: tuple[str, ...]
    order = 90

    def describe(self) -> str:
        return f"start {', '.join(self.units)} again"


@dataclass(frozen=True)
class BottlerocketInit(Step):
    filesystem: str
    disks: tuple[str, ...] = ()
    order = 30

    def argv(self) -> list[str]:
        argv = ["apiclient", "ephemeral-storage", "init", "--filesystem", self.filesystem]
        if self.disks:
            argv += ["--disks", *self.disks]
        return argv

    def describe(self) -> str:
        return " ".join(self.argv())


@dataclass(frozen=True)
class BottlerocketBind(Step):
    dirs: tuple[str, ...]
    order = 80

    def argv(self) -> list[str]:
        return ["apiclient", "ephemeral-storage", "bind", "--dirs", *self.dirs]

    def describe(self) -> str:
        return " ".join(self.argv())


def service_order(units: Iterable[str]) -> list[str]:
    """Stop order: kubelet before soci before containerd; unknown units last."""
    rank = {u: i for i, u in enumerate(SERVICE_ORDER)}
    return sorted(units, key=lambda u: (rank.get(u, len(rank)), u))
