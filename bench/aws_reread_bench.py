"""Cost of rereading unparsable answers (snapshot/aws_reads.py) on calls that succeed.

DescribeVolumes against moto in server mode on loopback, through the raw botocore client
and through ``RereadingClient`` (what ``AwsClients`` hands out), interleaved, median of
``--runs`` runs of ``--calls`` calls; then the cost of looking the wrapped method up.

    .venv/bin/python bench/aws_reread_bench.py --runs 5 --calls 300
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.aws_servers import MotoServer  # noqa: E402  (moto server lives with the tests)

from nodeagent.snapshot.ec2 import AwsClients, AwsOptions  # noqa: E402


def per_call_ms(client: Any, volume_id: str, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        client.describe_volumes(VolumeIds=[volume_id])
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1")
    moto = MotoServer()
    try:
        wrapped = AwsClients(AwsOptions(endpoint_url=moto.url)).ec2
        raw = wrapped._client
        volume_id = raw.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
        times: dict[str, list[float]] = {"raw botocore client": [], "RereadingClient": []}
        for client in (raw, wrapped):
            per_call_ms(client, volume_id, 30)  # warm-up
        for _ in range(args.runs):
            times["raw botocore client"].append(per_call_ms(raw, volume_id, args.calls))
            times["RereadingClient"].append(per_call_ms(wrapped, volume_id, args.calls))
        print("| client | ms per DescribeVolumes, median | runs |")
        for name, runs in times.items():
            print(f"| {name} | {statistics.median(runs):.3f} | "
                  f"{', '.join(f'{r:.3f}' for r in runs)} |")
        start = time.perf_counter()
        for _ in range(100_000):
            wrapped.describe_volumes  # noqa: B018  (the lookup is what is measured)
        print(f"lookup of a wrapped method: {(time.perf_counter() - start) * 1e4:.0f} ns")
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
