"""The source URL of a HotModelSet model: the one place such a URL is understood.

- ``s3://bucket/prefix/`` (trailing slash) is every object below the prefix,
  ``s3://bucket`` the whole bucket, ``s3://bucket/key`` one object;
- ``oci://registry/repository:tag`` or ``oci://registry/repository@sha256:...`` is an
  OCI artifact (ORAS-style: each layer a file named by its title annotation), the
  reference parsed and normalized as an image reference is.

The HotModelSet parser checks fields with ``source_problem``; the model cache
(``nodeagent/models``) parses the URLs it downloads from with the same functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodeagent.errors import UsageError
from nodeagent.registry.reference import ImageReference, ReferenceError, parse_reference

# S3 bucket naming rules (general purpose buckets): 3-63 of a-z 0-9 . -, alnum at both ends.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
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
