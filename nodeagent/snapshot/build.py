"""`snapshot build`'s first half: prewarm the hot list, then check that every image is
present and pinned before anything is snapshotted (snapshot/create.py does the rest)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from nodeagent.errors import NodeagentError

if TYPE_CHECKING:
    from nodeagent.credentials.keyring import Keyring
    from nodeagent.prewarm.config import EngineConfig
    from nodeagent.prewarm.desired import DesiredImage


async def prewarm_and_verify(address: str, config: EngineConfig, desired: list[DesiredImage],
                             keyring: Keyring | None) -> tuple[str, list[str]]:
    """Pull and pin as `nodeagent prewarm`; (containerd version, pinned image names)."""
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.display import make_reporter
    from nodeagent.prewarm.engine import PrewarmEngine
    from nodeagent.prewarm.plan import present_and_pinned_problems
    from nodeagent.snapshot.create import hot_image_names

    reporter = make_reporter(sys.stderr)
    try:
        async with ContainerdClient(address) as client:
            engine = PrewarmEngine(client, keyring, config, reporter)
            try:
                summary = await engine.reconcile(desired)
            finally:
                await engine.close()
            reporter.close()
            print(summary.text(), file=sys.stderr)
            problems = present_and_pinned_problems(desired, await client.list_image_records())
            if problems:
                raise NodeagentError("not snapshotting: " + "; ".join(problems))
            version = await client.version()
            records = await client.list_image_records()
    finally:
        reporter.close()
    return version.version, hot_image_names(records)
