"""A read-only AWS call whose answer could not be parsed is asked again.

botocore retries throttling, 5xx answers and dropped connections, but not an answer it
could not parse (an empty or cut-off 200 body from the service or a proxy on the way;
its own message says "Further retries may succeed"): that error is raised after its
retry loop. ``RereadingClient`` wraps a client so that its Describe/Get/List calls,
which change nothing, are asked up to ``READ_ATTEMPTS`` times. Calls that change
something are passed through untouched: their effect may have happened even though the
answer was lost, and the callers that need it (CreateSnapshot) find out on their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from botocore.parsers import ResponseParserError

log = logging.getLogger(__name__)

READ_ATTEMPTS = 3
READ_BACKOFF_S = 0.2  # times the attempt number
READ_PREFIXES = ("describe_", "get_", "list_")


class RereadingClient:
    """A botocore client whose read-only calls survive an unparsable answer."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if callable(attr) and name.startswith(READ_PREFIXES):
            return _rereading(name, attr)
        return attr


def _rereading(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def read(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return call(*args, **kwargs)
            except ResponseParserError:
                if attempt == READ_ATTEMPTS:
                    raise
                log.warning("AWS answered %s with a response that could not be parsed; "
                            "asking again (attempt %d of %d)", name, attempt + 1,
                            READ_ATTEMPTS)
                time.sleep(READ_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    return read
