"""Reading nodeagent.io documents from files: YAML (several documents per file) or JSON.

``read_documents`` expands directories (their *.yaml, *.yml, *.json, sorted), parses each
file and yields every non-empty document with its file and position. Problems (missing
file, empty directory, a FIFO or device, a file over the input size cap, bad YAML, a
duplicate mapping key) are collected, not raised, so the caller reports them together
with the documents' own problems. Files are read through ``nodeagent.inputs``: regular
files only, at most ``MAX_INPUT_FILE_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from nodeagent.api.group import Kind
from nodeagent.api.validation import Problem
from nodeagent.inputs import InputFileError, read_input_text

SUFFIXES = (".yaml", ".yml", ".json")


def read_documents(paths: Iterable[Path], kind: Kind, problems: list[Problem]
                   ) -> Iterator[tuple[str, int, Any]]:
    """(file, 1-based document number, document) for every document of the paths.

    A generator: a file's problems are added when it is read, so a caller that checks
    each document as it comes keeps every problem in file order.
    """
    for file in _expand(paths, problems):
        for index, doc in _read_file(file, kind, problems):
            yield str(file), index, doc


def _expand(paths: Iterable[Path], problems: list[Problem]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            # Not only regular files: a FIFO or device named *.yaml is refused when read.
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.is_dir())
            if not found:  # an empty list would mean "nothing wanted": say so instead
                problems.append(_file_problem(path, "directory has no *.yaml, *.yml or *.json "
                                              "file"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(_file_problem(path, "file does not exist"))
    return files


def _read_file(path: Path, kind: Kind, problems: list[Problem]) -> list[tuple[int, Any]]:
    try:
        text = read_input_text(path, f"{kind.name} file")
    except InputFileError as exc:
        problems.append(_file_problem(path, exc.reason))
        return []
    if path.suffix == ".json":  # JSON may use tabs, which YAML rejects
        try:
            return [(1, json.loads(text))]
        except ValueError as exc:
            problems.append(_file_problem(path, f"not valid JSON: {exc}"))
            return []
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        problems.append(_file_problem(path, f"not valid YAML: {_yaml_reason(exc)}"))
        return []
    numbered = [(i, doc) for i, doc in enumerate(docs, start=1) if doc is not None]
    if not numbered:
        problems.append(_file_problem(path, f"contains no {kind.name} document"))
    return numbered


def _file_problem(path: Path, message: str) -> Problem:
    return Problem(str(path), None, None, "", message)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (the later value would win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return problem
