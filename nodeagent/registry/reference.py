"""Container image references, parsed and normalized the way containerd and docker do.

Grammar (distribution/reference):
    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*
    domain     := host [ ":" port ]

Normalization follows ``ParseNormalizedNamed``: a first component is a registry only
when it contains "." or ":", is "localhost", or has upper-case letters; otherwise the
registry is docker.io, and a single-component docker.io name gets "library/". The tag
defaults to "latest" only when there is no digest. ``name:tag@digest`` keeps both (the
digest is what gets pulled; the tag is kept for humans and for the CRI image record).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodeagent.errors import NodeagentError

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
# Algorithms containerd's go-digest registers, with their hex lengths.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"[a-f0-9]+")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")


class ReferenceError(NodeagentError):
    """An image reference that containerd would refuse; the message names it and why."""

    def __init__(self, text: str, problem: str):
        self.text = text
        self.problem = problem
        super().__init__(f"invalid image reference {_quote(text)}: {problem}")


@dataclass(frozen=True)
class ImageReference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Registry plus repository, without tag or digest: "docker.io/library/nginx"."""
        return f"{self.registry}/{self.repository}"

    @property
    def locator(self) -> str:
        """What a registry is asked for: the digest when pinned by digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> ImageReference:
        """The same image pinned to ``digest`` (keeps the tag for readability)."""
        check_digest(digest, digest)
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    """Parse and normalize ``text``; raise ReferenceError saying exactly what is wrong."""
    if not isinstance(text, str):
        raise ReferenceError(repr(text), "must be a string")
    if not text:
        raise ReferenceError(text, "is empty")
    if text != text.strip():
        raise ReferenceError(text, "has leading or trailing whitespace")
    if _IMAGE_ID.fullmatch(text):
        raise ReferenceError(text, "a 64-character hex string is an image ID, not a reference")
    remainder, digest = _split_digest(text)
    name, tag = _split_tag(text, remainder)
    registry, repository = _split_registry(text, name)
    _check_repository(text, registry, repository)
    if digest is None and tag is None:
        tag = DEFAULT_TAG
    return ImageReference(registry, repository, tag, digest)


def check_digest(text: str, digest: str) -> None:
    """Raise ReferenceError unless ``digest`` is "<algorithm>:<hex of the right length>"."""
    algorithm, sep, hex_part = digest.partition(":")
    if not sep:
        raise ReferenceError(text, f"digest {_quote(digest)} must look like sha256:<64 hex>")
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        supported = ", ".join(_DIGEST_HEX_LENGTH)
        raise ReferenceError(
            text, f"unsupported digest algorithm {_quote(algorithm)} (supported: {supported})"
        )
    if len(hex_part) != expected or not _HEX.fullmatch(hex_part):
        raise ReferenceError(
            text,
            f"digest {_quote(digest)} must be {algorithm}: followed by {expected} "
            "lower-case hex characters",
        )


def _split_digest(text: str) -> tuple[str, str | None]:
    remainder, sep, digest = text.partition("@")
    if not sep:
        return text, None
    if not remainder:
        raise ReferenceError(text, "has a digest but no repository name")
    check_digest(text, digest)
    return remainder, digest


def _split_tag(text: str, remainder: str) -> tuple[str, str | None]:
    # A ":" after the last "/" starts the tag; one before it is a registry port.
    colon = remainder.rfind(":")
    if colon == -1 or "/" in remainder[colon:]:
        return remainder, None
    name, tag = remainder[:colon], remainder[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise ReferenceError(
            text,
            f"tag {_quote(tag)} is invalid (allowed: letters, digits, '_', '.', '-'; "
            "must not start with '.' or '-'; at most 128 characters)",
        )
    return name, tag


def _split_registry(text: str, name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and _looks_like_registry(first):
        if not _DOMAIN.fullmatch(first):
            raise ReferenceError(text, f"registry host {_quote(first)} is invalid")
        registry = DEFAULT_REGISTRY if first == LEGACY_DEFAULT_REGISTRY else first
        repository = rest
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and repository and "/" not in repository:
        repository = f"library/{repository}"
    return registry, repository


def _looks_like_registry(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component != component.lower()
    )


def _check_repository(text: str, registry: str, repository: str) -> None:
    if not repository:
        raise ReferenceError(text, "repository name is empty")
    if repository != repository.lower():
        raise ReferenceError(text, "repository name must be lowercase")
    for component in repository.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            raise ReferenceError(
                text,
                f"repository path component {_quote(component)} is invalid (lower-case "
                "letters and digits, separated by '.', '_', '__' or '-')",
            )
    if len(f"{registry}/{repository}") > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(
            text, f"repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )


def _quote(value: str, limit: int = 200) -> str:
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return f'"{value}"'
