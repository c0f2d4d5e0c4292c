"""The cluster-wide rollout limit: a FIFO queue of Leases with an elected coordinator.

Pure decisions (nodeagent.kube.rollout_plan) are tested directly. The gate runs against
tests/support/kubeapi/, a TEST DOUBLE of the Kubernetes API server (no real API server
can be installed here) that speaks the real list/watch protocol over HTTP, with several
simulated nodes (each its own RolloutLimiter and client) in one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.kubeapi import KubeApiDouble

from nodeagent.kube import rollout_plan as rp
from nodeagent.kube.client import load_config, make_client
from nodeagent.kube.lease import ELECTION_ROUNDS, RolloutLimiter, election_delay

NS = "nodeagent"
GROUP = "coordination.k8s.io"

# -- pure decisions ---------------------------------------------------------------------------


def ticket(n: int, **kw) -> rp.Ticket:
    return rp.Ticket(name=f"t{n}", node=f"node-{n}", position=100 + n, version=str(100 + n),
                     **kw)


def coordinator(through: int = 0, seeds_done_at: datetime | None = None) -> rp.Coordinator:
    return rp.Coordinator("node-0", "50", 30.0, through, seeds_done_at)


def state(tickets, coord=None, alive=None, seeds_done=False) -> rp.QueueState:
    return rp.QueueState(tickets, coord or coordinator(), alive or {}, seeds_done)


def test_grants_follow_the_queue_and_a_wave_is_one_write():
    queue = [ticket(i) for i in range(9)]
    first = rp.plan(state(queue), limit=6, duration_s=30, now=0)
    assert [t.name for t in first.grants] == ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert first.grant_through == 105 and first.grant_each == []  # one write for the wave
    # two holders left: the next two are granted one by one (a write reaches one node)
    after = [t for t in queue if t.name not in ("t0", "t2")]
    plan = rp.plan(state(after, coordinator(through=105)), limit=6, duration_s=30, now=1)
    assert [t.name for t in plan.grants] == ["t6", "t7"] and plan.grant_through is None
    assert [t.name for t in plan.grant_each] == ["t6", "t7"]
    assert not plan.idle and rp.plan(state([]), 6, 30, 0).idle


def test_holders_expire_after_the_duration_waiters_never():
    queue = [ticket(0), ticket(1), ticket(2)]
    coord = coordinator(through=100)  # t0 holds; t1, t2 wait
    alive = {"t0": 10.0, "t1": 0.0, "t2": 0.0}
    plan = rp.plan(state(queue, coord, alive), limit=1, duration_s=30, now=39)
    assert plan.remove == [] and plan.grants == [] and plan.wake_at == 40.0
    plan = rp.plan(state(queue, coord, alive), limit=1, duration_s=30, now=40)
    assert plan.remove == [ticket(0)]  # its slot goes to the next in line
    assert [t.name for t in plan.grants] == ["t1"]


def test_seed_wave_then_everyone_through_the_mirror():
    mirrored = [ticket(i, mirrored=True, seed_wave=2) for i in range(5)]
    plain = ticket(9)
    plan = rp.plan(state([*mirrored, plain]), limit=3, duration_s=30, now=0)
    # two seeds; the third slot goes to the node without a mirror, not to a third seed
    assert [t.name for t in plan.grants] == ["t0", "t1", "t9"]
    assert plan.grant_through is None  # t2..t4 must keep waiting: grants one by one
    done = [ticket(0, mirrored=True, seed_wave=2, done=True, granted=True),
            ticket(1, mirrored=True, seed_wave=2, done=True, granted=True), *mirrored[2:]]
    plan = rp.plan(state(done), limit=3, duration_s=30, now=5)
    assert plan.mark_seeds_done
    assert {t.name for t in plan.remove} == {"t0", "t1"}  # the seeds' records go
    assert plan.grants == []  # the others pull through the mirror without a slot
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    assert rp.seeds_done(coordinator(seeds_done_at=wall), wall + timedelta(hours=1), 7200)
    assert not rp.seeds_done(coordinator(seeds_done_at=wall), wall + timedelta(hours=3), 7200)


def test_a_seed_that_left_is_replaced_and_a_wave_nobody_fills_ends():
    # the seed t0 failed (its ticket is gone): the next mirrored node becomes the seed
    waiting = [ticket(i, mirrored=True, seed_wave=1) for i in (1, 2, 3)]
    plan = rp.plan(state(waiting, coordinator(through=100)), limit=2, duration_s=30, now=0)
    assert [t.name for t in plan.grants] == ["t1"] and not plan.mark_seeds_done
    # wave 3, but the only two mirrored nodes are done: their records go, step down
    done = [ticket(i, mirrored=True, seed_wave=3, done=True, granted=True) for i in (0, 1)]
    plan = rp.plan(state([*done, ticket(5)]), limit=1, duration_s=30, now=0)
    assert {t.name for t in plan.remove} == {"t0", "t1"} and not plan.mark_seeds_done
    assert [t.name for t in plan.grants] == ["t5"]  # the plain node keeps its turn
    assert rp.plan(state(done), limit=1, duration_s=30, now=0).idle


def test_a_tag_moved_to_new_layers_is_seeded_again():
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    old_wave = rp.Coordinator("node-0", "50", 30.0, 0, wall, seeds_content="A")
    assert rp.seeds_done(old_wave, wall, 3600, "A") and rp.seeds_done(old_wave, wall, 3600)
    assert not rp.seeds_done(old_wave, wall, 3600, "B")  # the mirror lacks B's layers
    queue = [ticket(0, mirrored=True, seed_wave=1, content="A"),
             *(ticket(i, mirrored=True, seed_wave=1, content="B") for i in (1, 2))]
    plan = rp.plan(state(queue, old_wave, seeds_done=True), limit=2, duration_s=30, now=0)
    assert [t.name for t in plan.grants] == ["t1"]  # t0 needs no slot; t1 seeds B, t2 waits
    done = [ticket(1, mirrored=True, seed_wave=1, content="B", done=True, granted=True),
            ticket(2, mirrored=True, seed_wave=1, content="B")]
    plan = rp.plan(state(done, old_wave, seeds_done=True), limit=2, duration_s=30, now=1)
    assert plan.mark_seeds_done and plan.seeds_content == "B"
    assert [t.name for t in plan.remove] == ["t1"] and plan.grants == []  # t2: the mirror


def test_coordinator_vacancy_by_own_clock():
    clock = rp.VersionClock()
    coord = coordinator()
    assert rp.coordinator_vacant(None, clock, 0)
    assert not rp.coordinator_vacant(coord, clock, 100)  # first seen now
    assert not rp.coordinator_vacant(coord, clock, 129)
    assert rp.coordinator_vacant(coord, clock, 130)
    renewed = rp.Coordinator("node-0", "51", 30.0)
    assert not rp.coordinator_vacant(renewed, clock, 131)
    assert rp.coordinator_vacant(rp.Coordinator(None, "52", 30.0), clock, 131)  # released


def test_election_rounds_thin_out_the_candidates():
    delays = [election_delay(1.8) for _ in range(20000)]
    step = 1.8 / (ELECTION_ROUNDS + 1)
    assert min(delays) >= 0 and max(delays) <= 1.8
    first_round = sum(d < step for d in delays) / len(delays)
    assert first_round < 0.01  # of a thousand waiters, a handful try first
    assert sum(d < 1.8 - step for d in delays) / len(delays) == pytest.approx(0.5, abs=0.03)


# -- the gate against the API double ----------------------------------------------------------


@pytest.fixture
def api():
    with KubeApiDouble() as server:
        yield server


@contextlib.asynccontextmanager
async def nodes(api: KubeApiDouble, count: int, limit: int, **kw):
    """``count`` simulated nodes, each with its own client and RolloutLimiter."""
    clients = [make_client(load_config(server=api.url)) for _ in range(count)]
    limiters = [RolloutLimiter(client, NS, f"node-{i}", limit, **kw)
                for i, client in enumerate(clients)]
    try:
        yield limiters
    finally:
        await asyncio.gather(*(lim.aclose() for lim in limiters))
        await asyncio.gather(*(client.close() for client in clients))


def leases(api: KubeApiDouble) -> dict[str, dict]:
    return {lease["metadata"]["name"]: lease for lease in api.list("leases", NS, GROUP)}


class Pulls:
    """Records who pulls when; a pull is a sleep."""

    def __init__(self) -> None:
        self.now: set[str] = set()
        self.peak = 0
        self.order: list[str] = []

    async def pull(self, limiter: RolloutLimiter, image: str, seconds: float, **kw) -> None:
        async with limiter.gate(image, **kw):
            self.now.add(limiter.holder)
            self.order.append(limiter.holder)
            self.peak = max(self.peak, len(self.now))
            await asyncio.sleep(seconds)
            self.now.discard(limiter.holder)


async def test_limit_holds_everyone_pulls_and_idle_nodes_make_no_calls(api):
    image = "registry.local/ml/model:1"
    pulls = Pulls()
    async with nodes(api, 8, limit=3, lease_duration_s=5) as limiters:
        idle_from = time.monotonic()
        await asyncio.sleep(1.0)  # gates exist, nothing to pull
        assert sum(api.counts(since=idle_from).values()) == 0
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(
            *(pulls.pull(lim, image, 1.0) for lim in limiters)), 30)
        took = time.monotonic() - started
        await asyncio.sleep(0.3)
        after = time.monotonic()
        await asyncio.sleep(1.0)
        assert sum(api.counts(since=after).values()) == 0  # idle again: no calls at all
    assert pulls.peak == 3 and sorted(pulls.order) == sorted(lim.holder for lim in limiters)
    assert took < 3 * 1.0 + 3.5  # three waves and an election (one at a time: 8 s)
    counts = api.counts(since=started)
    assert counts[("list", "leases")] == 1  # the coordinator's; waiters only watch
    assert counts[("get", "leases")] == 0
    # nothing left but the coordinator Lease, released, for the next rollout
    [(name, lease)] = leases(api).items()
    assert name == rp.coordinator_name(image) and not lease["spec"].get("holderIdentity")


async def test_a_dead_holder_frees_its_slot_after_the_lease_duration(api):
    image = "registry.local/ml/big:2"
    async with nodes(api, 2, limit=1, lease_duration_s=3) as (alive, doomed):
        holding = asyncio.Event()

        async def die_while_pulling() -> None:
            async with doomed.gate(image):
                holding.set()
                await asyncio.sleep(3600)

        dying = asyncio.create_task(die_while_pulling())
        await asyncio.wait_for(holding.wait(), 10)
        # the node dies: no renewal, no release (its coordinator role dies with it)
        renewals = [t for t in asyncio.all_tasks() if t.get_name().startswith("renew ")]
        for task in [*renewals, *(task for _, task in doomed._coordinators.values())]:
            task.cancel()
        doomed._coordinators.clear()
        died = time.monotonic()
        pulls = Pulls()
        requests_before = len(api.requests)
        await asyncio.wait_for(pulls.pull(alive, image, 0.1), 20)
        waited = time.monotonic() - died
        assert 2.0 < waited < 3 + 2.5 + 2  # expiry of the coordinator, then of the slot
        calls = {(r.verb, r.name) for r in api.requests[requests_before:]}
        assert ("delete", rp.ticket_name(image, "node-1")) in calls  # the dead one's ticket
        assert not any(verb in ("get", "list") and not name for verb, name in calls
                       if verb == "get")  # no polling while waiting
        dying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dying


async def test_a_long_pull_renews_its_ticket_so_nobody_takes_the_slot(api):
    image = "registry.local/ml/slow:3"
    async with nodes(api, 2, limit=1, lease_duration_s=3) as (first, second):
        pulls = Pulls()
        one = asyncio.create_task(pulls.pull(first, image, 4.5))  # longer than the lease
        await asyncio.sleep(0.8)
        two = asyncio.create_task(pulls.pull(second, image, 0.1))
        await asyncio.wait_for(asyncio.gather(one, two), 20)
    assert pulls.order == ["node-0", "node-1"] and pulls.peak == 1
    renewals = [r for r in api.calls("update", "leases")
                if r.name == rp.ticket_name(image, "node-0") and r.status == 200]
    assert len(renewals) >= 3


async def test_the_watch_starts_over_after_410_gone(api):
    image = "registry.local/ml/gone:4"
    async with nodes(api, 3, limit=1, lease_duration_s=5) as limiters:
        pulls = Pulls()
        tasks = [asyncio.create_task(pulls.pull(lim, image, 1.0)) for lim in limiters]
        await asyncio.sleep(0.6)
        api.compact()
        api.drop_connections()  # every watch resumes from a version that is gone now
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert pulls.peak == 1 and len(pulls.order) == 3


async def test_seeds_first_then_the_others_at_once_without_a_slot(api):
    image = "mirror.local/ml/model:5"
    async with nodes(api, 7, limit=2, lease_duration_s=5) as limiters:
        *fleet, late = limiters
        pulls = Pulls()
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(
            *(pulls.pull(lim, image, 0.8, mirrored=True, seed_wave=2) for lim in fleet)), 20)
        took = time.monotonic() - started
        assert pulls.peak == 4  # after the two seeds, the four others at once
        assert took < 2 * 0.8 + 4  # seeds, then the rest (slack for a loaded machine)
        coord = leases(api)[rp.coordinator_name(image)]
        assert rp.SEEDS_DONE_AT in coord["metadata"]["annotations"]
        # a node that comes later pulls through the mirror at once: no write at all
        before = time.monotonic()
        await asyncio.wait_for(late.gate(image, mirrored=True).__aenter__(), 5)
        assert set(api.counts(since=before)) == {("watch", "leases")}
    assert set(leases(api)) == {rp.coordinator_name(image)}


async def test_a_waiting_node_that_gives_up_leaves_the_queue(api):
    image = "registry.local/ml/cancel:6"
    async with nodes(api, 2, limit=1, lease_duration_s=5) as (holder, waiter):
        pulls = Pulls()
        first = asyncio.create_task(pulls.pull(holder, image, 1.5))
        await asyncio.sleep(0.5)
        second = asyncio.create_task(pulls.pull(waiter, image, 0.1))
        await asyncio.sleep(0.5)
        assert rp.ticket_name(image, "node-1") in leases(api)
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        assert rp.ticket_name(image, "node-1") not in leases(api)
        await asyncio.wait_for(first, 10)
    assert pulls.order == ["node-0"]


# -- the simulation, small ---------------------------------------------------------------------


def _load_simulation():
    path = Path(__file__).resolve().parent.parent / "bench" / "rollout_sim.py"
    if "rollout_sim" in sys.modules:
        return sys.modules["rollout_sim"]
    spec = importlib.util.spec_from_file_location("rollout_sim", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rollout_sim"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_simulated_rollout_meets_the_targets():
    """100 nodes, limit 10 (bench/rollout_sim.py runs 1,000 with limit 50)."""
    sim = _load_simulation()
    result = await sim.simulate(nodes=100, limit=10, pull_s=2.0, idle_s=2.0, join_s=0.5)
    assert result.idle_per_node_min <= 1, sim.table(result)
    assert result.per_node <= 3, sim.table(result)
    assert result.by_verb["watch"] <= 1.1 * result.nodes, sim.table(result)
    assert result.peak_pulling == 10, sim.table(result)
    assert result.overrun <= 0.10, sim.table(result)
