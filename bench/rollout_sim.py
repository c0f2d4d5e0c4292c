"""Rollout at scale: N simulated agents pull one image with a cluster-wide rollout limit.

Every simulated node runs the real gate (``nodeagent.kube.lease.RolloutLimiter``) with
its own lightkube client and connections, all in this one process (asyncio), against
tests/support/kubeapi/ over real HTTP on loopback: a TEST DOUBLE of the Kubernetes API
server speaking the real list/watch protocol (no Kubernetes API server can be installed
here).
A pull is a sleep of --pull-seconds (the time scale: the run takes about nodes / limit x
pull seconds).

Phases: idle (every node has a limiter, no image to pull) for --idle-seconds, then every
node asks for the same image, all within --join-seconds (default: 4 ms of this process's
CPU per node joining; see simulate). The rollout time runs from the first node's ask.
Reported: API requests per node per minute while
idle and while waiting, the peak request rate, the total requests of the rollout per
node (watch streams counted apart), the most nodes pulling at once, and the rollout time
against the ideal (nodes / limit x pull time). Targets: idle <= 1 request/node/min,
total <= 3 requests per node plus the watches, rollout time within 10 % of the ideal.

    .venv/bin/python bench/rollout_sim.py [--nodes 1000] [--limit 50] [--pull-seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import multiprocessing
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx2  # noqa: E402
from support.kubeapi import KubeApiDouble  # noqa: E402  (the test double lives with the tests)

from nodeagent.kube.lease import RolloutLimiter  # noqa: E402

IMAGE = "registry.example.com/ml/model-server:1.0"
NAMESPACE = "nodeagent"
JOIN_RATE = 150  # nodes a second this process starts without falling behind


class ApiProcess:
    """The API double in a child process: its HTTP serving does not compete with the
    simulated nodes' event loop for this process's interpreter lock (as a real API
    server runs apart from the nodes)."""

    def __enter__(self) -> ApiProcess:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        self.url = self._conn.recv()
        return self

    def requests(self, since: float) -> list[tuple[float, str]]:
        """(arrival time, verb) of every request since ``since`` (the clocks agree:
        both processes read the system's monotonic clock)."""
        self._conn.send(("requests", since))
        return self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        self._conn.send(("stop", 0.0))
        self._proc.join(10)


def _serve(conn) -> None:
    with KubeApiDouble() as api:
        conn.send(api.url)
        while True:
            command, since = conn.recv()
            if command == "stop":
                return
            conn.send([(r.at, r.verb) for r in list(api.requests) if r.at >= since])


@dataclass
class Node:
    """One simulated node: its client-side request log and its rollout times."""

    name: str
    requests: list[tuple[float, str, bool]] = field(default_factory=list)  # (t, method, watch)
    asked: float = 0.0
    granted: float = 0.0
    done: float = 0.0


class CountingTransport(httpx2.AsyncHTTPTransport):
    """Records every request a node's client sends (client-side attribution). Kept-alive
    connections live through the idle phase: a real node has its connections to the API
    server open already, and opening a thousand here would serialize in one process what
    a thousand nodes do in parallel."""

    def __init__(self, node: Node) -> None:
        super().__init__(limits=httpx2.Limits(keepalive_expiry=3600))
        self.node = node

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        watch = request.url.params.get("watch") == "true"
        self.node.requests.append((time.monotonic(), request.method, watch))
        return await super().handle_async_request(request)


def node_client(url: str, node: Node):
    """A client like the agent's (nodeagent.kube.client.make_client) for one node."""
    from lightkube import AsyncClient, KubeConfig
    from lightkube.config.models import Cluster, User

    # plain HTTP on loopback: insecure only skips loading CA files a thousand times
    config = KubeConfig.from_one(cluster=Cluster(server=url, insecure=True), user=User())
    return AsyncClient(config=config, timeout=httpx2.Timeout(15.0), field_manager="nodeagent",
                       trust_env=False, transport=CountingTransport(node))


@dataclass
class Result:
    nodes: int
    limit: int
    pull_s: float
    idle_s: float
    idle_requests: int
    rollout_s: float
    pulled_s: float  # mean time a simulated pull really took (a sleep in a busy process)
    first_grant_s: float
    peak_pulling: int
    by_verb: Counter[str]
    peak_rate: int
    waiting_requests: int
    waiting_minutes: float
    mirrored: bool = False

    @property
    def ideal_s(self) -> float:
        return math.ceil(self.nodes / self.limit) * self.pull_s

    @property
    def total(self) -> int:
        return sum(n for verb, n in self.by_verb.items() if verb != "watch")

    @property
    def per_node(self) -> float:
        return self.total / self.nodes

    @property
    def idle_per_node_min(self) -> float:
        return self.idle_requests / self.nodes / (self.idle_s / 60)

    @property
    def waiting_per_node_min(self) -> float:
        return self.waiting_requests / self.waiting_minutes if self.waiting_minutes else 0.0

    @property
    def ideal_measured_s(self) -> float:
        return math.ceil(self.nodes / self.limit) * self.pulled_s

    @property
    def overrun(self) -> float:
        """Against the ideal with the pulls as long as they really were: a sleep in this
        busy process overshoots, which is the simulator's time, not the queue's."""
        return self.rollout_s / self.ideal_measured_s - 1


async def _open_connections(client, count: int = 2) -> None:
    """A node's kept-alive connections (not counted: made before the measurement)."""
    from lightkube import ApiError
    from lightkube.resources.coordination_v1 import Lease

    async def probe() -> None:
        with contextlib.suppress(ApiError):
            await client.get(Lease, "connection-warm-up", namespace=NAMESPACE)

    await asyncio.gather(*(probe() for _ in range(count)))


async def simulate(nodes: int = 1000, limit: int = 50, pull_s: float = 2.0,
                   idle_s: float = 10.0, lease_duration_s: int = 30,
                   join_s: float | None = None,
                   mirrored: bool = False, seed_wave: int | None = None) -> Result:
    with ApiProcess() as api:
        sims = [Node(f"ip-10-0-{i // 250}-{i % 250}.ec2.internal") for i in range(nodes)]
        clients = [node_client(api.url, sim) for sim in sims]
        limiters = [RolloutLimiter(client, NAMESPACE, sim.name, limit,
                                   lease_duration_s=lease_duration_s)
                    for client, sim in zip(clients, sims, strict=True)]
        try:
            for i in range(0, nodes, 100):
                await asyncio.gather(*(_open_connections(c) for c in clients[i:i + 100]))
            for sim in sims:
                sim.requests.clear()
            idle_start = time.monotonic()
            await asyncio.sleep(idle_s)  # every node has its gate; nothing to pull
            idle_requests = len(api.requests(since=idle_start))
            pulling: set[str] = set()
            peak = 0

            async def one(limiter: RolloutLimiter, sim: Node, delay: float) -> None:
                nonlocal peak
                await asyncio.sleep(delay)
                sim.asked = time.monotonic()
                async with limiter.gate(IMAGE, mirrored=mirrored, seed_wave=seed_wave):
                    sim.granted = time.monotonic()
                    pulling.add(sim.name)
                    peak = max(peak, len(pulling))
                    await asyncio.sleep(pull_s)
                    pulling.discard(sim.name)
                sim.done = time.monotonic()

            start = time.monotonic()
            # Nodes learn of the image within join_s of each other (their watches and
            # reconcile loops do not run in step), and this one process can start only
            # about JOIN_RATE nodes a second (two requests each, ~4 ms of CPU here) where
            # real nodes each have their own CPU. Joining later costs the rollout nothing
            # while the queue does not run dry: it is FIFO, the first waves keep the slots
            # busy meanwhile, and the report's first-grant time shows when it started.
            join = nodes / JOIN_RATE if join_s is None else join_s
            await asyncio.gather(*(one(lim, sim, random.uniform(0, join))
                                   for lim, sim in zip(limiters, sims, strict=True)))
            start = min(sim.asked for sim in sims)
            rollout_s = max(sim.done for sim in sims) - start
            await asyncio.sleep(0.5)  # the coordinator steps down
            calls = api.requests(since=start)
        finally:
            await asyncio.gather(*(limiter.aclose() for limiter in limiters))
            await asyncio.gather(*(client.close() for client in clients))
    per_second = Counter(int(at - start) for at, verb in calls if verb != "watch")
    waiting = [(sim, t) for sim in sims for t, _, watch in sim.requests
               if not watch and sim.asked < t < sim.granted]
    joins = sum(1 for sim in sims if any(sim.asked <= t < sim.granted and method == "POST"
                                         for t, method, _ in sim.requests))
    return Result(
        nodes=nodes, limit=limit, pull_s=pull_s, idle_s=idle_s, idle_requests=idle_requests,
        rollout_s=rollout_s, first_grant_s=min(sim.granted for sim in sims) - start,
        pulled_s=sum(sim.done - sim.granted for sim in sims) / nodes,
        peak_pulling=peak,
        by_verb=Counter(verb for _, verb in calls),
        peak_rate=max(per_second.values(), default=0),
        # while waiting: requests after a node took its ticket, until its turn
        waiting_requests=max(0, len(waiting) - joins),
        waiting_minutes=sum(sim.granted - sim.asked for sim in sims) / 60,
        mirrored=mirrored,
    )


def table(result: Result) -> str:
    verbs = ", ".join(f"{verb} {n}" for verb, n in sorted(result.by_verb.items())
                      if verb != "watch")
    rows = [
        ("nodes / rollout limit / pull time", f"{result.nodes} / {result.limit} / "
         f"{result.pull_s:g} s", ""),
        ("requests per node per minute, idle", f"{result.idle_per_node_min:.2f}", "<= 1"),
        ("requests per node per minute, waiting", f"{result.waiting_per_node_min:.3f}", ""),
        ("peak request rate (1-s window)", f"{result.peak_rate}/s", ""),
        ("requests for the rollout, per node", f"{result.per_node:.2f} ({verbs})", "<= 3"),
        ("watch requests, per node", f"{result.by_verb['watch'] / result.nodes:.2f}", ""),
        ("most nodes pulling at once", str(result.peak_pulling), f"<= {result.limit}"),
        ("first slot granted after", f"{result.first_grant_s:.2f} s", ""),
        ("rollout time / ideal (nodes / limit x pull)", f"{result.rollout_s:.1f} s / "
         f"{result.ideal_s:.1f} s ({result.rollout_s / result.ideal_s - 1:+.1%})", ""),
        ("same, pulls as long as they took here", f"{result.rollout_s:.1f} s / "
         f"{result.ideal_measured_s:.1f} s ({result.overrun:+.1%}; mean pull "
         f"{result.pulled_s:.2f} s)", "within 10 %"),
    ]
    lines = ["| measure | result | target |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--pull-seconds", type=float, default=5.0,
                        help="simulated pull time: the time scale of the run (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--lease-duration", type=int, default=30)
    parser.add_argument("--join-seconds", type=float, default=None,
                        help="nodes ask for the image within this window (default: "
                        f"nodes / {JOIN_RATE} s)")
    args = parser.parse_args(argv)
    if args.join_seconds is None:
        args.join_seconds = args.nodes / JOIN_RATE
    for name in ("nodes", "limit", "pull_seconds", "idle_seconds", "lease_duration",
                 "join_seconds"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= (0 if name == "join_seconds" else 1e-9)):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(simulate(args.nodes, args.limit, args.pull_seconds,
                                  args.idle_seconds, args.lease_duration, args.join_seconds))
    print(table(result))
    print(f"\n    .venv/bin/python bench/rollout_sim.py --nodes {args.nodes} --limit "
          f"{args.limit} --pull-seconds {args.pull_seconds:g} --join-seconds "
          f"{args.join_seconds:g}")
    met = (result.idle_per_node_min <= 1 and result.per_node <= 3
           and result.peak_pulling <= result.limit and abs(result.overrun) <= 0.10)
    return 0 if met else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
