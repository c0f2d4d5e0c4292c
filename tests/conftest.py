"""Shared fixtures: a real registry, a real private containerd, real pushed images.

Scopes (documented in the team contract):
- `registry`, `auth_registry` (htpasswd basic auth), `bearer_registry` (token auth with
  an in-process JWT token service, like ECR/Docker Hub): session; the auth ones accept
  `auth_credentials`. Tests that stop/start a registry ("registry down") must use
  `fresh_registry` (function scope) so they don't break other tests.
- `containerd`: function. A fresh private containerd starts in ~0.1 s, so each test gets
  its own empty content store; `containerd.restart()` / `.kill()` + `.start()` keep root.
- `sample_images`: session. The small demo set (4 images incl. a multi-arch index) pushed
  to `registry`; `auth_sample_images` pushes the same set to `auth_registry`.
- `image_pusher`: function. Builds and pushes extra images with unique layers.
- `image_cache`: session. Layer cache dir under pytest's tmp dir.

Everything lives under pytest's tmp dirs; every daemon is stopped at teardown. Tests that
need a missing binary (containerd, docker-registry, htpasswd) are skipped with its name.
Tests that use any of these fixtures are marked `containerd` automatically.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent import redaction
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.images import (
    BuiltImage,
    BuiltIndex,
    build_image,
    build_index,
    sample_image_set,
)
from nodeagent.sandbox.layers import LayerSpec
from nodeagent.sandbox.local_registry import LocalRegistry
from nodeagent.sandbox.push import push_images

AUTH_USER = "tester"
AUTH_PASSWORD = "s3cret-Pa55word"  # test-only; also used to check it never leaks into logs

_BINARIES = {
    "containerd": "containerd",
    "ctr": "containerd",
    "docker-registry": "docker-registry",
    "htpasswd": "apache2-utils",
}
_SANDBOX_FIXTURES = {
    "registry", "auth_registry", "bearer_registry", "fresh_registry", "containerd", "sample_images",
    "auth_sample_images", "image_pusher",
}


def require(*binaries: str) -> None:
    """Skip the test (with the binary and package named) if a binary is missing."""
    for name in binaries:
        if shutil.which(name) is None:
            pytest.skip(f"{name!r} not installed (Debian package {_BINARIES.get(name, name)!r};"
                        " ./.ci/setup installs it)")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("private containerd needs root (overlayfs mounts while unpacking)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SANDBOX_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.containerd)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


@dataclass(frozen=True)
class PushedImage:
    """An image in a registry: `ref` is host/repo:tag, `digest_ref` host/repo@sha256:..."""

    image: BuiltImage | BuiltIndex
    host: str

    @property
    def ref(self) -> str:
        return self.image.ref(self.host)

    @property
    def digest(self) -> str:
        return self.image.manifest_digest

    @property
    def digest_ref(self) -> str:
        return self.image.digest_ref(self.host)

    @property
    def total_size(self) -> int:
        return self.image.total_size


class SampleImages(list[PushedImage]):
    """The pushed demo set; index by position or by short name, e.g. ["model-server"]."""

    def by_name(self, short: str) -> PushedImage:
        for pushed in self:
            if pushed.image.repository.rsplit("/", 1)[-1] == short:
                return pushed
        raise KeyError(f"no sample image named {short!r}")

    def __getitem__(self, key):  # type: ignore[no-untyped-def, override]
        return self.by_name(key) if isinstance(key, str) else super().__getitem__(key)


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("layer-cache")


@pytest.fixture(scope="session")
def auth_credentials() -> Credentials:
    return Credentials(AUTH_USER, AUTH_PASSWORD)


def _registry(
    workdir: Path, users: dict[str, str] | None = None, auth: str = "basic"
) -> Iterator[LocalRegistry]:
    require("docker-registry", *(["htpasswd"] if users and auth == "basic" else []))
    reg = LocalRegistry(workdir, users=users, auth=auth)
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """Open (no auth) registry, shared by the session. Do not stop it in a test."""
    yield from _registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def auth_registry(
    tmp_path_factory: pytest.TempPathFactory, auth_credentials: Credentials
) -> Iterator[LocalRegistry]:
    """Registry requiring basic auth for `auth_credentials` (htpasswd, bcrypt)."""
    users = {auth_credentials.username: auth_credentials.password}
    yield from _registry(tmp_path_factory.mktemp("auth-registry"), users)


@pytest.fixture(scope="session")
def bearer_registry(
    tmp_path_factory: pytest.TempPathFactory, auth_credentials: Credentials
) -> Iterator[LocalRegistry]:
    """Registry with bearer-token auth; `.token_server` counts issued/refused tokens."""
    users = {auth_credentials.username: auth_credentials.password}
    yield from _registry(tmp_path_factory.mktemp("bearer-registry"), users, auth="token")


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry of the test's own, free to stop()/start() (simulating an outage)."""
    yield from _registry(tmp_path / "registry")


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[PrivateContainerd]:
    """Fresh private containerd (own root, socket, hosts.toml dir); stopped at teardown."""
    require("containerd", "ctr")
    require_root()
    daemon = PrivateContainerd(tmp_path / "ctrd")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def _push_set(host: str, image_cache: Path, creds: Credentials | None = None) -> SampleImages:
    images = sample_image_set("demo", cache_dir=image_cache)
    user, password = (creds.username, creds.password) if creds else (None, None)
    push_images(host, images, user, password)
    return SampleImages(PushedImage(image, host) for image in images)


@pytest.fixture(scope="session")
def sample_images(registry: LocalRegistry, image_cache: Path) -> SampleImages:
    """Demo set in `registry`: python:3.11, model-server:1.0, trainer:2.0 (share a base
    layer) and tools:1.0 (multi-arch index, linux/amd64 + linux/arm64)."""
    return _push_set(registry.host, image_cache)


@pytest.fixture(scope="session")
def auth_sample_images(
    auth_registry: LocalRegistry, image_cache: Path, auth_credentials: Credentials
) -> SampleImages:
    return _push_set(auth_registry.host, image_cache, auth_credentials)


ImagePusher = Callable[..., PushedImage]


@pytest.fixture
def image_pusher(registry: LocalRegistry, image_cache: Path) -> ImagePusher:
    """push(name, sizes=[...], *, registry=None, credentials=None, platforms=None,
    shared=(), media="oci") -> PushedImage.

    Layers get keys unique to this call (so content is new to the registry) unless given
    as LayerSpec in `shared` (prepended: e.g. a base layer shared with another image).
    `platforms` (e.g. ["linux/amd64", "linux/arm64"]) builds a multi-arch index.
    """

    default_registry = registry

    def push(
        name: str, sizes: Sequence[int] = (256 << 10,), *, registry: LocalRegistry | None = None,
        credentials: Credentials | None = None, platforms: Sequence[str] | None = None,
        shared: Sequence[LayerSpec] = (), media: str = "oci",
    ) -> PushedImage:
        target = registry or default_registry
        unique = uuid.uuid4().hex[:12]

        def specs(platform: str) -> list[LayerSpec]:
            own = [LayerSpec(f"extra/{name}/{platform}/{unique}/{i}", s)
                   for i, s in enumerate(sizes)]
            return [*shared, *own]

        image: BuiltImage | BuiltIndex
        if platforms:
            image = build_index(name, {p: specs(p) for p in platforms}, media=media,
                                cache_dir=image_cache)
        else:
            image = build_image(name, specs("linux/amd64"), media=media, cache_dir=image_cache)
        user, password = (credentials.username, credentials.password) if credentials else (
            None, None)
        push_images(target.host, [image], user, password)
        return PushedImage(image, target.host)

    return push


@pytest.fixture(autouse=True)
def _forget_known_secrets() -> Iterator[None]:
    """Secrets one test made known (nodeagent.redaction) must not mask the next one's text."""
    yield
    redaction.forget_all()


@pytest.fixture(autouse=True)
def _disk_guard_off_for_the_host_disk(monkeypatch):
    """The test machine's own disk is not a kubelet image filesystem and may be more than
    80% used: tests turn the disk-space guard off (NODEAGENT_HIGH_WATER=100) unless they
    set a high-water mark themselves (the guard's tests use a small loop-mounted fs)."""
    monkeypatch.setenv("NODEAGENT_HIGH_WATER", "100")
