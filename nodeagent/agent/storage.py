"""Local storage for the agent: `disks setup` in a child process, and the disk metrics.

The agent sets local NVMe storage up only while the node still carries the startup
taint (no workload can be using the disks yet), with ``nodeagent disks setup
--restart-services`` as a child process (it may restart containerd and move its root);
``disk_snapshot`` reads what ``disks status`` shows, for the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.disks.options import Options as DisksOptions
from nodeagent.log import fields, redact_text

log = logging.getLogger("nodeagent.agent")


@dataclass
class Storage:
    """Local storage readiness: set up by ``disks setup`` or not managed by the agent."""

    ready: bool = True
    problem: str | None = None
    ran_setup: bool = False


async def run_disks_setup(args: Sequence[str]) -> Storage:
    """``nodeagent disks setup --restart-services ARGS`` in a child process."""
    cmd = [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", "disks", "setup",
           "--restart-services", *args]
    log.info("setting up local storage (node still carries the startup taint)",
             extra=fields(command=" ".join(cmd[2:])))
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    text = redact_text(output.decode(errors="replace")).strip()
    for line in text.splitlines()[-20:]:
        log.info("disks setup: %s", line)
    if proc.returncode == 0:
        return Storage(ready=True, ran_setup=True)
    last = text.splitlines()[-1] if text else f"exit code {proc.returncode}"
    return Storage(ready=False, ran_setup=True,
                   problem=f"local storage setup failed: {last[:300]}")


def disk_snapshot(options: DisksOptions) -> dict:
    """disks.status.disk_metrics_snapshot with the options the setup uses (array name,
    mount path), seen from wherever we run (host, or the pod through /proc/1/root)."""
    from nodeagent.disks.host import detect_host
    from nodeagent.disks.status import disk_metrics_snapshot

    return disk_metrics_snapshot(detect_host(), options)
