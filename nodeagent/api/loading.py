"""A list of named nodeagent.io sets from files, and one set from the API server.

Both kinds of set (HotImageSet, HotModelSet) load the same way: every document of every
file is checked, set names must be unique across all files, and every problem is
reported together in one ``InvalidObjects`` error, so nothing is used from a list that
does not validate. Each kind brings its checker and its error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from nodeagent.api.documents import read_documents
from nodeagent.api.group import Kind
from nodeagent.api.validation import Checker, InvalidObjects, Problem

C = TypeVar("C", bound=Checker)
T = TypeVar("T")


def load_sets(paths: Iterable[Path], kind: Kind, new_checker: Callable[[str, int | None], C],
              check: Callable[[C, Any], T | None], error: type[InvalidObjects]) -> list[T]:
    """Every valid set of the files and directories, or ``error`` naming every problem."""
    problems: list[Problem] = []
    sets: list[T] = []
    defined_in: dict[str, str] = {}
    for source, index, doc in read_documents(paths, kind, problems):
        checker = new_checker(source, index)
        result = check(checker, doc)
        name = checker.name
        if name is not None and name in defined_in:
            checker.report("metadata.name", f'duplicate {kind.name} name "{name}" (already '
                           f"defined in {defined_in[name]}); set names must be unique")
        elif name is not None:
            defined_in[name] = f"{source} document {index}"
        problems.extend(checker.problems)
        if result is not None and not checker.problems:
            sets.append(result)
    if problems:
        raise error(problems)
    return sets


def parse_set(obj: Any, source: str, new_checker: Callable[[str, int | None], C],
              check: Callable[[C, Any], T | None], error: type[InvalidObjects]) -> T:
    """One set object (e.g. from the API server), or ``error`` naming its problems."""
    checker = new_checker(source, None)
    result = check(checker, obj)
    if checker.problems or result is None:
        raise error(checker.problems)
    return result
