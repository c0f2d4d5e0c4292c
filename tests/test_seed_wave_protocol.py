"""The seed wave's Lease protocol: seeds that fail, a tag that moves, waves nobody fills,
seed waves turned off; and the flag that sets the wave.

tests/support/kubeapi/, a TEST DOUBLE of the Kubernetes API server (no real API server
can be installed here) speaking the real list/watch protocol, and real RolloutLimiters
against it, with sleeps for pulls (what a pull does is not the subject here; the agents'
real pulls: tests/test_seed_wave_mirror.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from support import agent_helpers
from support.agent_helpers import LEASES, NS, eventually
from support.kubeapi import KubeApiDouble

from nodeagent.kube import rollout_plan as rp
from nodeagent.kube.client import load_config, make_client
from nodeagent.kube.lease import RolloutLimiter

api = agent_helpers.api


# -- the protocol: seeds that fail, waves nobody fills, seed waves turned off ------------------


@contextlib.asynccontextmanager
async def limiters(api: KubeApiDouble, count: int, limit: int, **kw):
    clients = [make_client(load_config(server=api.url)) for _ in range(count)]
    made = [RolloutLimiter(client, NS, f"node-{i}", limit, lease_duration_s=5, **kw)
            for i, client in enumerate(clients)]
    try:
        yield made
    finally:
        await asyncio.gather(*(limiter.aclose() for limiter in made))
        await asyncio.gather(*(client.close() for client in clients))


class Pulls:
    """Who is in the gate when; a pull is a sleep, a failing one raises."""

    def __init__(self) -> None:
        self.now: set[str] = set()
        self.peak = 0
        self.entered: dict[str, float] = {}
        self.left: dict[str, float] = {}

    async def pull(self, limiter: RolloutLimiter, image: str, seconds: float, *,
                   fail: bool = False, **kw) -> None:
        async with limiter.gate(image, **kw):
            self.now.add(limiter.holder)
            self.peak = max(self.peak, len(self.now))
            self.entered[limiter.holder] = time.monotonic()
            try:
                await asyncio.sleep(seconds)
                if fail:
                    raise RuntimeError("pull failed")
            finally:
                self.now.discard(limiter.holder)
                self.left[limiter.holder] = time.monotonic()


async def test_a_seed_that_fails_hands_the_seed_role_to_the_next_node(api):
    image = "mirror.local/ml/flaky:1"
    async with limiters(api, 4, limit=1, seed_wave=1) as (bad, *good):
        pulls = Pulls()
        first = asyncio.create_task(pulls.pull(bad, image, 0.5, fail=True, mirrored=True))
        await asyncio.sleep(0.4)  # the failing node is first in the queue: the seed
        others = [asyncio.create_task(pulls.pull(lim, image, 0.8, mirrored=True))
                  for lim in good]
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(first, 10)
        await asyncio.wait_for(asyncio.gather(*others), 20)
        # one of the others became the seed; the two left went together after it
        seed, *peers = sorted(good, key=lambda lim: pulls.entered[lim.holder])
        assert pulls.entered[seed.holder] >= pulls.left[bad.holder]
        assert all(pulls.entered[p.holder] >= pulls.left[seed.holder] for p in peers)
        assert pulls.peak == 2
        # the failed node tries again: the seeds are done, it goes at once, no ticket
        before = time.monotonic()
        await asyncio.wait_for(pulls.pull(bad, image, 0.0, mirrored=True), 5)
        assert set(api.counts(since=before)) == {("watch", "leases")}


async def test_a_tag_moved_to_new_layers_needs_seeds_again(api):
    """The seeds pulled content A; when the tag moves to B, a node that wants B waits for a
    slot (the mirror does not have B yet) while a node that still pulls A goes at once."""
    image = "mirror.local/ml/moving:latest"
    async with limiters(api, 3, limit=1, seed_wave=1) as (first, late_a, late_b):
        pulls = Pulls()
        await asyncio.wait_for(pulls.pull(first, image, 0.1, mirrored=True, content="A"), 10)
        holding = asyncio.Event()

        async def seed_b() -> None:
            async with late_b.gate(image, mirrored=True, content="B"):
                holding.set()
                await asyncio.sleep(0.5)

        b = asyncio.create_task(seed_b())
        await asyncio.wait_for(holding.wait(), 10)
        assert rp.ticket_name(image, late_b.holder) in {
            lease["metadata"]["name"] for lease in api.list(*LEASES)}  # B took a slot
        before = time.monotonic()
        await asyncio.wait_for(pulls.pull(late_a, image, 0.0, mirrored=True, content="A"), 5)
        assert set(api.counts(since=before)) == {("watch", "leases")}  # A: no ticket
        await asyncio.wait_for(b, 10)
        await eventually(lambda: (api.get("leases", rp.coordinator_name(image), NS,
                                          "coordination.k8s.io")["metadata"]["annotations"]
                                  .get(rp.SEEDS_CONTENT)) == "B", timeout=5,
                         what="the wave for B recorded")


async def test_seeds_that_finish_with_nobody_waiting_still_open_the_gate(api):
    """The last seed finishes when no other node waits: the coordinator records the wave
    as it steps down, so a node that comes later goes through the mirror at once."""
    image = "mirror.local/ml/quiet:4"
    async with limiters(api, 3, limit=2, seed_wave=2) as (one, two, later):
        pulls = Pulls()
        await asyncio.wait_for(asyncio.gather(
            *(pulls.pull(lim, image, 0.3, mirrored=True) for lim in (one, two))), 20)
        await eventually(lambda: not api.list(*LEASES)[0]["spec"].get("holderIdentity")
                         and len(api.list(*LEASES)) == 1, timeout=5, what="step down")
        before = time.monotonic()
        await asyncio.wait_for(pulls.pull(later, image, 0.0, mirrored=True), 5)
        assert set(api.counts(since=before)) == {("watch", "leases")}  # no ticket


async def test_a_wave_nobody_fills_ends_and_the_coordinator_steps_down(api):
    """Seed wave 3 but only two nodes want the image: both pull as seeds, then their
    records go and the coordinator steps down (no Lease renewed for ever)."""
    image = "mirror.local/ml/few:2"
    async with limiters(api, 2, limit=1, seed_wave=3) as fleet:
        pulls = Pulls()
        await asyncio.wait_for(asyncio.gather(
            *(pulls.pull(lim, image, 0.3, mirrored=True) for lim in fleet)), 20)
        assert pulls.peak == 1  # both were seeds, within the limit
        await eventually(lambda: len(api.list(*LEASES)) == 1, timeout=5,
                         what="the seeds' tickets removed")
        await eventually(
            lambda: not api.list(*LEASES)[0]["spec"].get("holderIdentity"), timeout=5,
            what="the coordinator stepped down")
        [coordinator] = api.list(*LEASES)
        assert rp.SEEDS_DONE_AT not in (coordinator["metadata"].get("annotations") or {})


async def test_seed_wave_zero_keeps_the_plain_limit_for_mirrored_images(api):
    image = "mirror.local/ml/off:3"
    async with limiters(api, 3, limit=1, seed_wave=0) as fleet:
        pulls = Pulls()
        await asyncio.wait_for(asyncio.gather(
            *(pulls.pull(lim, image, 0.3, mirrored=True) for lim in fleet)), 20)
    assert pulls.peak == 1 and len(pulls.left) == 3
    [coordinator] = api.list(*LEASES)
    assert rp.SEEDS_DONE_AT not in (coordinator["metadata"].get("annotations") or {})
    assert all(
        rp.MIRRORED not in (r.body or {}).get("metadata", {}).get("annotations", {})
        for r in api.calls("create", "leases") if isinstance(r.body, dict))


# -- the flag ----------------------------------------------------------------------------------


def _agent_config(argv: list[str]):
    from nodeagent.agent.commands import agent_config
    from nodeagent.cli import build_parser

    return agent_config(build_parser().parse_args(["agent", "--node-name", "n1", *argv]))


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--rollout-limit", "5"], None, None),  # the limiter's default: as many as the limit
    (["--rollout-limit", "5", "--rollout-seed-nodes", "2"], "9", 2),  # the flag wins
    (["--rollout-limit", "5"], "0", 0),
])
def test_seed_nodes_from_the_flag_or_the_environment(monkeypatch, argv, env, expected):
    if env is not None:
        monkeypatch.setenv("NODEAGENT_ROLLOUT_SEED_NODES", env)
    assert _agent_config(argv).rollout_seed_nodes == expected


@pytest.mark.parametrize(("argv", "env", "said"), [
    (["--rollout-seed-nodes", "-1"], None, "--rollout-seed-nodes: -1: must be within"),
    ([], "many", "NODEAGENT_ROLLOUT_SEED_NODES=many' is not a whole number"),
])
def test_a_bad_seed_count_is_refused_naming_it(monkeypatch, capsys, argv, env, said):
    if env is not None:
        monkeypatch.setenv("NODEAGENT_ROLLOUT_SEED_NODES", env)
    with pytest.raises(SystemExit) as exited:
        _agent_config(argv)
    assert exited.value.code == 2 and said in capsys.readouterr().err
