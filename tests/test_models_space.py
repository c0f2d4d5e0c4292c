"""Disk space: ENOSPC and the high-water guard on a real small XFS loop filesystem,
eviction order (pure), and eviction never touching a model in use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.loopfs import loop_xfs
from support.models_fixtures import BUCKET, MiB, aws_env, data, moto, proxy, s3

from nodeagent import metrics
from nodeagent.models import ModelSpec, SyncOptions, sync
from nodeagent.models.evict import CachedModel, plan_eviction


def sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def fill_to(mount: Path, percent: float) -> None:
    st = os.statvfs(mount)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    ballast = int(total * percent / 100) - (total - free)
    if ballast > 0:
        with open(mount / "ballast", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, ballast)


def put_model(s3, name: str, size: int, seed: int) -> None:
    s3.put_object(Bucket=BUCKET, Key=f"{name}/weights.bin", Body=data(size, seed))


def test_enospc_fails_the_model_clearly_and_publishes_nothing(s3, tmp_path: Path) -> None:
    put_model(s3, "llm", 24 * MiB, 1)
    with loop_xfs(tmp_path) as fs:
        fill_to(fs.mount_point, 97)
        cache = fs.mount_point / "models"
        result = sync([ModelSpec("llm", f"s3://{BUCKET}/llm/")],
                      SyncOptions(cache_dir=str(cache), high_water_percent=100))
        error = result.models[0].error
        assert error is not None and error.reason == "no_space"
        assert str(error).startswith("model llm (s3://models/llm/): no space left on the "
                                     "cache filesystem writing weights.bin")
        assert not (cache / "llm").exists()


def test_guard_evicts_unlisted_lowest_priority_first_never_one_in_use(
        s3, tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 2), ("c", 3), ("n", 4)):
        put_model(s3, name, 24 * MiB, seed)
    with loop_xfs(tmp_path) as fs:
        cache = fs.mount_point / "models"
        opts = SyncOptions(cache_dir=str(cache), high_water_percent=100)
        first = sync([ModelSpec("a", f"s3://{BUCKET}/a/", priority=0),
                      ModelSpec("b", f"s3://{BUCKET}/b/", priority=5),
                      ModelSpec("c", f"s3://{BUCKET}/c/", priority=-1)], opts)
        assert first.ok
        # c has the lowest priority, so it would be the first to go; but it is open in
        # another process and must stay: a (the next lowest) is evicted instead.
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                                   "f = open(sys.argv[1], 'rb'); print('open', flush=True); "
                                   "time.sleep(120)", str(cache / "c" / "weights.bin")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "open\n"
            fill_to(fs.mount_point, 79)
            evictions = sample("nodeagent_models_evictions_total")
            evicted_bytes = sample("nodeagent_models_evicted_bytes_total")
            result = sync([ModelSpec("n", f"s3://{BUCKET}/n/")],
                          SyncOptions(cache_dir=str(cache), high_water_percent=80))
            assert result.ok, result.models[0].error
            assert result.evicted == ["a"]
            assert sample("nodeagent_models_evictions_total") == evictions + 1
            assert sample("nodeagent_models_evicted_bytes_total") == evicted_bytes + 24 * MiB
            assert sorted(p.name for p in cache.iterdir() if p.is_dir()
                          and not p.name.startswith(".")) == ["b", "c", "n"]
            # Nothing evictable is left but b and the model in use: a big one is refused.
            put_model(s3, "huge", 120 * MiB, 5)
            refused = sync([ModelSpec("n", f"s3://{BUCKET}/n/"),
                            ModelSpec("huge", f"s3://{BUCKET}/huge/")],
                           SyncOptions(cache_dir=str(cache), high_water_percent=80))
            huge = refused.models[1]
            assert huge.state == "skipped" and huge.error is not None
            assert huge.error.reason == "disk_guard"
            assert "above the high-water mark of 80%" in str(huge.error)
            assert (cache / "c" / "weights.bin").exists()
        finally:
            holder.kill()
            holder.wait()


def model(name: str, priority: int, listed: bool = False, in_use: str = "",
          published_at: float = 0.0, orphan: bool = False, size: int = 10) -> CachedModel:
    return CachedModel(name, size, priority, listed, in_use, published_at, orphan)


def test_eviction_order() -> None:
    models = [model("listed-low", -5, listed=True), model("busy", -9, in_use="open file"),
              model("p3", 3), model("p1-new", 1, published_at=200),
              model("p1-old", 1, published_at=100), model("orphan", 9, orphan=True)]
    plan = plan_eviction(models, need_bytes=25)
    assert [m.name for m in plan.evict] == ["orphan", "p1-old", "p1-new"]
    assert plan.freed_bytes == 30 and plan.short_bytes == 0
    assert plan.protected == (("busy", "in use: open file"),)
    everything = plan_eviction(models, need_bytes=1000)
    assert [m.name for m in everything.evict] == ["orphan", "p1-old", "p1-new", "p3"]
    assert everything.short_bytes == 960
    assert plan_eviction(models, 0).evict == ()


@pytest.mark.parametrize("bad", [0, 10])
def test_nothing_evicted_when_only_listed_models(bad: int) -> None:
    plan = plan_eviction([model("x", 0, listed=True, size=bad)], need_bytes=5)
    assert plan.evict == () and plan.short_bytes == 5
