"""OCI chain IDs: the names containerd gives committed layer snapshots (standard library
only, so hydration can use it without the fast pull's dependencies)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if chains:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
        else:
            chains.append(diff_id)
    return chains
