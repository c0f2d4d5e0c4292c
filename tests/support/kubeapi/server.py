"""The double itself, ``KubeApiDouble``: its lifecycle (start on 127.0.0.1, port 0; stop and
come back on the same port; connections cut mid-stream), a kubeconfig pointing at it, and
``compact()``. The verbs, watches and request log come from the modules named below."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import ThreadingHTTPServer

from .handler import Handler, Server
from .recording import RequestLog
from .resources import ObjectApi
from .store import Store
from .watch import WatchApi


class KubeApiDouble(ObjectApi, WatchApi, RequestLog):
    """The test double's control surface; see the package docstring.

    Objects and verbs: ``resources.ObjectApi``; watches: ``watch.WatchApi``; ``requests``,
    ``hooks``, ``fail()``, ``calls()``, ``counts()``: ``recording.RequestLog``.
    """

    def __init__(self, crd_schema: dict | None = None,
                 crd_schemas: dict[str, dict] | None = None) -> None:
        self.store = Store()
        ObjectApi.__init__(self, crd_schema, crd_schemas)
        RequestLog.__init__(self)
        WatchApi.__init__(self)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KubeApiDouble:
        handler = type("Handler", (Handler,), {"api": self})
        self._server = Server(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The API server goes away: stop listening and cut every open connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        self.drop_connections()

    def drop_connections(self) -> None:
        """Cut every open connection without a clean end (like a crashed server/LB)."""
        self.end_watches()
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> KubeApiDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self) -> dict:
        """A kubeconfig document pointing at the double (plain HTTP, no auth)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double"}}],
            "current-context": "double",
        }

    def compact(self) -> None:
        """Drop the history: watches and lists from older resourceVersions get 410 Gone."""
        self.store.compact()
