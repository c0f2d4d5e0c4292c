"""The prewarm engine against a real private containerd and a real registry."""

from __future__ import annotations

import asyncio

import pytest

from nodeagent import metrics
from nodeagent.containerd.client import ContainerdClient
from nodeagent.prewarm import plan
from nodeagent.prewarm.engine import EngineConfig, PrewarmEngine
from prewarm_helpers import desired


async def records_of(client: ContainerdClient, digest: str):
    return [r for r in await client.list_image_records() if r.target_digest == digest]


async def test_pulls_several_images_with_shared_layers_and_pins_them(containerd, sample_images):
    refs = [sample_images[n].ref for n in ("python", "model-server", "trainer")]
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(concurrency=2, poll_interval_s=0.2))
        summary = await engine.reconcile(desired(*refs))
        assert summary.ok, summary.text()
        for name in ("python", "model-server", "trainer"):
            pushed = sample_images[name]
            state = engine.snapshot()[pushed.ref]
            assert state.state == "present" and state.pinned
            assert state.digest == pushed.digest
            assert state.bytes_total == sum(layer.size for layer in pushed.image.layers)
            recs = await records_of(client, pushed.digest)
            assert len(recs) == 3, [r.name for r in recs]  # tag, repo@digest, config id
            for rec in recs:
                assert rec.labels[plan.CRI_PINNED_LABEL] == "pinned"
                assert rec.labels[plan.PINNED_LABEL] == "true"
                assert rec.labels[plan.PULLED_LABEL] == "true"
        # a second pass finds everything present and pulls nothing
        again = PrewarmEngine(client, None, EngineConfig())
        summary = await again.reconcile(desired(*refs))
        assert summary.ok
        assert all(s.attempts == 0 for s in summary.states)
