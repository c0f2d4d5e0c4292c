"""Requests as recorded: every API call with its time and answer (for the RBAC test and for
request counts), the hooks run before each one, and the failures injected into them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .store import Store


@dataclass
class Request:
    """One API call as RBAC sees it (verb, group, resource, subresource) plus details."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    method: str
    path: str
    params: dict[str, str]
    content_type: str = ""
    body: Any = None
    user_agent: str = ""
    status: int = 0
    at: float = field(default_factory=time.monotonic)  # when the request arrived


@dataclass
class InjectedFailure:
    verb: str | None
    resource: str | None
    subresource: str | None
    code: int
    times: int


class RequestLog:
    """The double's record of requests (``requests``), ``hooks`` and injected failures."""

    store: Store

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.hooks: list[Callable[[Request], None]] = []
        self._failures: list[InjectedFailure] = []

    def fail(self, code: int, *, verb: str | None = None, resource: str | None = None,
             subresource: str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with HTTP ``code``."""
        with self.store.lock:
            self._failures.append(InjectedFailure(verb, resource, subresource, code, times))

    def calls(self, verb: str | None = None, resource: str | None = None,
              subresource: str | None = None) -> list[Request]:
        return [
            r for r in list(self.requests)
            if (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (subresource is None or r.subresource == subresource)
        ]

    def counts(self, since: float = 0.0) -> Counter[tuple[str, str]]:
        """Requests per (verb, resource) that arrived at or after ``since`` (monotonic)."""
        return Counter((r.verb, r.resource) for r in list(self.requests) if r.at >= since)

    def _take_failure(self, req: Request) -> int | None:
        with self.store.lock:
            for f in self._failures:
                if f.times > 0 and f.verb in (None, req.verb) \
                        and f.resource in (None, req.resource) \
                        and f.subresource in (None, req.subresource):
                    f.times -= 1
                    return f.code
        return None
