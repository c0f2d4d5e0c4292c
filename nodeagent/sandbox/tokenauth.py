"""A Docker/OCI token service for the sandbox registry (bearer auth, like ECR/Docker Hub).

The registry (distribution 2.8, `auth: token`) answers 401 with
`WWW-Authenticate: Bearer realm=...,service=...,scope=...`; clients fetch a JWT from this
service (GET with basic auth, or POST `grant_type=password` as containerd does first) and
retry with `Authorization: Bearer <jwt>`. Tokens are RS256-signed with a throwaway key
whose self-signed certificate goes in the JWT `x5c` header and the registry's
`rootcertbundle`. Needs the `cryptography` package (a dev dependency).
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from nodeagent.sandbox.process import SandboxError

SERVICE = "nodeagent-sandbox-registry"
ISSUER = "nodeagent-sandbox-token-service"
TOKEN_TTL_S = 300
_ACTIONS = ("pull", "push")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Signer:
    """RSA key + self-signed cert; signs JWTs."""

    def __init__(self) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import rsa
            from cryptography.x509.oid import NameOID
        except ImportError as exc:
            raise SandboxError(
                "token auth needs the 'cryptography' package (pip install cryptography)"
            ) from exc
        self._hashes = hashes
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._x5c = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()

    def jwt(self, claims: dict[str, object]) -> str:
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(),
                                  self._hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


def parse_scopes(values: list[str]) -> list[dict[str, object]]:
    """`repository:name:pull,push` (several per value, space separated) -> access claims."""
    access = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue  # e.g. registry:catalog:* is not granted
            wanted = ["pull", "push"] if actions == "*" else actions.split(",")
            granted = [a for a in wanted if a in _ACTIONS]
            access.append({"type": kind, "name": name, "actions": granted})
    return access


class TokenServer:
    """Token endpoint on 127.0.0.1; `realm` is its URL. `requests` counts issued tokens."""

    def __init__(self, users: dict[str, str], workdir: Path) -> None:
        self.users = dict(users)
        self.workdir = Path(workdir)
        self.cert_file = self.workdir / "token-cert.pem"
        self.port: int | None = None
        self.issued = 0
        self.refused = 0
        self._signer: _Signer | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        if self._server is not None:
            return
        if self._signer is None:
            self._signer = _Signer()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.cert_file.write_bytes(self._signer.cert_pem)
        handler = type("Handler", (_Handler,), {"service": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="sandbox-token-server")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def check(self, username: str | None, password: str | None) -> bool:
        if username is None or username not in self.users:
            return False
        return hmac.compare_digest(self.users[username].encode(), (password or "").encode())

    def issue(self, username: str, service: str, scopes: list[str]) -> dict[str, object]:
        assert self._signer is not None
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": username, "aud": service or SERVICE,
            "exp": now + TOKEN_TTL_S, "nbf": now - 10, "iat": now,
            "jti": secrets.token_hex(8), "access": parse_scopes(scopes),
        }
        token = self._signer.jwt(claims)
        self.issued += 1
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "access_token": token, "expires_in": TOKEN_TTL_S,
                "issued_at": issued_at}


class _Handler(BaseHTTPRequestHandler):
    service: TokenServer

    def log_message(self, format: str, *args: object) -> None:  # quiet; no creds in logs
        return

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        username, password = self._basic_auth()
        self._answer(username, password, query.get("service", [""])[0], query.get("scope", []))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if form.get("grant_type", [""])[0] != "password":
            self._send(400, {"error": "unsupported_grant_type"})
            return
        self._answer(form.get("username", [None])[0], form.get("password", [None])[0],
                     form.get("service", [""])[0], form.get("scope", []))

    def _basic_auth(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None, None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None, None
        return user, password

    def _answer(self, username: str | None, password: str | None, service: str,
                scopes: list[str]) -> None:
        if not self.service.check(username, password):
            self.service.refused += 1
            self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            return
        assert username is not None
        self._send(200, self.service.issue(username, service, scopes))

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", f'Basic realm="{ISSUER}"')
        self.end_headers()
        self.wfile.write(data)
