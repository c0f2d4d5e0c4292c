"""Run the throttling proxy (nodeagent.sandbox.throttle) as a process of its own, so a
benchmark measures its client without the proxy's CPU. Prints the proxy's URL on the first
line; on SIGTERM/SIGINT prints its stats as one line and exits."""

from __future__ import annotations

import signal
import sys
import threading

from nodeagent.inputs import Range, StrictParser, listen_port
from nodeagent.sandbox.throttle import MiB, ThrottleProxy

RATE_MIBPS = Range(float, 0, 1e6, low_open=True)


def main(argv: list[str] | None = None) -> int:
    p = StrictParser(prog="python -m nodeagent.sandbox.throttle_main",
                                description="Throttling TCP proxy on loopback (runs until "
                                            "SIGTERM/SIGINT; prints its address, then its "
                                            "stats as one line on exit).")
    p.add_argument("upstream", help="host:port to forward to")
    p.add_argument("--port", type=listen_port, default=0, help="default 0: any free port")
    p.add_argument("--per-connection-mibps", type=RATE_MIBPS, default=None,
                   help=f"MiB/s per connection, {RATE_MIBPS} (default: unlimited)")
    p.add_argument("--total-mibps", type=RATE_MIBPS, default=None,
                   help=f"MiB/s for all connections, {RATE_MIBPS} (default: unlimited)")
    p.add_argument("--no-splice", action="store_true")
    args = p.parse_args(argv)
    proxy = ThrottleProxy(
        args.upstream, listen=("127.0.0.1", args.port), use_splice=not args.no_splice,
        per_connection_bps=args.per_connection_mibps and args.per_connection_mibps * MiB,
        total_bps=args.total_mibps and args.total_mibps * MiB)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with proxy:
        print(proxy.url, flush=True)
        done.wait()
        s = proxy.stats()
    print(f"connections={s.connections} bytes_down={s.bytes_down} bytes_up={s.bytes_up} "
          f"cpu_seconds={s.cpu_seconds:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
