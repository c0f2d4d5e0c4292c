"""Real HTTP servers for the AWS tests: moto in server mode, and a proxy in front of it.

- ``MotoServer``: ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and a free port; boto3
  talks to it over HTTP exactly as to AWS. It runs in this process, so a test can also
  move a snapshot's state the way EC2 would (moto completes snapshots at once and has no
  state-transition hook for them): ``MotoServer.snapshot(id)`` returns moto's own model
  object that the server serialises into DescribeSnapshots answers.
- ``AwsProxy``: a small real HTTP server that forwards every request to moto, except that
  it can first answer N requests of an action with AWS's throttling errors (moto cannot
  throttle), run a hook before forwarding, and record what was asked. Moto 5 does not
  implement EnableFastSnapshotRestores; ``AwsProxy.respond`` answers such an action with
  the response body a test provides (shaped like the EC2 API reference's), and the test
  checks the request that reached the wire.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"


class MotoServer:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def reset(self) -> None:
        """Clear moto's state. Retried: once in a full CI run this answered 404 (not
        reproduced alone); the final error shows what answered, to find out why."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        for attempt in range(3):
            try:
                urllib.request.urlopen(req, timeout=10).read()
                return
            except urllib.error.HTTPError as exc:
                if attempt == 2:
                    raise AssertionError(f"moto reset at {self.url} answered {exc.code}: "
                                         f"{exc.read()[:300]!r}") from exc
                time.sleep(0.5)

    def snapshot(self, snapshot_id: str) -> Any:
        from moto.backends import get_backend

        return get_backend("ec2")[ACCOUNT][REGION].snapshots[snapshot_id]

    def stop(self) -> None:
        self._server.stop()


def _ec2_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


@dataclass
class Failure:
    action: str  # "*" for any
    remaining: int
    status: int
    code: str
    body: bytes | None = None  # sent as is instead of an error in the service's shape


@dataclass
class Recorded:
    action: str
    params: dict[str, list[str]]  # query-protocol form fields (EC2); {} for JSON services
    body: bytes


@dataclass
class _State:
    upstream: str
    failures: list[Failure] = field(default_factory=list)
    responses: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    hooks: dict[str, Callable[[Recorded], None]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        params = {} if target else urllib.parse.parse_qs(body.decode())
        action = target.rsplit(".", 1)[-1] if target else params.get("Action", ["?"])[0]
        record = Recorded(action=action, params=params, body=body)
        state = self.server.state
        with state.lock:
            state.requests.append(record)
            failure = next((f for f in state.failures if f.remaining > 0
                            and f.action in ("*", action)), None)
            if failure:
                failure.remaining -= 1
                state.failed.append(action)
            canned = state.responses.get(action)
            hook = state.hooks.get(action)
        if failure:
            return self._error(failure, json_protocol=bool(target))
        if canned:
            return self._send(canned[0], {"Content-Type": "text/xml"}, canned[1])
        if hook:
            hook(record)
        self._forward(body)

    do_GET = do_POST

    def _error(self, failure: Failure, json_protocol: bool) -> None:
        if failure.body is not None:
            self._send(failure.status, {"Content-Type": "text/xml"}, failure.body)
        elif json_protocol:
            payload = json.dumps({"__type": failure.code, "message": "Rate exceeded"}).encode()
            self._send(failure.status, {"Content-Type": "application/x-amz-json-1.1"}, payload)
        else:
            self._send(failure.status, {"Content-Type": "text/xml"},
                       _ec2_error(failure.code, "Request limit exceeded."))

    def _forward(self, body: bytes) -> None:
        upstream = urllib.parse.urlsplit(self.server.state.upstream)
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = upstream.netloc
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        passthrough = {k: v for k, v in resp.getheaders()
                       if k.lower() not in ("content-length", "connection", "transfer-encoding")}
        self._send(resp.status, passthrough, data)

    def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class AwsProxy:
    def __init__(self, upstream: str) -> None:
        self._server = _ProxyServer(("127.0.0.1", 0), _Handler)
        self._server.state = _State(upstream=upstream)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def state(self) -> _State:
        return self._server.state

    def fail(self, action: str, times: int, status: int = 503,
             code: str = "RequestLimitExceeded", body: bytes | None = None) -> None:
        """Answer the next ``times`` requests of ``action`` with an error (or, given
        ``body``, with that body as is: ``status=200, body=b""`` is a lost answer)."""
        with self.state.lock:
            self.state.failures.append(Failure(action, times, status, code, body))

    def respond(self, action: str, status: int, body: bytes) -> None:
        with self.state.lock:
            self.state.responses[action] = (status, body)

    def on(self, action: str, hook: Callable[[Recorded], None]) -> None:
        with self.state.lock:
            self.state.hooks[action] = hook

    def actions(self) -> list[str]:
        with self.state.lock:
            return [r.action for r in self.state.requests]

    def requests_for(self, action: str) -> list[Recorded]:
        with self.state.lock:
            return [r for r in self.state.requests if r.action == action]

    def reset(self) -> None:
        with self.state.lock:
            self.state.failures.clear()
            self.state.responses.clear()
            self.state.hooks.clear()
            self.state.requests.clear()
            self.state.failed.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
