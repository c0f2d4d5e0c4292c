"""Model cache errors. Each names the model and its source and carries a bounded
``reason`` (the metrics label); none ever contains a credential."""

from __future__ import annotations

import re

from nodeagent.errors import NodeagentError
from nodeagent.metrics import MODEL_FAILURE_REASONS as REASONS  # the metric's label values

# Access key ids (AKIA/ASIA...), and long base64 runs such as secret keys and session
# tokens: removed from any server message before it is shown.
_KEY_ID = re.compile(r"\b(AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_LONG_SECRET = re.compile(r"[A-Za-z0-9/+=]{40,}")


def scrub(text: str) -> str:
    return _LONG_SECRET.sub("***", _KEY_ID.sub("***", text))


class ModelCacheError(NodeagentError):
    """The cache itself cannot be used (bad cache dir, locked by another run)."""


class ModelError(NodeagentError):
    """Fetching one model failed; ``str()`` names the model, the source and what to do."""

    def __init__(self, model: str, source: str, reason: str, detail: str):
        self.model, self.source = model, source
        self.reason = reason if reason in REASONS else "other"
        self.detail = scrub(detail)
        super().__init__(f"model {model} ({source}): {self.detail}")


class CorruptObject(Exception):
    """Downloaded bytes do not match the object's checksum or ETag (retried)."""
