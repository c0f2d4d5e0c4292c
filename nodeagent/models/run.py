"""One `nodeagent models prewarm` run: a sync with a summary and an exit code (``--once``),
or watch mode (``--watch-file``: the keeper re-syncs when the files change, every few
minutes and after failures, until SIGTERM/SIGINT)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.console import fmt_bytes
from nodeagent.errors import NodeagentError
from nodeagent.log import fields, redact_text
from nodeagent.models.desired import DesiredModels, ModelListFiles, load_desired_models
from nodeagent.models.engine import SyncResult, sync
from nodeagent.models.options import SyncOptions
from nodeagent.models.progress import make_reporter

log = logging.getLogger("nodeagent.models")

FILE_POLL_S = 2.0
WATCH_RESYNC_S = 300.0


@dataclass(frozen=True)
class ModelsRun:
    """Everything one `nodeagent models prewarm` invocation was told."""

    files: ModelListFiles
    sync: SyncOptions
    watch: bool = False
    metrics_port: int | None = None
    live: bool | None = None  # live bars; None: when stderr is a terminal
    output: str = "text"  # text | json


def run_models(run: ModelsRun, desired: DesiredModels) -> int:
    """Exit code: 0 when every listed model is present (watch mode: when stopped)."""
    from nodeagent import metrics

    health = metrics.HealthState()
    server = metrics.serve(run.metrics_port, health) if run.metrics_port is not None else None
    try:
        if run.watch:
            return _watch(run, desired, health)
        result = sync(desired.specs, run.sync, make_reporter(sys.stderr, run.live))
        health.set_ready(result.ok, "all models present" if result.ok else "models missing")
        print(json.dumps(result_json(result), indent=2) if run.output == "json"
              else summary(result))
        return 0 if result.ok else 1
    finally:
        if server is not None:
            server.close()


def summary(result: SyncResult) -> str:
    present = sum(m.state in ("present", "updated") for m in result.models)
    fetched = sum(m.downloaded_bytes for m in result.models)
    lines = [f"models: {present}/{len(result.models)} present in {result.cache_dir} "
             f"({fmt_bytes(fetched)} downloaded)"]
    for m in result.models:
        if m.state == "updated":
            lines.append(f"  updated  {m.name}: {fmt_bytes(m.downloaded_bytes)} in "
                         f"{m.seconds:.1f}s")
        elif m.state != "present":
            why = m.error.detail if m.error else ""
            reason = f" ({m.error.reason})" if m.error else ""
            lines.append(f"  {m.state:<8} {m.name}{reason}: {why}")
    lines += [f"  evicted  {name} (no longer listed)" for name in result.evicted]
    return "\n".join(lines)


def result_json(result: SyncResult) -> dict:
    return {
        "cacheDir": str(result.cache_dir), "ok": result.ok, "evicted": result.evicted,
        "models": [{"name": m.name, "state": m.state, "downloadedBytes": m.downloaded_bytes,
                    "seconds": round(m.seconds, 3),
                    "reason": m.error.reason if m.error else None,
                    "error": m.error.detail if m.error else None} for m in result.models],
    }


def _watch(run: ModelsRun, desired: DesiredModels, health: Any) -> int:
    from nodeagent.models.keeper import ModelKeeper

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    keeper = ModelKeeper(run.sync, resync_s=WATCH_RESYNC_S,
                         reporter=lambda: make_reporter(sys.stderr, run.live))
    keeper.set_desired(desired.specs)
    keeper.start()
    health.set_ready(True, "watching")
    seen = _mtimes(run.files.paths)
    while not stop.wait(FILE_POLL_S):
        now = _mtimes(run.files.paths)
        if now == seen:
            continue
        seen = now
        try:
            changed = load_desired_models(run.files)
        except NodeagentError as exc:
            log.error("model list changed but is invalid; keeping the previous list",
                      extra=fields(error=redact_text(str(exc))))
            continue
        log.info("model list changed", extra=fields(models=len(changed.models)))
        keeper.set_desired(changed.specs)
    keeper.stop()
    states = keeper.states().values()
    present = sum(s.state == "present" for s in states)
    print(f"models: {present}/{len(states)} present when stopped")
    return 0


def _mtimes(paths: tuple[Path, ...]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for path in paths:
        items = sorted(path.iterdir()) if path.is_dir() else [path]
        for item in [path, *items]:
            try:
                out[str(item)] = item.stat().st_mtime_ns
            except OSError:
                out[str(item)] = None
    return out
