"""What a user sees during a sync: live bars on a terminal, JSON log lines otherwise,
Prometheus metrics afterwards; and a stop request ends a sync cleanly, resumable."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support.models_fixtures import BUCKET, MiB, aws_env, data, moto, proxy, put_multipart, s3

from nodeagent import metrics
from nodeagent.log import JsonFormatter
from nodeagent.models import ModelSpec, SyncOptions, make_reporter, sync
from nodeagent.models.progress import ConsoleReporter, LogReporter, ModelProgress
from nodeagent.sandbox.throttle import ThrottleProxy, cut


def test_json_log_lines_when_not_a_terminal(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="m/a.bin", Body=data(1000))
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nodeagent.models")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        reporter = make_reporter(io.StringIO())  # not a TTY: JSON lines
        assert isinstance(reporter, LogReporter)
        assert sync([ModelSpec("m", f"s3://{BUCKET}/m/")],
                    SyncOptions(cache_dir=str(tmp_path / "c")), reporter=reporter).ok
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
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


def sample(name: str, **labels: str) -> float:
    """A metric's value as /metrics serves it (0 before it was ever set)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    line = next(x for x in body.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_metrics_after_a_sync(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="m/a.bin", Body=data(3000))
    before = sample("nodeagent_models_downloaded_bytes_total")
    failures = sample("nodeagent_models_failures_total", reason="not_found")
    durations = sample("nodeagent_models_sync_duration_seconds_count")
    seconds = sample("nodeagent_models_sync_duration_seconds_sum")
    started = time.monotonic()
    result = sync([ModelSpec("m", f"s3://{BUCKET}/m/"),
                   ModelSpec("gone", f"s3://{BUCKET}/gone/")],
                  SyncOptions(cache_dir=str(tmp_path / "c")))
    wall = time.monotonic() - started
    assert [m.state for m in result.models] == ["updated", "failed"]
    assert sample("nodeagent_models_downloaded_bytes_total") == before + 3000
    assert sample("nodeagent_models_failures_total", reason="not_found") == failures + 1
    assert sample("nodeagent_models_cache_bytes") == 3000
    assert sample("nodeagent_models_cached") == 1
    # One duration observed: the model that was published (not the failed one), and it
    # is the time that model took, within the sync's wall time.
    assert sample("nodeagent_models_sync_duration_seconds_count") == durations + 1
    took = sample("nodeagent_models_sync_duration_seconds_sum") - seconds
    assert took == pytest.approx(result.models[0].seconds) and 0 < took <= wall


def test_downloaded_bytes_move_in_metrics_while_a_model_downloads(s3, proxy: ThrottleProxy,
                                                                  tmp_path: Path) -> None:
    """The counter follows the bytes as they arrive (not only when a model is published),
    and a range broken mid-way counts what it received before the break plus the whole
    range fetched again: bytes over the network. The model's own figure is its size."""
    size = 16 * MiB
    s3.put_object(Bucket=BUCKET, Key="big/w.bin", Body=data(size, 9))
    proxy.set_limits(None, 8 * MiB)
    server = metrics.serve(0, host="127.0.0.1")
    base = scrape(server.port, "nodeagent_models_downloaded_bytes_total")
    cache = tmp_path / "c"
    results = []
    worker = threading.Thread(target=lambda: results.append(sync(
        [ModelSpec("big", f"s3://{BUCKET}/big/")],
        SyncOptions(cache_dir=str(cache), concurrency=1, range_bytes=4 * MiB))))
    try:
        worker.start()
        seen: list[tuple[float, bool]] = []
        cut_armed = False
        while worker.is_alive():
            if not cut_armed and ("GET", "/models/big/w.bin") in proxy.requests():
                proxy.inject(cut(after_bytes=2 * MiB), times=1)  # the next range's connection
                cut_armed = True
            seen.append((scrape(server.port, "nodeagent_models_downloaded_bytes_total") - base,
                         (cache / "big").exists()))
            time.sleep(0.05)
        worker.join()
        final = scrape(server.port, "nodeagent_models_downloaded_bytes_total") - base
    finally:
        server.close()
    assert results[0].ok, results[0].models[0].error
    assert proxy.stats().faults_fired == 1
    midway = [v for v, published in seen if 0 < v < size and not published]
    assert len(midway) >= 5, seen  # it moved, several times, before anything was published
    assert results[0].models[0].downloaded_bytes == size
    # The broken range's first ~2 MiB (less the response headers) arrived twice.
    assert size + MiB < final < size + 2 * MiB


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
