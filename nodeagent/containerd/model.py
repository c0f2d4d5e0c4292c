"""What the containerd client returns and raises, plus its pure decisions.

Standard library only (no grpc), so CLI command modules can import the error types,
dataclasses and ``add_address_argument`` without paying for grpcio at start-up.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime

from nodeagent.errors import NodeagentError

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
ADDRESS_ENV = "NODEAGENT_CONTAINERD_ADDRESS"
DEFAULT_NAMESPACE = "k8s.io"
IMAGE_TOPICS = ("/images/create", "/images/update", "/images/delete")
PULL_REASONS = frozenset(
    {"auth", "not_found", "registry_unreachable", "no_space", "cancelled", "other"}
)
_MASK = "***"


class ContainerdError(NodeagentError):
    """containerd refused or failed a request; the message says which and why."""


class ContainerdUnavailable(ContainerdError):
    """The socket is missing or the daemon does not answer (it may be (re)starting)."""


class ContainerdTooOld(ContainerdError):
    """The daemon does not serve an API nodeagent needs (CRI runtime.v1, containerd >= 1.6)."""


class ImagePullError(ContainerdError):
    """A pull failed. ``reason`` is one of PULL_REASONS; ``image`` is the reference."""

    def __init__(self, message: str, *, image: str, reason: str) -> None:
        super().__init__(message)
        self.image = image
        self.reason = reason if reason in PULL_REASONS else "other"


@dataclass
class CriImage:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    pinned: bool


@dataclass
class ImageRecord:
    name: str
    labels: dict[str, str]
    target_digest: str
    target_media_type: str
    target_size: int


@dataclass
class IngestStatus:
    """An active download in containerd's content store.

    ``ref`` is like ``layer-sha256:<hex>``; ``expected`` (the digest) is empty on
    containerd 1.6, so take the digest from the ref.
    """

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


@dataclass
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass
class ImageEvent:
    topic: str  # one of IMAGE_TOPICS
    name: str


@dataclass
class VersionInfo:
    version: str
    revision: str


@dataclass
class AuthConfig:
    """Registry credentials for one pull (CRI AuthConfig). Never printed in clear."""

    username: str = ""
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    server_address: str = ""
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def secrets(self) -> list[str]:
        values = (self.password, self.auth, self.identity_token, self.registry_token)
        return [v for v in values if v]

    def __repr__(self) -> str:
        def shown(value: str) -> str:
            return repr(_MASK if value else "")

        return (
            f"AuthConfig(username={self.username!r}, password={shown(self.password)}, "
            f"auth={shown(self.auth)}, server_address={self.server_address!r}, "
            f"identity_token={shown(self.identity_token)}, "
            f"registry_token={shown(self.registry_token)})"
        )

    __str__ = __repr__


def scrub(text: str, auth: AuthConfig | None) -> str:
    """Replace any credential value that appears verbatim in text (defence in depth)."""
    for secret in sorted(auth.secrets() if auth else [], key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


# Substrings of containerd 1.6/1.7 pull errors (lower-cased), checked in this order.
# Measured on containerd 1.6.20: a 401 from the registry arrives as gRPC UNKNOWN with
# "... failed with status code [manifests v1]: 401 Unauthorized"; an unknown repository
# or tag as NOT_FOUND "... : not found"; a refused connection as UNKNOWN "dial tcp ...:
# connect: connection refused"; a full disk as UNKNOWN "... no space left on device".
_PULL_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("no_space", ("no space left on device", "disk quota exceeded")),
    ("cancelled", ("context canceled",)),
    ("auth", (
        "401 unauthorized", "403 forbidden", "unauthorized", "authorization failed",
        "failed to authorize", "fetch oauth token", "fetch anonymous token",
        "access to the resource is denied", "pull access denied", "no basic auth credentials",
    )),
    ("not_found", (
        ": not found", "404 not found", "manifest unknown", "name unknown", "blob unknown",
        "no match for platform",
    )),
    ("registry_unreachable", (
        "connection refused", "no such host", "i/o timeout", "network is unreachable",
        "no route to host", "connection reset by peer", "tls handshake timeout",
        "server misbehaving", "dial tcp", "502 bad gateway", "503 service unavailable",
        "504 gateway timeout", "500 internal server error", "context deadline exceeded",
        "unexpected eof", "http: server gave http response to https client",
    )),
)


def classify_pull_error(code: str, details: str) -> str:
    """Map a failed PullImage (gRPC status code name + details) to a PULL_REASONS value."""
    if code == "CANCELLED":
        return "cancelled"
    text = details.lower()
    for reason, needles in _PULL_PATTERNS:
        if any(n in text for n in needles):
            return reason
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return "auth"
    if code == "NOT_FOUND":
        return "not_found"
    if code == "RESOURCE_EXHAUSTED":
        return "no_space"
    return "other"


_PULL_ADVICE = {
    "auth": "the registry refused the credentials; check the image pull secret or "
            "credential provider for this registry (some registries also answer 401/403 "
            "for a repository that does not exist)",
    "not_found": "the registry has no such repository, tag or digest (or no manifest for "
                 "this platform); check the reference",
    "registry_unreachable": "the registry could not be reached; check its address, DNS, "
                            "network/proxy settings and containerd's hosts.toml",
    "no_space": "containerd's filesystem is full; free space or raise the disk size",
    "cancelled": "the pull was cancelled",
    "other": "containerd could not pull it",
}


def pull_error_message(image: str, reason: str, details: str,
                       said_by: str = "containerd", advice: str | None = None) -> str:
    """One wording for every failed pull, whichever path took it (``said_by``);
    ``advice`` replaces the reason's usual one."""
    advice = advice or _PULL_ADVICE.get(reason, _PULL_ADVICE["other"])
    return f"pull of image {image} failed ({reason}): {advice}. {said_by} said: {details}"


def socket_problem(path: str) -> str | None:
    """Why `path` cannot be a usable containerd socket, or None if it looks fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (f"containerd socket {path} does not exist: is containerd running? Point "
                f"nodeagent at the right socket with --containerd-address or {ADDRESS_ENV}")
    except PermissionError:
        return f"permission denied reading containerd socket {path}: run nodeagent as root"
    if not stat.S_ISSOCK(st.st_mode):
        return (f"{path} is not a unix socket, so it cannot be containerd's gRPC address; "
                f"check --containerd-address / {ADDRESS_ENV}")
    if not os.access(path, os.R_OK | os.W_OK):
        return (f"permission denied on containerd socket {path}: run nodeagent as root (or as "
                f"a member of the group that owns the socket)")
    return None


def socket_error(path: str) -> ContainerdError | None:
    """The error to raise for an unusable socket path (missing → unavailable), or None."""
    problem = socket_problem(path)
    if problem is None:
        return None
    missing = not os.path.lexists(path)
    return ContainerdUnavailable(problem) if missing else ContainerdError(problem)


def mount_dirs(mounts: list[tuple[str, str, list[str]]], chain_id: str) -> list[str]:
    """Layer directories (top first) from a read-only view's (type, source, options)."""
    if len(mounts) != 1:
        raise ContainerdError(
            f"view of snapshot {chain_id} returned {len(mounts)} mounts; expected one "
            "overlay or bind mount"
        )
    kind, source, options = mounts[0]
    if kind == "bind":
        return [source]
    if kind == "overlay":
        for option in options:
            if option.startswith("lowerdir="):
                return option.removeprefix("lowerdir=").split(":")
    raise ContainerdError(
        f"view of snapshot {chain_id} is a {kind!r} mount with options {options}; only the "
        "overlayfs snapshotter's overlay/bind mounts are supported"
    )


_FILTER_SAFE = re.compile(r"^[A-Za-z0-9_./:@-]*$")


def quote_filter_value(value: str) -> str:
    """containerd filter string literal (Go strconv.Quote syntax for plain strings)."""
    if not _FILTER_SAFE.match(value):
        raise ContainerdError(f"unsupported character in containerd filter value {value!r}")
    return f'"{value}"'


def image_event_filters(namespace: str) -> list[str]:
    ns = quote_filter_value(namespace)
    return [f"namespace=={ns},topic=={quote_filter_value(t)}" for t in IMAGE_TOPICS]
