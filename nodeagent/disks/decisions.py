"""What a disks plan is made of: a decision per disk, the volumes, the binds, the steps.

plan.py builds one from Facts and Options (candidates.py judges the disks, volumes.py
the volumes); apply.py carries it out; report.py shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeagent.disks import steps as st
from nodeagent.disks.units import MountUnit
from nodeagent.errors import NodeagentError


class SetupRefused(NodeagentError):
    """The plan has refusals: nothing was changed. `disks plan` exits with the same code
    when its plan has them."""

    exit_code = 3


@dataclass(frozen=True)
class DiskDecision:
    disk: str
    used: bool
    reason: str
    blocking: bool = False  # an eligible disk we refuse to touch: setup stops


@dataclass(frozen=True)
class Volume:
    index: int
    mountpoint: str
    kind: str  # "md" or "disk"
    members: tuple[str, ...]
    level: str = ""  # raid0 / raid10 for md
    device: str = ""  # kernel name when it exists now (md127, nvme1n1)
    devnum: str = ""
    fstype: str = ""  # existing filesystem, or the one mkfs will make
    fs_uuid: str = ""  # known when the filesystem exists
    label: str = ""
    mounted: bool = False


@dataclass(frozen=True)
class BindDecision:
    path: str
    target: str  # directory on the volume
    state: str  # "bound", "to-bind", "left-alone"
    reason: str = ""


@dataclass
class Plan:
    strategy: str
    decisions: list[DiskDecision] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    binds: list[BindDecision] = field(default_factory=list)
    steps: list[st.Step] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    units: list[MountUnit] = field(default_factory=list)  # desired (uuid known) units
    bottlerocket: bool = False

    @property
    def converged(self) -> bool:
        return not self.steps and not self.refusals
