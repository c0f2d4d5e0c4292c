"""One `nodeagent prewarm` run: a reconcile pass with a summary and an exit code, or
watch mode (re-read the hot-list files when they change, self-heal, until a signal)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.log import fields, redact_text
from nodeagent.prewarm.config import PrewarmOptions
from nodeagent.prewarm.desired import DesiredImage, HotListFiles, load_desired

if TYPE_CHECKING:
    from nodeagent.credentials.keyring import Keyring
    from nodeagent.prewarm.engine import PrewarmEngine

log = logging.getLogger(__name__)

FILE_POLL_S = 2.0


@dataclass(frozen=True)
class PrewarmRun:
    """Everything one `nodeagent prewarm` invocation was told."""

    hotlist: HotListFiles
    prewarm: PrewarmOptions
    containerd_address: str
    watch: bool = False  # --watch-file
    metrics_port: int | None = None
    live: bool | None = None  # live bars; None: when stderr is a terminal


async def run_prewarm(run: PrewarmRun, desired: list[DesiredImage],
                      keyring: Keyring | None) -> int:
    """Exit code: 0 when every image is present and every removal asked for was done
    (watch mode: when stopped), else 1."""
    from nodeagent import metrics
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.display import make_reporter
    from nodeagent.prewarm.engine import PrewarmEngine

    health = metrics.HealthState()
    server = metrics.serve(run.metrics_port, health) if run.metrics_port is not None else None
    if server:
        log.info("serving metrics", extra=fields(port=server.port))
    reporter = make_reporter(sys.stderr, run.live)
    try:
        async with ContainerdClient(run.containerd_address) as client:
            engine = PrewarmEngine(client, keyring, run.prewarm.engine, reporter)
            if not run.watch:
                try:
                    summary = await engine.reconcile(desired)
                finally:
                    await engine.close()
                reporter.close()
                health.set_ready(summary.ok, "all hot images present" if summary.ok
                                 else "some hot images missing")
                print(summary.text())
                return 0 if summary.all_done else 1
            return await _watch(run.hotlist, engine, desired, health)
    finally:
        reporter.close()
        if server:
            server.close()


async def _watch(source: HotListFiles, engine: PrewarmEngine, desired: list[DesiredImage],
                 health: Any) -> int:
    from nodeagent.prewarm.state import PrewarmSummary

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engine.set_desired(desired)
    health.set_ready(True, "watching")
    watcher = asyncio.create_task(_watch_files(source, engine.set_desired, stop))
    try:
        await engine.run(stop)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    summary = PrewarmSummary(list(engine.snapshot().values()))
    print(summary.text())
    return 0


def _mtimes(paths: Sequence[Path]) -> dict[str, float | None]:
    """Modification times of the files and directory entries behind ``paths``."""
    out: dict[str, float | None] = {}
    for path in paths:
        items = sorted(path.iterdir()) if path.is_dir() else [path]
        for item in [path, *items]:
            try:
                out[str(item)] = item.stat().st_mtime_ns
            except OSError:
                out[str(item)] = None
    return out


async def _watch_files(
    source: HotListFiles, set_desired: Callable[[list[DesiredImage]], None],
    stop: asyncio.Event,
) -> None:
    """Re-read the hot lists when they change; keep the last good list on errors."""
    from nodeagent.errors import NodeagentError

    seen = _mtimes(source.paths)
    while not stop.is_set():
        await asyncio.sleep(FILE_POLL_S)
        now = _mtimes(source.paths)
        if now == seen:
            continue
        seen = now
        try:
            desired = load_desired(source)
        except NodeagentError as exc:
            log.error("hot list changed but is invalid; keeping the previous list",
                      extra=fields(error=redact_text(str(exc))))
            continue
        log.info("hot list changed", extra=fields(images=len(desired)))
        set_desired(desired)
