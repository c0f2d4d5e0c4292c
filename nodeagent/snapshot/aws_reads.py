"""A read-only AWS call whose answer could not be parsed is asked again.

botocore retries throttling, 5xx answers and dropped connections, but not an answer it
could not parse (an empty or cut-off 200 body from the service or a proxy on the way;
its own message says "Further retries may succeed"): that error is raised after its
retry loop. ``RereadingClient`` wraps a client so that its Describe/Get/List API calls,
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
READ_ACTIONS = ("Describe", "Get", "List")  # API actions that change nothing


class RereadingClient:
    """A botocore client whose read-only API calls survive an unparsable answer."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        # only API operations (not get_paginator, get_waiter...), named as AWS names them
        action = self._client.meta.method_to_api_mapping.get(name)
        if action and action.startswith(READ_ACTIONS):
            attr = _rereading(action, attr)
            setattr(self, name, attr)  # made once: later lookups skip __getattr__
        return attr


def _rereading(action: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def read(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, READ_ATTEMPTS):
            try:
                return call(*args, **kwargs)
            except ResponseParserError:
                log.warning("AWS answered %s with a response that could not be parsed; "
                            "asking again (attempt %d of %d)", action, attempt + 1,
                            READ_ATTEMPTS)
                time.sleep(READ_BACKOFF_S * attempt)
        return call(*args, **kwargs)

    return read
