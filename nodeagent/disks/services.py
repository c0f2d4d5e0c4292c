"""The host's services (containerd, kubelet ...): are they running, stop, start, reload.

Everything goes through Host.run, i.e. through nsenter into the host's namespaces when
nodeagent runs in a container, so systemctl talks to the host's systemd.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from nodeagent.disks.host import Host
from nodeagent.log import fields

log = logging.getLogger(__name__)


def systemd_running(host: Host) -> bool:
    # sd_booted(): this directory exists only when systemd is PID 1.
    return host.path("/run/systemd/system").is_dir()


def running_services(host: Host, units: Sequence[str], systemd: bool) -> dict[str, bool]:
    """{unit: running} for the given services."""
    if not units:
        return {}
    if systemd:
        proc = host.run(["systemctl", "is-active", *units], check=False, category="systemctl")
        states = proc.stdout.split()
        if len(states) == len(units):
            return {u: s in ("active", "activating", "deactivating", "reloading")
                    for u, s in zip(units, states, strict=True)}
    # No systemd (or no answer): look for the daemons' processes instead, so a containerd
    # started by hand is still protected.
    comms = _process_names(host)
    return {u: u.removesuffix(".service") in comms for u in units}


def _process_names(host: Host) -> set[str]:
    proc = host.path("/proc")
    names = set()
    try:
        pids = os.listdir(proc)
    except OSError:
        return names
    for pid in pids:
        if pid.isdigit():
            try:
                with open(f"{proc}/{pid}/comm") as f:
                    names.add(f.read().strip())
            except OSError:
                continue
    return names


def stop(host: Host, units: Sequence[str]) -> None:
    log.info("stopping services", extra=fields(units=list(units)))
    host.run(["systemctl", "stop", *units], category="systemctl", timeout=300)


def start(host: Host, units: Sequence[str]) -> None:
    # From inside a unit ordered before these services (nodeagent-disks.service), a
    # blocking start would wait for ourselves to finish: queue the job and return.
    no_block = ["--no-block"] if "INVOCATION_ID" in os.environ else []
    log.info("starting services", extra=fields(units=list(units), queued=bool(no_block)))
    host.run(["systemctl", "start", *no_block, *units], category="systemctl", timeout=300)


def daemon_reload(host: Host) -> None:
    log.info("reloading systemd units")
    host.run(["systemctl", "daemon-reload"], category="systemctl", timeout=120)
