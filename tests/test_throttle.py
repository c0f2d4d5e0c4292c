"""The throttling TCP proxy (nodeagent.sandbox.throttle) against a real upstream socket
server and, for the request log, a real HTTP server."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nodeagent.sandbox.throttle import MiB, ThrottleProxy, corrupt, cut, pause

PAYLOAD = bytes(range(256)) * (4 * MiB // 256)  # 4 MiB, every byte position recognisable


@pytest.fixture
def upstream() -> Iterator[tuple[str, int]]:
    """Sends PAYLOAD to each connection, then closes it."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_send, args=(conn,), daemon=True).start()

    def _send(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(PAYLOAD)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[:2]
    server.close()


def fetch(proxy: ThrottleProxy) -> bytes:
    """Everything the proxy forwards on one connection (until EOF or reset)."""
    chunks = []
    with socket.create_connection(proxy.address, timeout=20) as s:
        try:
            while data := s.recv(MiB):
                chunks.append(data)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("use_splice", [True, False])
def test_forwards_bytes_unchanged_at_the_per_connection_cap(upstream, use_splice) -> None:
    with ThrottleProxy(upstream, per_connection_bps=16 * MiB, use_splice=use_splice) as proxy:
        start = time.monotonic()
        got = fetch(proxy)
        took = time.monotonic() - start
        stats = proxy.stats()
    assert got == PAYLOAD
    assert took >= 0.2  # 4 MiB at 16 MiB/s is 0.25 s (minus a small burst)
    assert stats.connections == 1 and stats.bytes_down == len(PAYLOAD)
    assert stats.cpu_seconds > 0


def test_total_cap_is_shared_by_all_connections(upstream) -> None:
    with ThrottleProxy(upstream, per_connection_bps=64 * MiB, total_bps=16 * MiB) as proxy:
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda: results.append(fetch(proxy)))
                   for _ in range(4)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - start
    assert results == [PAYLOAD] * 4
    # 16 MiB at 16 MiB/s: about 1 s; uncapped, each connection alone would take 1/16 s.
    assert took >= 0.9


def test_corrupt_flips_bytes_of_the_next_connection_only(upstream) -> None:
    with ThrottleProxy(upstream) as proxy:
        proxy.inject(corrupt(after_bytes=MiB + 3, length=2), times=1)
        first, second = fetch(proxy), fetch(proxy)
        fired = proxy.stats().faults_fired
    diff = [i for i in range(len(PAYLOAD)) if first[i] != PAYLOAD[i]]
    assert diff == [MiB + 3, MiB + 4]
    assert first[MiB + 3] == PAYLOAD[MiB + 3] ^ 0xFF
    assert second == PAYLOAD and fired == 1


@pytest.mark.parametrize("use_splice", [True, False])
def test_cut_ends_the_connection_after_exactly_n_bytes(upstream, use_splice) -> None:
    with ThrottleProxy(upstream, use_splice=use_splice) as proxy:
        proxy.inject(cut(after_bytes=MiB + 17), times=None)
        got = [fetch(proxy) for _ in range(2)]
    assert [len(g) for g in got] == [MiB + 17] * 2
    assert got == [PAYLOAD[: MiB + 17]] * 2


def test_pause_holds_the_stream(upstream) -> None:
    with ThrottleProxy(upstream) as proxy:
        proxy.inject(pause(after_bytes=1000, seconds=0.6))
        start = time.monotonic()
        got = fetch(proxy)
        took = time.monotonic() - start
    assert got == PAYLOAD and took >= 0.6


def test_records_http_request_lines() -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with ThrottleProxy(httpd.server_address, record_requests=True) as proxy:
            conn = http.client.HTTPConnection(*proxy.address, timeout=10)
            for path in ("/bucket/a?x=1", "/bucket/b"):  # one keep-alive connection
                conn.request("GET", path)
                assert conn.getresponse().read() == b"ok"
            conn.close()
            assert proxy.requests() == [("GET", "/bucket/a?x=1"), ("GET", "/bucket/b")]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_runs_as_its_own_process(upstream) -> None:
    host, port = upstream
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.sandbox.throttle_main", f"{host}:{port}",
         "--total-mibps", "64"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        proxy_host, proxy_port = url.removeprefix("http://").split(":")
        with socket.create_connection((proxy_host, int(proxy_port)), timeout=10) as s:
            got = b""
            while data := s.recv(MiB):
                got += data
        assert got == PAYLOAD
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert f"bytes_down={len(PAYLOAD)}" in out and proc.returncode == 0
