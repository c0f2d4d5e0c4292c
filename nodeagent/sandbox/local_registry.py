"""A throwaway OCI registry: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1.

Used by `nodeagent demo`, the tests and the benchmarks. containerd treats 127.0.0.1:PORT
as plain HTTP, so no TLS or hosts.toml is needed to pull from it. With `users`, the
registry requires credentials: `auth="basic"` checks HTTP basic auth against a bcrypt
htpasswd file; `auth="token"` makes it a bearer-token registry (like ECR or Docker Hub)
backed by an in-process token service (nodeagent.sandbox.tokenauth). With
`proxy_remote`, it is a pull-through cache of that registry (distribution's proxy mode,
what a registry mirror in hosts.toml often is): it fetches what it lacks from there and
serves it from its own storage afterwards; a cache is read-only (pushes are refused).
`access_log()` lists the requests it answered (method, path, status), e.g. to count
what reached an upstream registry.
"""

from __future__ import annotations

import http.client
import re
import secrets
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from nodeagent.sandbox.process import Daemon, SandboxError, require_binary
from nodeagent.sandbox.tokenauth import ISSUER as TOKEN_ISSUER
from nodeagent.sandbox.tokenauth import SERVICE as TOKEN_SERVICE
from nodeagent.sandbox.tokenauth import TokenServer

REALM = "nodeagent-sandbox"
START_TIMEOUT_S = 20.0
# the access log's combined format: host - user [time] "METHOD path proto" status bytes ...
_ACCESS_LINE = re.compile(r'^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) ')


@dataclass(frozen=True)
class Access:
    """One request the registry answered, from its access log."""

    method: str
    path: str  # without the query string
    status: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def htpasswd_line(user: str, password: str) -> str:
    """bcrypt htpasswd entry; the password goes over stdin, never on a command line."""
    if ":" in user or not user:
        raise SandboxError(f"invalid registry user name {user!r}: must be non-empty, no ':'")
    exe = require_binary("htpasswd", "apache2-utils")
    out = subprocess.run(
        [exe, "-niB", user], input=password.encode(), capture_output=True, check=False
    )
    if out.returncode != 0:
        raise SandboxError(f"htpasswd failed for user {user!r}: {out.stderr.decode().strip()}")
    return out.stdout.decode().strip()


class LocalRegistry:
    """`docker-registry serve` with storage, config and log under `workdir`."""

    def __init__(
        self, workdir: Path, users: dict[str, str] | None = None, *, auth: str = "basic",
        detach: bool = False, proxy_remote: str | None = None,
    ) -> None:
        """`detach`: keep running if this process dies (else it gets SIGTERM).
        `proxy_remote`: the URL of the registry to cache (pull-through cache mode)."""
        if auth not in ("basic", "token"):
            raise SandboxError(f"unknown registry auth {auth!r}: use 'basic' or 'token'")
        if proxy_remote is not None:
            parts = urllib.parse.urlsplit(proxy_remote)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SandboxError(f"pull-through cache: {proxy_remote!r} is not an http(s) "
                                   "URL of a registry")
        self.proxy_remote = proxy_remote
        self.workdir = Path(workdir)
        self.users = dict(users or {})
        self.auth = auth if self.users else ""
        self.token_server: TokenServer | None = None
        self.detach = detach
        self.port: int | None = None
        self.storage = self.workdir / "storage"
        self.config_file = self.workdir / "config.yml"
        self.log_file = self.workdir / "registry.log"
        self.start_time_s: float | None = None
        self._daemon: Daemon | None = None
        # One secret for the instance's lifetime: upload sessions survive a restart.
        self._http_secret = secrets.token_hex(16)

    @property
    def host(self) -> str:
        if self.port is None:
            raise SandboxError("registry not started yet: no host/port")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self._daemon.pid if self._daemon else None

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.running

    def start(self) -> None:
        """Start (or start again on the same port after stop())."""
        if self.running:
            return
        exe = require_binary("docker-registry", "docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        if self.auth == "basic":
            self._write_htpasswd()
        elif self.auth == "token":
            if self.token_server is None:
                self.token_server = TokenServer(self.users, self.workdir)
            self.token_server.start()
        fixed_port = self.port is not None
        last_error: SandboxError | None = None
        for _attempt in range(5):
            if not fixed_port:
                self.port = free_port()
            try:
                self._start_once(exe)
                return
            except SandboxError as exc:
                last_error = exc
                if "address already in use" not in str(exc):
                    raise
                time.sleep(0.2)  # someone took the port: pick another (or wait for ours)
        assert last_error is not None
        raise last_error

    def _start_once(self, exe: str) -> None:
        self.config_file.write_text(self._config_yaml())
        self._daemon = Daemon("docker-registry", [exe, "serve", str(self.config_file)],
                              self.log_file, detach=self.detach)
        self._daemon.spawn()
        self.start_time_s = self._daemon.wait_ready(
            self._answers, START_TIMEOUT_S, f"GET {self.url}/v2/"
        )

    def _write_htpasswd(self) -> None:
        lines = [htpasswd_line(u, p) for u, p in sorted(self.users.items())]
        path = self.workdir / "htpasswd"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def _config_yaml(self) -> str:
        auth = ""
        if self.auth == "basic":
            auth = (
                "auth:\n  htpasswd:\n"
                f"    realm: {REALM}\n    path: {self.workdir / 'htpasswd'}\n"
            )
        elif self.auth == "token" and self.token_server is not None:
            auth = (
                "auth:\n  token:\n"
                f"    realm: {self.token_server.realm}\n    service: {TOKEN_SERVICE}\n"
                f"    issuer: {TOKEN_ISSUER}\n"
                f"    rootcertbundle: {self.token_server.cert_file}\n"
            )
        return (
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: {self._http_secret}\n"
            + auth
            + (f"proxy:\n  remoteurl: {self.proxy_remote}\n" if self.proxy_remote else "")
        )

    def access_log(self) -> list[Access]:
        """The requests answered so far, oldest first (empty before any)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            match = _ACCESS_LINE.match(line)
            if match:
                method, target, status = match.groups()
                entries.append(Access(method, target.split("?", 1)[0], int(status)))
        return entries

    def _answers(self) -> bool:
        """True once /v2/ gives any HTTP answer (401 counts: auth is on)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status in (200, 401)
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """Terminate; storage stays, so start() again serves the same content."""
        if self._daemon is not None:
            self._daemon.terminate()
            self._daemon = None
        if self.token_server is not None:
            self.token_server.stop()

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:  # never shows passwords
        port = self.port if self.port is not None else "-"
        proxy = f", proxy of {self.proxy_remote}" if self.proxy_remote else ""
        return f"LocalRegistry(127.0.0.1:{port}, auth={self.auth or 'none'!r}, " \
            f"users={sorted(self.users)}{proxy})"
