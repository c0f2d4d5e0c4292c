"""The HTTP side of the metrics: ``/metrics``, ``/healthz`` and ``/readyz`` on one port,
and the liveness/readiness state the probes answer from (``nodeagent.metrics`` re-exports
``HealthState`` and ``MetricsServer`` and serves its registry with ``serve``)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nodeagent.errors import NodeagentError


class MetricsServerError(NodeagentError):
    """The metrics port cannot be served (in use, not allowed, no such address)."""


class HealthState:
    """Liveness and readiness, shared between the worker code and the HTTP thread.

    Live unless ``set_live(False, why)`` was called or, with ``heartbeat_timeout_s``,
    no ``beat()`` came for that long (a wedged event loop). Ready once
    ``set_ready(True)``.
    """

    def __init__(self, heartbeat_timeout_s: float | None = None):
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._lock = threading.Lock()
        self._live, self._live_reason = True, "ok"
        self._ready, self._ready_reason = False, "starting"
        self._last_beat = time.monotonic()

    def beat(self) -> None:
        with self._lock:
            self._last_beat = time.monotonic()

    def set_live(self, live: bool, reason: str = "ok") -> None:
        with self._lock:
            self._live, self._live_reason = live, reason

    def set_ready(self, ready: bool, reason: str = "ok") -> None:
        with self._lock:
            self._ready, self._ready_reason = ready, reason

    def live(self) -> tuple[bool, str]:
        with self._lock:
            if not self._live:
                return False, self._live_reason
            age = time.monotonic() - self._last_beat
            if self.heartbeat_timeout_s is not None and age > self.heartbeat_timeout_s:
                return False, f"no heartbeat for {age:.0f}s"
            return True, "ok"

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready, self._ready_reason


class MetricsServer:
    """A running /metrics, /healthz, /readyz server; ``port`` is the bound port."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread
        self.port: int = httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve_registry(registry: CollectorRegistry, port: int, health: HealthState | None = None,
                   host: str = "0.0.0.0") -> MetricsServer:
    """Serve metrics and health on ``host:port`` (port 0 picks a free one) in a thread.

    Without ``health`` both probes answer 200 while the process runs.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                self._probe(health.live() if health else (True, "ok"))
            elif path == "/readyz":
                self._probe(health.ready() if health else (True, "ok"))
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _probe(self, result: tuple[bool, str]) -> None:
            ok, reason = result
            self._send(200 if ok else 503, f"{reason}\n".encode())

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Silent: scrapes every few seconds would flood the log."""

    try:
        httpd = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:  # EADDRINUSE, EACCES, EADDRNOTAVAIL, an unknown host name
        reason = (exc.strerror or str(exc)).lower()
        raise MetricsServerError(f"cannot serve metrics on {host} --metrics-port {port}: "
                                 f"{reason}") from None
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
