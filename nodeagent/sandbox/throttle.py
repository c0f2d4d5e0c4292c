"""A throttling TCP proxy on loopback, with fault injection, for tests and benchmarks.

Put it in front of a real server (moto S3, a registry) to give a download the shape of a
real network: each connection capped at ``per_connection_bps`` and all connections
together at ``total_bps``, in the server-to-client direction (requests pass unthrottled).
It works on raw TCP, so any protocol goes through unchanged::

    with ThrottleProxy("127.0.0.1:5000", per_connection_bps=40 * MiB,
                       total_bps=400 * MiB) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, ...)
        proxy.inject(corrupt(after_bytes=2 * MiB), times=1)   # the next connection only
        ...
        proxy.stats()            # connections, bytes each way, the proxy's own CPU-seconds

Faults apply to connections accepted after ``inject`` (``times`` of them; ``None`` = all
of them until ``clear_faults``), at an offset of the connection's server-to-client byte
stream (HTTP headers included): ``corrupt`` flips bytes, ``cut`` ends the connection,
``pause`` stops forwarding for a while. ``record_requests=True`` keeps the HTTP/1.x
request lines clients send (``requests()``), so a test can count GETs on the wire.

Design, and its cost: two threads per connection (the proxy serves tens of connections,
not thousands) and blocking sockets. Downstream bytes move with ``os.splice`` through a
1 MiB pipe, so they never enter Python; the limiter reserves time on two shared
token-bucket clocks (the connection's, the total's) and sleeps. A connection with a
``corrupt`` fault copies through a buffer instead, to edit the bytes. Measured on a
2-core VM, 2 GiB through 12 connections capped at 40 MiB/s each and 400 MiB/s in total,
1 MiB chunks: 0.7 CPU-s spliced (0.14 of a core), 1.5 CPU-s copied (256 KiB chunks:
1.1 / 1.7). ``stats().cpu_seconds`` reports it for each run (the proxy threads' CPU).

It runs in background threads: use it as a context manager from sync or async code, or
standalone (``python -m nodeagent.sandbox.throttle_main UPSTREAM --per-connection-mibps
40 --total-mibps 400``, which prints the listening address) to keep its CPU out of the
process being measured.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field

MiB = 2**20
PIPE_SIZE = MiB
_REQUEST_LINE = re.compile(rb"(?:^|\r\n)([A-Z]{3,7}) (\S+) HTTP/1\.[01]\r\n")


@dataclass(frozen=True)
class Fault:
    """What to do at ``after_bytes`` of a connection's server-to-client stream."""

    kind: str  # "corrupt" | "cut" | "pause"
    after_bytes: int
    length: int = 1  # corrupt: bytes flipped
    seconds: float = 0.0  # pause: how long nothing is forwarded


def corrupt(after_bytes: int, length: int = 1) -> Fault:
    """Flip (XOR 0xFF) ``length`` bytes starting at ``after_bytes``."""
    return Fault("corrupt", after_bytes, length=length)


def cut(after_bytes: int) -> Fault:
    """End the connection once ``after_bytes`` were forwarded: the client gets exactly
    that many bytes, then end-of-stream (a truncated response); upstream is closed."""
    return Fault("cut", after_bytes)


def pause(after_bytes: int, seconds: float) -> Fault:
    """Forward nothing for ``seconds`` once ``after_bytes`` were forwarded."""
    return Fault("pause", after_bytes, seconds=seconds)


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_down: int = 0  # server -> client
    bytes_up: int = 0  # client -> server
    cpu_seconds: float = 0.0  # CPU time of the proxy's threads, finished or running
    faults_fired: int = 0


class RateLimiter:
    """A token bucket kept as a clock: ``reserve(n)`` says how long to wait before
    sending n bytes. Thread-safe; ``bytes_per_s=None`` means unlimited. ``burst_s`` of
    idle credit lets a paused sender catch up a little, as on a real link."""

    def __init__(self, bytes_per_s: float | None, burst_s: float = 0.02):
        self.bytes_per_s = bytes_per_s
        self.burst_s = burst_s
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> float:
        if not self.bytes_per_s:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now - self.burst_s) + n / self.bytes_per_s
            return self._next - now


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket
    faults: list[Fault]
    limiter: RateLimiter
    down: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


def _parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(address, tuple):
        return address
    text = address.split("://", 1)[-1].rstrip("/")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"upstream {address!r}: expected host:port or http://host:port")
    return host, int(port)


class ThrottleProxy:
    """Listens on ``listen`` (default 127.0.0.1, a free port) and forwards to ``upstream``.

    Rates are bytes per second (``None``: unlimited); ``set_limits`` changes them live.
    ``use_splice=False`` forces the copying path (for comparison).
    """

    def __init__(
        self, upstream: str | tuple[str, int], *, per_connection_bps: float | None = None,
        total_bps: float | None = None, listen: tuple[str, int] = ("127.0.0.1", 0),
        chunk_bytes: int = MiB, use_splice: bool = True, record_requests: bool = False,
    ) -> None:
        self.upstream = _parse_address(upstream)
        self.per_connection_bps = per_connection_bps
        self.total = RateLimiter(total_bps)
        self.chunk_bytes = chunk_bytes
        self.use_splice = use_splice and hasattr(os, "splice")
        self.record_requests = record_requests
        self._listen = listen
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._stats = ProxyStats()
        self._pending: list[tuple[Fault, int | None]] = []
        self._requests: list[tuple[str, str]] = []
        self._conns: set[_Conn] = set()
        self._live_cpu: dict[int, float] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ThrottleProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self._listen)
        sock.listen(128)
        self._sock = sock
        self._spawn(self._accept_loop, "throttle-accept")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._close(conn)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> ThrottleProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ThrottleProxy:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is None:
            raise RuntimeError("proxy not started")
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ control
    def set_limits(self, per_connection_bps: float | None, total_bps: float | None) -> None:
        """New caps; the per-connection one applies to connections accepted from now on."""
        self.per_connection_bps = per_connection_bps
        self.total.bytes_per_s = total_bps

    def inject(self, fault: Fault, times: int | None = 1) -> None:
        """Apply ``fault`` to the next ``times`` new connections (None: every one)."""
        with self._lock:
            self._pending.append((fault, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._pending.clear()

    def stats(self) -> ProxyStats:
        with self._lock:
            s = self._stats
            return ProxyStats(s.connections, s.bytes_down, s.bytes_up,
                              s.cpu_seconds + sum(self._live_cpu.values()), s.faults_fired)

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of the HTTP requests seen so far (``record_requests``)."""
        with self._lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ------------------------------------------------------------------ workers
    def _spawn(self, target, name: str, *args: object) -> None:  # type: ignore[no-untyped-def]
        def run() -> None:
            ident = threading.get_ident()
            try:
                target(*args)
            finally:
                with self._lock:
                    self._live_cpu.pop(ident, None)
                    self._stats.cpu_seconds += time.thread_time()

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream, self._take_faults(),
                         RateLimiter(self.per_connection_bps))
            with self._lock:
                self._conns.add(conn)
                self._stats.connections += 1
            self._spawn(self._pump_up, "throttle-up", conn)
            self._spawn(self._pump_down, "throttle-down", conn)

    def _take_faults(self) -> list[Fault]:
        with self._lock:
            faults, keep = [], []
            for fault, times in self._pending:
                faults.append(fault)
                if times is None or times > 1:
                    keep.append((fault, None if times is None else times - 1))
            self._pending = keep
        return sorted(faults, key=lambda f: f.after_bytes)

    def _pump_up(self, conn: _Conn) -> None:
        try:
            while True:
                data = conn.client.recv(65536)
                if not data:
                    conn.upstream.shutdown(socket.SHUT_WR)
                    return
                if self.record_requests:
                    found = [(m.decode(), t.decode()) for m, t in _REQUEST_LINE.findall(data)]
                    with self._lock:
                        self._requests.extend(found)
                conn.upstream.sendall(data)
                with self._lock:
                    self._stats.bytes_up += len(data)
        except OSError:
            self._close(conn)

    def _pump_down(self, conn: _Conn) -> None:
        copying = not self.use_splice or any(f.kind == "corrupt" for f in conn.faults)
        try:
            if copying:
                self._copy_down(conn)
            else:
                self._splice_down(conn)
            with contextlib.suppress(OSError):
                conn.client.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                raise
        finally:
            self._close(conn)

    def _limit(self, conn: _Conn) -> int:
        """Bytes to move next: a chunk, never past the next fault's offset."""
        ahead = [f.after_bytes - conn.down for f in conn.faults if f.after_bytes > conn.down]
        return min([self.chunk_bytes, *ahead])

    def _fire_due_faults(self, conn: _Conn) -> bool:
        """Pause/cut faults whose offset was reached; False when the connection was cut."""
        due = [f for f in conn.faults if f.kind != "corrupt" and f.after_bytes <= conn.down]
        for fault in due:
            conn.faults.remove(fault)
            with self._lock:
                self._stats.faults_fired += 1
            if fault.kind == "cut":
                self._close(conn)
                return False
            time.sleep(fault.seconds)
        return True

    def _pace(self, conn: _Conn, n: int) -> None:
        wait = max(conn.limiter.reserve(n), self.total.reserve(n))
        if wait > 0:
            time.sleep(wait)
        conn.down += n
        with self._lock:
            self._stats.bytes_down += n
            self._live_cpu[threading.get_ident()] = time.thread_time()

    def _splice_down(self, conn: _Conn) -> None:
        pipe_r, pipe_w = os.pipe()
        try:
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            src, dst = conn.upstream.fileno(), conn.client.fileno()
            while self._fire_due_faults(conn):
                n = os.splice(src, pipe_w, min(self._limit(conn), PIPE_SIZE))
                if n == 0:
                    return
                self._pace(conn, n)
                left = n
                while left:
                    left -= os.splice(pipe_r, dst, left)
        finally:
            os.close(pipe_r)
            os.close(pipe_w)

    def _copy_down(self, conn: _Conn) -> None:
        buf = bytearray(self.chunk_bytes)
        view = memoryview(buf)
        while self._fire_due_faults(conn):
            n = conn.upstream.recv_into(view, self._limit(conn))
            if n == 0:
                return
            self._corrupt_in_place(conn, view[:n])
            self._pace(conn, n)
            conn.client.sendall(view[:n])

    def _corrupt_in_place(self, conn: _Conn, chunk: memoryview) -> None:
        start, end = conn.down, conn.down + len(chunk)
        for fault in [f for f in conn.faults if f.kind == "corrupt"]:
            lo, hi = max(start, fault.after_bytes), min(end, fault.after_bytes + fault.length)
            for pos in range(lo, hi):
                chunk[pos - start] ^= 0xFF
            if hi >= fault.after_bytes + fault.length:
                conn.faults.remove(fault)
                with self._lock:
                    self._stats.faults_fired += 1

    def _close(self, conn: _Conn) -> None:
        with self._lock:
            if conn.closed.is_set():
                return
            conn.closed.set()
            self._conns.discard(conn)
        for s in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
