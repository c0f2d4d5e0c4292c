"""resolve_manifest against real registries (Debian's docker-registry, distribution 2.8)
that want credentials: htpasswd basic auth, and token auth (the registry verifies real
signed JWTs issued by a small token service started here); secrets never in errors."""

import base64
import http.server
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from support.resolve_helpers import expected

from nodeagent.containerd.client import AuthConfig
from nodeagent.registry.resolve import RegistryError, resolve_manifest
from nodeagent.sandbox.local_registry import free_port
from nodeagent.sandbox.push import push_images

pytestmark = pytest.mark.containerd


# ----------------------------------------------------------------------------- basic auth


async def test_basic_auth(auth_sample_images, auth_credentials):
    pushed = auth_sample_images["model-server"]
    user, password = auth_credentials.username, auth_credentials.password
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(pushed.ref, None)
    assert info.value.status == 401 and info.value.reason == "auth"
    assert "requires credentials and none were found" in str(info.value)

    good = AuthConfig(username=user, password=password)
    assert (await resolve_manifest(pushed.ref, good)) == expected(pushed.image)
    # CRI's "auth" form (base64 user:password) works too.
    encoded = AuthConfig(auth=base64.b64encode(f"{user}:{password}".encode()).decode())
    assert (await resolve_manifest(pushed.ref, encoded)).manifest_digest == pushed.digest

    bad = AuthConfig(username=user, password=password + "-wrong")
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(pushed.ref, bad)
    assert info.value.status == 401 and "credentials were rejected" in str(info.value)
    assert password not in str(info.value) and user + ":" not in str(info.value)


async def test_server_address_limits_where_credentials_go(auth_sample_images, auth_credentials):
    pushed = auth_sample_images["model-server"]
    other = AuthConfig(username=auth_credentials.username, password=auth_credentials.password,
                       server_address="https://other.example.com")
    with pytest.raises(RegistryError, match="none were found"):
        await resolve_manifest(pushed.ref, other)
    same = AuthConfig(username=auth_credentials.username, password=auth_credentials.password,
                      server_address=pushed.host)
    assert (await resolve_manifest(pushed.ref, same)).manifest_digest == pushed.digest


# ----------------------------------------------------------------------------- token auth

TOKEN_USER, TOKEN_PASSWORD, REFRESH_TOKEN = "robot", "t0ken-Pa55", "refresh-abc123"
ISSUER, SERVICE = "nodeagent-test-issuer", "nodeagent-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Docker token auth service: checks basic credentials (or an OAuth2 refresh token)
    and issues RS256 JWTs with an x5c chain the registry verifies against its bundle."""

    def __init__(self, workdir):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nodeagent test token")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1))
                .not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.bundle = workdir / "token-ca.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[dict] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def realm(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def jwt(self, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for item in scope.split():
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": TOKEN_USER, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": str(now) + scope, "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def _handler(self):
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, scope, ok):
                if not ok:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": service.jwt(scope), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                expected = "Basic " + base64.b64encode(
                    f"{TOKEN_USER}:{TOKEN_PASSWORD}".encode()).decode()
                ok = self.headers.get("Authorization") == expected
                service.requests.append({"method": "GET", **query, "ok": ok})
                self._answer(query.get("scope", ""), ok)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                ok = (form.get("grant_type") == "refresh_token"
                      and form.get("refresh_token") == REFRESH_TOKEN)
                service.requests.append({"method": "POST", "scope": form.get("scope"),
                                         "service": form.get("service"), "ok": ok})
                self._answer(form.get("scope", ""), ok)

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_registry(tmp_path, image_cache):
    """docker-registry with `auth: token`, plus its token service, and one pushed image."""
    from nodeagent.sandbox.images import build_image
    from nodeagent.sandbox.layers import LayerSpec

    with TokenService(tmp_path) as tokens:
        port = free_port()
        config = tmp_path / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n"
            f"auth:\n  token:\n    realm: {tokens.realm}\n    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n    rootcertbundle: {tokens.bundle}\n")
        log = (tmp_path / "registry.log").open("wb")
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            _wait_for(port)
            host = f"127.0.0.1:{port}"
            image = build_image("secure/app:1.0", [LayerSpec("token-test/base", 64 << 10)],
                                cache_dir=image_cache)
            push_images(host, [image], TOKEN_USER, TOKEN_PASSWORD)
            tokens.requests.clear()
            yield host, image, tokens
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def _wait_for(port):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # 401: up, auth on
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("token registry did not start")


async def test_bearer_token_auth(token_registry):
    host, image, tokens = token_registry
    ref = f"{host}/secure/app:1.0"
    resolved = await resolve_manifest(
        ref, AuthConfig(username=TOKEN_USER, password=TOKEN_PASSWORD))
    assert resolved == expected(image)
    assert tokens.requests == [{"method": "GET", "scope": "repository:secure/app:pull",
                                "service": SERVICE, "ok": True}]


async def test_bearer_with_identity_token(token_registry):
    host, image, tokens = token_registry
    resolved = await resolve_manifest(f"{host}/secure/app:1.0",
                                      AuthConfig(identity_token=REFRESH_TOKEN))
    assert resolved.manifest_digest == image.manifest_digest
    assert tokens.requests[0]["method"] == "POST" and tokens.requests[0]["ok"]


async def test_bearer_with_registry_token(token_registry):
    host, image, tokens = token_registry
    token = tokens.jwt("repository:secure/app:pull")
    resolved = await resolve_manifest(f"{host}/secure/app:1.0", AuthConfig(registry_token=token))
    assert resolved.manifest_digest == image.manifest_digest
    assert tokens.requests == []  # used as is, no token service round trip


async def test_bearer_bad_and_missing_credentials(token_registry):
    host, _, tokens = token_registry
    ref = f"{host}/secure/app:1.0"
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(ref, AuthConfig(username=TOKEN_USER, password="nope-wrong"))
    assert [r["ok"] for r in tokens.requests] == [False]
    assert info.value.status == 401 and info.value.reason == "auth"
    assert "token request to 127.0.0.1" in str(info.value)
    assert "nope-wrong" not in str(info.value)
    # Anonymous: the token service refuses, so does the resolve.
    with pytest.raises(RegistryError, match="HTTP 401"):
        await resolve_manifest(ref, None)
