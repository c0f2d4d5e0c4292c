"""The HTTP side: a threaded server, and the request handler that routes ``/api/v1/...`` and
``/apis/<group>/<version>/...`` paths (namespaced or not, subresources) to a verb, records
the request, and answers in JSON or as a chunked watch stream."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .kinds import KIND_BY_PATH, Kind
from .recording import Request
from .status import ApiFailure, status_body
from .store import Event

if TYPE_CHECKING:
    from .server import KubeApiDouble


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # a thousand simulated nodes connect at once
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # a client hanging up is normal


class Handler(BaseHTTPRequestHandler):
    api: KubeApiDouble
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK hold every answer on a kept-alive connection ~40 ms
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read api.requests instead

    def setup(self) -> None:
        super().setup()
        with self.api._conn_lock:
            self.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.api._conn_lock:
            self.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            req, kind = self._parse(method)
        except ApiFailure as exc:
            self._send_json(exc.code, status_body(exc.code, exc.reason, exc.message))
            return
        self.api.requests.append(req)
        try:
            for hook in list(self.api.hooks):
                hook(req)
            code = self.api._take_failure(req)
            if code is not None:
                raise ApiFailure(code, "InternalError" if code >= 500 else "Injected",
                                 f"injected failure {code}")
            if req.verb == "watch":
                self._stream_watch(req, kind)
                return
            code, body = self.api.handle(req, kind)
        except ApiFailure as exc:
            req.status = exc.code
            self._send_json(exc.code, status_body(exc.code, exc.reason, exc.message,
                                                  exc.details))
            return
        req.status = code
        self._send_json(code, body)

    def _parse(self, method: str) -> tuple[Request, Kind]:
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segs = [s for s in parts.path.split("/") if s]
        if segs[:1] == ["api"] and len(segs) >= 2:
            group, version, rest = "", segs[1], segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 3:
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise ApiFailure(404, "NotFound", f"the server could not find {parts.path}")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiFailure(404, "NotFound", f"the server could not find {parts.path}")
        kind = KIND_BY_PATH.get((group, version, rest[0]))
        if kind is None:
            raise ApiFailure(404, "NotFound", "the server could not find the requested "
                             f"resource ({group}/{version} {rest[0]})")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (sub == "status" and kind.status_subresource):
            raise ApiFailure(404, "NotFound", f"no subresource {sub!r} on {kind.plural}")
        verb = _verb(method, bool(name), params.get("watch") in ("true", "1"))
        body = self._read_body()
        return Request(verb, group, kind.plural, sub, namespace, name, method, parts.path,
                       params, self.headers.get("Content-Type", ""), body,
                       self.headers.get("User-Agent", "")), kind

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiFailure(400, "BadRequest", "request body is not valid JSON") from None

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        with contextlib.suppress(OSError):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _stream_watch(self, req: Request, kind: Kind) -> None:
        events = self.api.watch_events(req, kind)
        first = next(events, None)
        if self.api.watch_gone_as_http and isinstance(first, dict) and first["type"] == "ERROR":
            obj = first["object"]
            req.status = obj["code"]
            self._send_json(obj["code"], obj)
            return
        req.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            lines: list[bytes] = [_encode(first)] if first is not None else []
            for event in events:
                if event is not None:
                    lines.append(_encode(event))
                    if len(lines) < 64:
                        continue  # events that came together go out in one chunk
                if lines:
                    self._chunk(b"".join(lines))
                    lines = []
            if lines:
                self._chunk(b"".join(lines))
            self._chunk(b"")  # clean end of stream (timeoutSeconds reached)
        except (ConnectionAbortedError, OSError):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        finally:
            events.close()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _encode(event: dict | Event) -> bytes:
    return event.line() if isinstance(event, Event) else json.dumps(event).encode() + b"\n"


def _verb(method: str, named: bool, watch: bool) -> str:
    if method == "GET":
        if watch:
            return "watch"
        return "get" if named else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
