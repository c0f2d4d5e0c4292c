"""resolve_manifest against real registries (Debian's docker-registry, distribution 2.8):
open, htpasswd basic auth, and token auth (the registry verifies real signed JWTs issued
by a small token service started here), plus containerd-style hosts.toml mirrors."""

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

from nodeagent.containerd.client import AuthConfig
from nodeagent.errors import NodeagentError
from nodeagent.registry.reference import parse_reference
from nodeagent.registry.resolve import (
    RegistryError,
    ResolvedImage,
    host_default_platform,
    parse_challenge,
    registry_endpoints,
    resolve_manifest,
)
from nodeagent.sandbox.local_registry import free_port
from nodeagent.sandbox.push import push_images

pytestmark = pytest.mark.containerd


def expected(image):
    return ResolvedImage(
        manifest_digest=image.manifest_digest, config_digest=image.config_digest,
        layers=[(layer.digest, layer.size) for layer in image.layers],
        total_size=image.total_size, media_type=image.media_type,
        config_size=len(image.config))


async def test_resolves_single_platform_images(sample_images):
    for pushed in sample_images:
        if hasattr(pushed.image, "images"):
            continue  # the index, below
        resolved = await resolve_manifest(pushed.ref, None)
        assert resolved == expected(pushed.image)
        assert resolved.total_size == pushed.total_size
        # By digest: same answer, and the reference type is accepted too.
        assert await resolve_manifest(parse_reference(pushed.digest_ref), None) == resolved


async def test_picks_platform_from_index(sample_images):
    tools = sample_images["tools"]
    arm = await resolve_manifest(tools.ref, None, "linux/arm64")
    amd = await resolve_manifest(tools.ref, None, "linux/x86_64")
    for resolved, platform in ((arm, "linux/arm64"), (amd, "linux/amd64")):
        image = tools.image.for_platform(platform)
        assert resolved.manifest_digest == image.manifest_digest
        assert resolved.layers == [(layer.digest, layer.size) for layer in image.layers]
        assert resolved.index_digest == tools.digest
        assert resolved.platform == platform
    assert arm.manifest_digest != amd.manifest_digest
    default = await resolve_manifest(tools.digest_ref, None)
    assert default.platform == host_default_platform()


async def test_platform_missing_from_index(sample_images):
    tools = sample_images["tools"]
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(tools.ref, None, "linux/s390x")
    assert f'image "{tools.ref}"' in str(info.value)
    assert "has no linux/s390x manifest (available: linux/amd64, linux/arm64)" in str(info.value)
    assert info.value.reason == "not_found"


async def test_docker_media_types(image_pusher):
    single = image_pusher("dockerfmt", media="docker")
    resolved = await resolve_manifest(single.ref, None)
    assert resolved == expected(single.image)
    assert resolved.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    multi = image_pusher("dockerlist", media="docker", platforms=["linux/amd64", "linux/arm/v7"])
    resolved = await resolve_manifest(multi.ref, None, "linux/arm")
    assert resolved.manifest_digest == multi.image.for_platform("linux/arm/v7").manifest_digest


async def test_not_found_names_image_and_status(registry, sample_images):
    ref = f"{registry.host}/demo/missing:1.0"
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(ref, None)
    assert isinstance(info.value, NodeagentError)
    assert info.value.status == 404 and info.value.reason == "not_found"
    assert str(info.value).startswith(f'image "{ref}": {registry.host} answered HTTP 404')
    assert "MANIFEST_UNKNOWN" in str(info.value) or "NAME_UNKNOWN" in str(info.value)
    tag = sample_images["python"].ref.rsplit(":", 1)[0] + ":no-such-tag"
    with pytest.raises(RegistryError, match="HTTP 404"):
        await resolve_manifest(tag, None)


async def test_unreachable_registry():
    port = free_port()
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(f"127.0.0.1:{port}/a/b:1", None)
    assert info.value.reason == "registry_unreachable"
    assert f"cannot reach 127.0.0.1:{port}" in str(info.value)


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


# ----------------------------------------------------------------------------- hosts.toml


def _access_log(registry):
    return registry.log_file.read_text(errors="replace")


async def test_hosts_toml_server_and_mirrors(tmp_path, registry, sample_images):
    pushed = sample_images["trainer"]
    repo_tag = pushed.ref.split("/", 1)[1]
    dead = free_port()
    (tmp_path / "registry.example.com").mkdir()
    (tmp_path / "registry.example.com" / "hosts.toml").write_text(
        'server = "https://registry.example.com"\n\n'
        f'[host."http://127.0.0.1:{dead}"]\n  capabilities = ["pull", "resolve"]\n\n'
        f'[host."http://{registry.host}"]\n  capabilities = ["pull", "resolve"]\n')
    endpoints = registry_endpoints("registry.example.com", tmp_path)
    assert [e.base for e in endpoints] == [
        f"http://127.0.0.1:{dead}/v2", f"http://{registry.host}/v2",
        "https://registry.example.com/v2"]
    resolved = await resolve_manifest(f"registry.example.com/{repo_tag}", None,
                                      hosts_dir=tmp_path)
    assert resolved == expected(pushed.image)
    # Mirror requests carry ?ns=<registry>, as containerd's do.
    assert "ns=registry.example.com" in _access_log(registry)


async def test_hosts_toml_server_only_and_default(tmp_path, registry, sample_images):
    pushed = sample_images["python"]
    repo_tag = pushed.ref.split("/", 1)[1]
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    resolved = await resolve_manifest(f"anything.example.org/{repo_tag}", None,
                                      hosts_dir=tmp_path)
    assert resolved.manifest_digest == pushed.digest


async def test_hosts_toml_errors_and_capabilities(tmp_path, registry, sample_images):
    pushed = sample_images["python"]
    repo_tag = pushed.ref.split("/", 1)[1]
    (tmp_path / "pull.only").mkdir()
    (tmp_path / "pull.only" / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\ncapabilities = ["pull"]\n')
    with pytest.raises(RegistryError, match=r'no host in hosts\.toml has the "resolve"'):
        await resolve_manifest(f"pull.only/{repo_tag}", None, hosts_dir=tmp_path)
    # By digest only "pull" is needed.
    digest_ref = f"pull.only/{pushed.digest_ref.split('/', 1)[1]}"
    assert (await resolve_manifest(digest_ref, None, hosts_dir=tmp_path)).manifest_digest == (
        pushed.digest)
    (tmp_path / "broken.io").mkdir()
    (tmp_path / "broken.io" / "hosts.toml").write_text("server = \n")
    with pytest.raises(RegistryError, match=r"cannot read .*broken.io/hosts.toml"):
        await resolve_manifest("broken.io/a:1", None, hosts_dir=tmp_path)


async def test_all_mirrors_failing_reports_each(tmp_path, registry):
    dead = free_port()
    (tmp_path / "m.example.com").mkdir()
    (tmp_path / "m.example.com" / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\n[host."http://127.0.0.1:{dead}"]\n')
    with pytest.raises(RegistryError) as info:
        await resolve_manifest("m.example.com/demo/nothing-here:1", None, hosts_dir=tmp_path)
    text = str(info.value)
    assert f"{registry.host} answered HTTP 404" in text
    assert f"also tried: cannot reach 127.0.0.1:{dead}" in text


def test_default_endpoints():
    assert [e.base for e in registry_endpoints("docker.io", None)] == [
        "https://registry-1.docker.io/v2"]
    assert [e.base for e in registry_endpoints("localhost:5000", None)] == [
        "http://localhost:5000/v2"]
    assert [e.base for e in registry_endpoints("ghcr.io", None)] == ["https://ghcr.io/v2"]


def test_parse_challenge():
    assert parse_challenge('Bearer realm="https://auth.docker.io/token",'
                           'service="registry.docker.io",scope="repository:library/nginx:pull"'
                           ) == ("bearer", {"realm": "https://auth.docker.io/token",
                                            "service": "registry.docker.io",
                                            "scope": "repository:library/nginx:pull"})
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


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
