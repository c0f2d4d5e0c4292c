"""An interrupted model download (SIGKILL of the process) resumes from what it had
written and verified, and publishes exactly once. The download runs in a subprocess
against moto S3 behind a slow throttling proxy, so it can be killed halfway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.models_fixtures import BUCKET, MiB, aws_env, data, moto, proxy, put_multipart, s3

from nodeagent import metrics
from nodeagent.models import ModelSpec, SyncOptions, manifest, sync
from nodeagent.models.inventory import inventory
from nodeagent.models.layout import CacheLayout
from nodeagent.sandbox.throttle import ThrottleProxy

RANGE = 4 * MiB
CHILD = """
import sys
from nodeagent.models import ModelSpec, SyncOptions, sync
r = sync([ModelSpec("big", "s3://models/big/")],
         SyncOptions(cache_dir=sys.argv[1], concurrency=2, range_bytes=4 << 20))
print("ok" if r.ok else r.models[0].error, flush=True)
"""


def sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def journal_ranges(journal: Path) -> int:
    try:
        return sum(1 for line in journal.read_text().splitlines()[1:] if line.endswith("}"))
    except OSError:
        return 0


def test_sigkill_mid_download_resumes_and_publishes_once(s3, moto, proxy: ThrottleProxy,
                                                         tmp_path: Path) -> None:
    body = data(30 * MiB, 5)
    put_multipart(s3, "big/weights.bin", body, tmp_path, part=5 * MiB)  # 6 parts
    s3.put_object(Bucket=BUCKET, Key="big/config.json", Body=b"{}")
    cache = tmp_path / "cache"
    journal = cache / ".nodeagent" / "staging" / "big" / "journal.jsonl"
    with ThrottleProxy(moto.url, per_connection_bps=3 * MiB, total_bps=6 * MiB) as slow:
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": slow.url}
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(cache)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while journal_ranges(journal) < 3 and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    done_before = journal_ranges(journal)
    assert 3 <= done_before < 7  # config.json + some parts of weights.bin
    assert not (cache / "big").exists()  # nothing published by the killed run

    proxy.reset_requests()
    downloaded = sample("nodeagent_models_downloaded_bytes_total")
    resumed = sample("nodeagent_models_resumed_bytes_total")
    result = sync([ModelSpec("big", f"s3://{BUCKET}/big/")],
                  SyncOptions(cache_dir=str(cache), concurrency=4, range_bytes=RANGE))
    assert result.ok and result.models[0].state == "updated"
    # Every byte counted once: either downloaded now or resumed from the killed run's files.
    fetched = sample("nodeagent_models_downloaded_bytes_total") - downloaded
    reused = sample("nodeagent_models_resumed_bytes_total") - resumed
    assert fetched == result.models[0].downloaded_bytes and reused > 0
    assert fetched + reused == len(body) + 2
    assert (cache / "big" / "weights.bin").read_bytes() == body
    assert (cache / "big" / "config.json").read_bytes() == b"{}"
    gets = [t for m, t in proxy.requests() if m == "GET" and "list-type" not in t]
    # Only the parts the killed run had not finished were downloaded again.
    assert len(gets) == 7 - done_before
    assert result.models[0].downloaded_bytes < len(body)
    manifest = json.loads((cache / "big.manifest.json").read_text())
    assert {o["path"]: o["verified"] for o in manifest["objects"]}["weights.bin"] == (
        "composite CRC32")
    # Published once: no staging left, nothing in the trash, a re-run has nothing to do.
    assert not journal.parent.exists()
    assert not list((cache / ".nodeagent" / "trash").iterdir())
    again = sync([ModelSpec("big", f"s3://{BUCKET}/big/")], SyncOptions(cache_dir=str(cache)))
    assert again.models[0].state == "present"


def test_stale_staging_of_a_model_no_longer_listed_is_removed(s3, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key="small/a.txt", Body=b"a")
    stale = tmp_path / "cache" / ".nodeagent" / "staging" / "gone"
    (stale / "tree").mkdir(parents=True)
    (stale / "tree" / "half.bin").write_bytes(b"x" * 1000)
    result = sync([ModelSpec("small", f"s3://{BUCKET}/small/")],
                  SyncOptions(cache_dir=str(tmp_path / "cache")))
    assert result.ok and not stale.exists()


CRASH_AFTER_SWAP = """
import os, signal, sys
import nodeagent.models.publish as publish
from nodeagent.models import ModelSpec, SyncOptions, sync
real_swap = publish.swap_in
def swap_then_crash(*args):
    real_swap(*args)
    os.kill(os.getpid(), signal.SIGKILL)  # the tree is in place, its manifest not yet
publish.swap_in = swap_then_crash
sync([ModelSpec("m", "s3://models/m/")], SyncOptions(cache_dir=sys.argv[1]))
"""


@pytest.mark.parametrize("first", [True, False], ids=["first-publish", "update"])
def test_a_crash_between_the_swap_and_the_manifest_downloads_nothing_again(
        s3, proxy: ThrottleProxy, tmp_path: Path, first: bool) -> None:
    cache = tmp_path / "cache"
    layout = CacheLayout(cache)
    s3.put_object(Bucket=BUCKET, Key="m/config.json", Body=b'{"v": 1}')
    s3.put_object(Bucket=BUCKET, Key="m/weights.bin", Body=data(3 * MiB, 1))
    if not first:
        assert sync([ModelSpec("m", f"s3://{BUCKET}/m/")], SyncOptions(cache_dir=str(cache))).ok
        s3.put_object(Bucket=BUCKET, Key="m/weights.bin", Body=data(3 * MiB, 2))
    child = subprocess.run([sys.executable, "-c", CRASH_AFTER_SWAP, str(cache)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    # The new tree is published; the manifest beside it is missing or the old one.
    assert (cache / "m" / "weights.bin").read_bytes() == data(3 * MiB, 2 if not first else 1)
    assert manifest.load_trusted(layout.manifest("m"), layout.tree("m")) is None
    assert layout.pending_manifest("m").exists()
    # `models ls` already sees the pair as one verified model.
    (row,) = inventory(layout, None)
    assert (row.name, row.verified) == ("m", "yes")

    proxy.reset_requests()
    again = sync([ModelSpec("m", f"s3://{BUCKET}/m/")], SyncOptions(cache_dir=str(cache)))
    assert again.ok and again.models[0].state == "present"
    assert [t for m, t in proxy.requests() if m == "GET" and "list-type" not in t] == []
    published = manifest.load_trusted(layout.manifest("m"), layout.tree("m"))
    assert published is not None and sorted(e.path for e in published.objects) == [
        "config.json", "weights.bin"]
    assert not layout.staging("m").exists()
    assert not list(layout.trash.iterdir())  # the old version, swapped out, is gone too
