"""What a user sees during a sync: live bars on a terminal, JSON log lines otherwise,
Prometheus metrics afterwards; and a stop request ends a sync cleanly, resumable."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

from support.models_fixtures import BUCKET, MiB, aws_env, data, moto, proxy, put_multipart, s3

from nodeagent import metrics
from nodeagent.log import JsonFormatter
from nodeagent.models import ModelSpec, SyncOptions, make_reporter, sync
from nodeagent.models.progress import ConsoleReporter, LogReporter, ModelProgress
from nodeagent.sandbox.throttle import ThrottleProxy


def test_json_log_lines_when_not_a_terminal(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="m/a.bin", Body=data(1000))
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nodeagent.models")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        reporter = make_reporter(io.StringIO())  # not a TTY: JSON lines
        assert isinstance(reporter, LogReporter)
        assert sync([ModelSpec("m", f"s3://{BUCKET}/m/")],
                    SyncOptions(cache_dir=str(tmp_path / "c")), reporter=reporter).ok
    finally:
        logger.removeHandler(handler)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    states = [e["state"] for e in events if e["msg"].startswith("model ")]
    assert states == ["downloading", "present"]
    assert events[-1]["model"] == "m" and events[-1]["source"] == "s3://models/m/"


def test_live_bars_on_a_terminal() -> None:
    screen = io.StringIO()
    reporter = ConsoleReporter(screen)
    model = ModelProgress("llama-3-8b", "s3://models/llama/", state="downloading",
                          bytes_total=4 * MiB, bytes_done=MiB)
    reporter.update([model, ModelProgress("bert", "s3://models/bert/", state="present")])
    reporter.close()
    text = screen.getvalue()
    assert "↓ llama-3-8b" in text and "1.0 MiB/4.0 MiB" in text and "[######" in text
    assert "✓ bert" in text and "1/2 present" in text


def test_metrics_after_a_sync(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="m/a.bin", Body=data(3000))
    before = metrics.MODELS_DOWNLOADED_BYTES._value.get()
    failures = metrics.MODELS_FAILURES.labels(reason="not_found")._value.get()
    result = sync([ModelSpec("m", f"s3://{BUCKET}/m/"),
                   ModelSpec("gone", f"s3://{BUCKET}/gone/")],
                  SyncOptions(cache_dir=str(tmp_path / "c")))
    assert [m.state for m in result.models] == ["updated", "failed"]
    assert metrics.MODELS_DOWNLOADED_BYTES._value.get() == before + 3000
    assert metrics.MODELS_FAILURES.labels(reason="not_found")._value.get() == failures + 1
    assert metrics.MODELS_CACHE_BYTES._value.get() == 3000
    assert metrics.MODELS_CACHED._value.get() == 1


def test_stop_ends_the_sync_and_the_next_run_resumes(s3, moto, tmp_path: Path) -> None:
    body = data(24 * MiB, 3)
    put_multipart(s3, "slow/w.bin", body, tmp_path)
    cache = str(tmp_path / "c")
    with ThrottleProxy(moto.url, total_bps=4 * MiB) as slow:
        stop = threading.Event()
        journal = tmp_path / "c" / ".nodeagent" / "staging" / "slow" / "journal.jsonl"

        def stop_after_a_range() -> None:
            while not stop.is_set():
                if journal.exists() and len(journal.read_text().splitlines()) >= 2:
                    stop.set()
                time.sleep(0.02)

        timer = threading.Thread(target=stop_after_a_range)
        timer.start()
        result = sync([ModelSpec("slow", f"s3://{BUCKET}/slow/")],
                      SyncOptions(cache_dir=cache, concurrency=2, range_bytes=4 * MiB,
                                  endpoint_url=slow.url, stop=stop))
        timer.join()
    model = result.models[0]
    assert model.state == "failed" and model.error is not None
    assert model.error.reason == "cancelled" and not (tmp_path / "c" / "slow").exists()
    again = sync([ModelSpec("slow", f"s3://{BUCKET}/slow/")],
                 SyncOptions(cache_dir=cache, range_bytes=4 * MiB))
    assert again.ok and again.models[0].downloaded_bytes < len(body)
    assert (tmp_path / "c" / "slow" / "w.bin").read_bytes() == body
