"""What a model is: a name (the directory under the cache dir), a source, a priority.

``ModelSpec`` is the engine's input; the HotModelSet parser (``nodeagent/api``) and
``models/desired.py`` produce them. This module is the one place a source URL is
understood:

- ``s3://bucket/prefix/`` (trailing slash) is every object below the prefix,
  ``s3://bucket`` the whole bucket, ``s3://bucket/key`` one object;
- ``oci://registry/repository:tag`` or ``oci://registry/repository@sha256:...`` is an
  OCI artifact (ORAS-style: each layer a file named by its title annotation), the
  reference parsed and normalized as an image reference is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodeagent.errors import UsageError
from nodeagent.registry.reference import ImageReference, ReferenceError, parse_reference

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# S3 bucket naming rules (general purpose buckets): 3-63 of a-z 0-9 . -, alnum at both ends.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
SCHEMES = ("s3", "oci")
SOURCE_FORMS = ("s3://bucket/prefix/ (every object below it), s3://bucket/key (one object) "
                "or oci://registry/repository:tag|@sha256:... (an OCI artifact)")


class SourceError(UsageError):
    """A source URL that cannot be used; ``problem`` says why without naming the model."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # a prefix ("" or ending in "/") or one object's key

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class OciLocation:
    reference: ImageReference  # normalized: registry, repository, tag and/or digest

    @property
    def url(self) -> str:
        return f"oci://{self.reference}"


@dataclass(frozen=True)
class ModelSpec:
    """One model a node keeps in its cache. Validated on construction."""

    name: str  # DNS-1123 label: the directory <cache dir>/<name>
    source: str  # s3://bucket/prefix/, s3://bucket/key or oci://registry/repo:tag
    priority: int = 0  # higher is fetched first and evicted last
    required: bool = False  # the node's startup taint may wait for it (agent)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise UsageError(f"model {self.name}: priority {self.priority!r} is not an integer")
        source_scheme(self)

    @property
    def scheme(self) -> str:
        return self.source.partition("://")[0]


def check_name(name: str) -> None:
    if not isinstance(name, str) or not DNS1123_LABEL.fullmatch(name):
        raise UsageError(
            f"model name {name!r} is not a DNS-1123 label (1-63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit): it names the model's "
            "directory in the cache")


def source_scheme(spec: ModelSpec) -> str:
    """The source's scheme, after checking the source is well-formed."""
    parse_source(spec.source, spec.name)
    return spec.scheme


def parse_source(url: str, model: str = "") -> S3Location | OciLocation:
    """Parse any supported source; SourceError names the model, the URL and the problem."""
    who = f"model {model}: " if model else ""
    if not isinstance(url, str):
        raise SourceError(f"{who}source {url!r} is not a string", "must be a string")
    if url.startswith("s3://"):
        return parse_s3_url(url, model)
    if url.startswith("oci://"):
        return parse_oci_url(url, model)
    problem = f"is not supported: use {SOURCE_FORMS}"
    raise SourceError(f"{who}source {url!r} {problem}", problem)


def source_problem(url: object) -> str | None:
    """What is wrong with a source URL (for field-path validation), or None."""
    try:
        parse_source(url)  # type: ignore[arg-type]
    except SourceError as exc:
        return exc.problem
    return None


def parse_s3_url(url: str, model: str = "") -> S3Location:
    who = f"model {model}: " if model else ""

    def fail(problem: str) -> SourceError:
        return SourceError(f"{who}source {url!r}: {problem}", problem)

    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not BUCKET.fullmatch(bucket) or ".." in bucket:
        raise fail(f"{bucket!r} is not a valid S3 bucket name")
    if any(ord(c) < 32 for c in key) or key.startswith("/"):
        raise fail("the key or prefix has control characters or starts with '/'")
    if key and not key.endswith("/") and key.rsplit("/", 1)[-1] in (".", ".."):
        raise fail("the object key ends in '.' or '..'")
    return S3Location(bucket, key)


def parse_oci_url(url: str, model: str = "") -> OciLocation:
    who = f"model {model}: " if model else ""
    try:
        return OciLocation(parse_reference(url.removeprefix("oci://")))
    except ReferenceError as exc:
        problem = f"not a valid OCI artifact reference: {exc.problem}"
        raise SourceError(f"{who}source {url!r}: {problem}", problem) from None
