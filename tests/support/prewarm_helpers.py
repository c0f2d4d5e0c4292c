"""Helpers shared by the prewarm engine and CLI tests (not fixtures: plain functions)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable

from nodeagent.prewarm.desired import DesiredImage
from nodeagent.registry.reference import parse_reference


def desired(*refs: str, pin: bool = True, priority: int = 0, required: bool = True,
            sets: Iterable[str] = ("test",)) -> list[DesiredImage]:
    return [DesiredImage(parse_reference(r), None, pin, priority, required, (), tuple(sets))
            for r in refs]


def hotlist_yaml(name: str, refs: Iterable[str], *, pin: bool = True, priority: int = 0,
                 selector: str | None = None) -> str:
    images = "\n".join(f"    - image: {r}\n      required: true" for r in refs)
    sel = f"  nodeSelector:\n    matchLabels: {{{selector}}}\n" if selector else ""
    return (f"apiVersion: nodeagent.io/v1alpha1\nkind: HotImageSet\nmetadata:\n  name: {name}\n"
            f"spec:\n  pin: {str(pin).lower()}\n  priority: {priority}\n{sel}"
            f"  images:\n{images}\n")


class PausableProxy:
    """A TCP proxy 127.0.0.1:<port> -> target that can throttle and pause the bytes it
    sends back (connections stay open while paused, like a registry that hangs mid-blob).

    ``pause_after(n)`` pauses once n response bytes went through; ``resume()`` lets them
    flow again; ``rate_bps`` throttles responses.
    """

    def __init__(self, target: str, rate_bps: float | None = None):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.rate_bps = rate_bps
        self.sent = 0
        self._pause_at: int | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def pause_after(self, nbytes: int) -> None:
        self._pause_at = self.sent + nbytes

    def resume(self) -> None:
        self._pause_at = None
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if response:
                    self._gate(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _gate(self, n: int) -> None:
        self._flowing.wait()
        with self._lock:
            self.sent += n
            if self._pause_at is not None and self.sent >= self._pause_at:
                self._flowing.clear()
        if self.rate_bps:
            time.sleep(n / self.rate_bps)
