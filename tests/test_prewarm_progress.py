"""Byte progress bookkeeping from ingest observations (pure, no containerd)."""

from __future__ import annotations

from datetime import UTC, datetime

from nodeagent.containerd.model import IngestStatus
from nodeagent.prewarm.progress import (
    DOWNLOADING,
    UNPACKING,
    ImageProgress,
    Observation,
    ingest_digest,
)

L1, L2, L3 = ("sha256:" + c * 64 for c in "123")


def obs(inflight: dict[str, int], totals: dict[str, int] | None = None,
        claimed: set[str] = frozenset()) -> Observation:
    return Observation(inflight, totals or {}, frozenset(set(inflight) - set(claimed)))


def test_ingest_digest_from_ref_or_expected():
    now = datetime.now(UTC)
    assert ingest_digest(IngestStatus(f"layer-{L1}", 1, 2, "", now, now)) == L1
    assert ingest_digest(IngestStatus("whatever", 1, 2, L2, now, now)) == L2
    assert ingest_digest(IngestStatus("odd-ref", 1, 2, "", now, now)) is None


def test_done_layers_plus_inflight_offsets():
    p = ImageProgress({L1: 100, L2: 200, L3: 300}, now=0)
    p.mark_done([L1])
    assert p.observe(obs({L2: 50}), now=1) == 150
    assert p.total == 600 and p.phase == DOWNLOADING
    p.mark_done([L2])
    assert p.observe(obs({L3: 100}), now=2) == 400
    assert p.rate() == 200.0  # (400 - 0) bytes over 2 s
    assert p.eta() == 1.0


def test_shared_layer_counts_for_each_image():
    a, b = ImageProgress({L1: 100, L2: 10}, now=0), ImageProgress({L1: 100, L3: 10}, now=0)
    o = obs({L1: 60})
    assert a.observe(o, 1) == 60 and b.observe(o, 1) == 60


def test_stall_only_while_downloading():
    p = ImageProgress({L1: 100}, now=0)
    p.observe(obs({L1: 10}), now=1)
    p.observe(obs({L1: 10}), now=5)
    assert not p.stalled(5, timeout_s=10)
    assert p.stalled(12, timeout_s=10)
    p.reset_clock(12)
    assert not p.stalled(13, timeout_s=10)
    p.mark_done([L1])
    p.observe(obs({}), now=30)
    assert p.phase == UNPACKING and not p.stalled(100, timeout_s=10)


def test_unresolved_image_counts_unclaimed_ingests_without_total():
    p = ImageProgress(None, now=0)
    assert p.total is None and p.phase == DOWNLOADING
    assert p.observe(obs({L1: 40, L2: 5}, {L1: 100, L2: 50}, claimed={L2}), now=1) == 40
    # L1 finished between polls: counted whole from its last known total
    assert p.observe(obs({L3: 7}, {L3: 70}), now=2) == 107
    assert p.eta() is None
    p.observe(obs({}), now=3)
    assert p.phase == UNPACKING
