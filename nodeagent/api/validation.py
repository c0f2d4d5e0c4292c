"""Validation of nodeagent.io objects: every problem of a document, with its field path.

A kind's checker (``hotimageset.HotImageSetChecker``) subclasses ``Checker``: it walks
one document, calls ``report(path, message)`` for each problem and uses the generic
checks here for the object envelope (apiVersion, kind, metadata), types, unknown fields
(with a "did you mean"), names and 32-bit integers. Messages follow the API server's
wording ("Required value", "Invalid value: ...") so a problem reads the same whether
kubectl or nodeagent found it. The caller raises one ``InvalidObjects`` error listing
all problems, so the user fixes a file in one go.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.api.group import API_VERSION, Kind
from nodeagent.errors import NodeagentError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DNS_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN_PATTERN = rf"^{DNS_LABEL_RE}(\.{DNS_LABEL_RE})*$"  # for OpenAPI schemas
_DNS_LABEL = re.compile(DNS_LABEL_RE)
_DNS_SUBDOMAIN = re.compile(rf"{DNS_LABEL_RE}(\.{DNS_LABEL_RE})*")

TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# ObjectMeta fields a custom resource read back from the API server may carry.
METADATA_FIELDS = (
    "name", "labels", "annotations", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "finalizers",
    "ownerReferences", "managedFields", "generateName", "selfLink", "namespace",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: where (file, document, object, field) and what."""

    source: str
    document: int | None  # 1-based position in a multi-document file
    object_name: str | None
    path: str
    message: str
    kind: str = ""

    def __str__(self) -> str:
        return f"{self.location()}: {self.path}: {self.message}" if self.path else (
            f"{self.location()}: {self.message}")

    def location(self) -> str:
        text = self.source
        if self.document is not None:
            text += f" document {self.document}"
        if self.object_name:
            text += f' ({self.kind} "{self.object_name}")'
        return text


class InvalidObjects(NodeagentError):
    """One or more invalid documents; ``problems`` lists each one.

    Subclasses say what the documents are (``what``) and what was not done because of
    them (``consequence``).
    """

    what = "objects"
    consequence = "nothing was used from it"

    def __init__(self, problems: Sequence[Problem], consequence: str | None = None):
        self.problems = list(problems)
        self.consequence = consequence or self.consequence
        if len(self.problems) == 1:
            message = f"invalid {self.what}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid {self.what}: {len(self.problems)} problems:\n{lines}"
        super().__init__(f"{message}\n{self.consequence}; fix and retry")

    def saying(self, consequence: str) -> InvalidObjects:
        """The same problems, with what the command at hand did not do because of them
        (``images -f`` lists nothing; ``prewarm -f`` pulls nothing)."""
        return type(self)(self.problems, consequence)


class Checker:
    """Collects the problems of one document of ``kind`` (a cluster-scoped kind)."""

    def __init__(self, kind: Kind, source: str, document: int | None):
        self.kind = kind
        self.source = source
        self.document = document
        self.name: str | None = None  # metadata.name once known to be valid
        self.problems: list[Problem] = []

    def report(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, self.document, self.name, path, message,
                                     self.kind.name))

    # -- the object envelope

    def envelope(self, obj: Any) -> Mapping | None:
        """Check apiVersion, kind and metadata; return the object for its spec checks."""
        if not isinstance(obj, Mapping):
            self.report("", f"must be a {self.kind.name} object, got {describe_value(obj)}")
            return None
        self.metadata(obj.get("metadata"))  # first, so later problems carry the name
        doc = self.mapping(obj, "", TOP_FIELDS)
        self.constant(doc, "apiVersion", API_VERSION)
        self.constant(doc, "kind", self.kind.name)
        return doc

    def constant(self, doc: Mapping, key: str, expected: str) -> None:
        value = doc.get(key)
        if value is None:
            self.report(key, f'Required value: must be "{expected}"')
        elif value != expected:
            self.report(key, f'Unsupported value: {show_value(value)}: must be "{expected}"')

    def metadata(self, obj: Any) -> None:
        if obj is None:
            self.report("metadata", "Required value: metadata.name is required")
            return
        name = obj.get("name") if isinstance(obj, Mapping) else None
        if isinstance(name, str) and self.dns_subdomain(name, "metadata.name"):
            self.name = name  # known first, so every later problem carries it
        meta = self.mapping(obj, "metadata", METADATA_FIELDS)
        if meta is None:
            return
        if name is None:
            self.report("metadata.name", "Required value")
        else:
            self.string(name, "metadata.name")
        if meta.get("namespace") not in (None, ""):
            self.report("metadata.namespace", f"{self.kind.name} is cluster-scoped: remove "
                        f"the namespace {show_value(meta['namespace'])}")

    # -- generic type checks

    def mapping(self, obj: Any, path: str, allowed: Sequence[str],
                what: str = "an object") -> Mapping | None:
        if not isinstance(obj, Mapping):
            self.report(path, f"must be {what}, got {describe_value(obj)}")
            return None
        for key in obj:
            if key not in allowed:
                self.report(_join(path, str(key)), _unknown_field(key, allowed))
        return obj

    def sequence(self, obj: Any, path: str) -> list | None:
        if not isinstance(obj, list):
            self.report(path, f"must be a list, got {describe_value(obj)}")
            return None
        return obj

    def string(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            self.report(path, f"must be a string, got {describe_value(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.report(path, f"must be a boolean (true or false), got {describe_value(value)}")
            return False
        return value

    def int32(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.report(path, f"must be an integer, got {describe_value(value)}")
            return 0
        if not INT32_MIN <= value <= INT32_MAX:
            self.report(path, f"Invalid value: {value}: must fit in a 32-bit signed integer")
        return value

    def dns_subdomain(self, value: str, path: str) -> bool:
        """DNS-1123 subdomain, as Kubernetes requires for object names."""
        if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
            self.report(path, f"Invalid value: {show_value(value)}: must be a lowercase RFC "
                        "1123 subdomain (a-z, 0-9, '-', '.'; start and end alphanumeric; at "
                        "most 253 characters)")
            return False
        return True

    def dns_label(self, value: str, path: str) -> bool:
        """DNS-1123 label, as Kubernetes requires for namespace names."""
        if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
            self.report(path, f"Invalid value: {show_value(value)}: must be a lowercase RFC "
                        "1123 label (a-z, 0-9, '-'; start and end alphanumeric; at most 63 "
                        "characters)")
            return False
        return True


def describe_value(value: Any) -> str:
    """Type and (shortened) value for error messages: 'integer 5', 'string "x"', 'null'."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)
    return kind if value is None else f"{kind} {show_value(value)}"


def show_value(value: Any, limit: int = 80) -> str:
    """A value for an error message, quoted if a string, cut to ``limit`` characters."""
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown_field(key: Any, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f"unknown field {show_value(key)} (allowed: {', '.join(allowed)}){hint}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
