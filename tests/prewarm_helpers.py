"""Helpers shared by the prewarm engine and CLI tests (not fixtures: plain functions)."""

from __future__ import annotations

from collections.abc import Iterable

from nodeagent.prewarm.hotlist import DesiredImage
from nodeagent.prewarm.reference import parse_reference


def desired(*refs: str, pin: bool = True, priority: int = 0, required: bool = True,
            sets: Iterable[str] = ("test",)) -> list[DesiredImage]:
    return [DesiredImage(parse_reference(r), None, pin, priority, required, (), tuple(sets))
            for r in refs]


def hotlist_yaml(name: str, refs: Iterable[str], *, pin: bool = True, priority: int = 0,
                 selector: str | None = None) -> str:
    images = "\n".join(f"    - image: {r}\n      required: true" for r in refs)
    sel = f"  nodeSelector:\n    matchLabels: {{{selector}}}\n" if selector else ""
    return (f"apiVersion: nodeagent.io/v1alpha1\nkind: HotImageSet\nmetadata:\n  name: {name}\n"
            f"spec:\n  pin: {str(pin).lower()}\n  priority: {priority}\n{sel}"
            f"  images:\n{images}\n")
