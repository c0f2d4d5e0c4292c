"""Checks for what a user types or points nodeagent at: numbers, ports, files, paths.

Every command validates its input here before it changes anything, and every refusal
names the flag, file or path and says why. Standard library only: the disks-only zipapp
carries this module.

- ``StrictParser``: the argparse parser of every command; options must be spelled out
  (no abbreviations: ``--remove`` must not run as ``--remove-unlisted``). Subcommand
  parsers inherit it.
- ``number(...)``, ``Range`` and ``port``/``listen_port`` are argparse ``type=``
  callables: argparse prints ``argument --flag: ...`` and exits 2, before the handler
  runs. ``check_number`` is the same rule for values that come from elsewhere (config
  objects). A flag whose default comes from the environment takes ``env_default(...)``:
  argparse checks that default with the flag's type, and the error names the variable.
- ``read_input_file`` reads a file the user named: regular files only (a FIFO would
  block for ever, a device never ends), at most ``MAX_INPUT_FILE_BYTES``.
- ``system_tree`` says whether a path is (inside) a kernel or system tree that nodeagent
  must never move, mount over, bind over or fill.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.errors import UsageError

MAX_INPUT_FILE_BYTES = 16 << 20  # hot lists, docker configs, provider configs: KiB in practice

# Trees no command may put data in, move, or mount/bind over (nor any path below them).
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib",
                "/lib32", "/lib64", "/libx32", "/run", "/efi")
# Directories that may hold such targets below them but must not be the target themselves.
SYSTEM_DIRS = ("/", "/var", "/var/lib", "/var/log", "/home", "/root", "/tmp", "/mnt", "/opt",
               "/srv", "/media")


class StrictParser(argparse.ArgumentParser):
    """An ArgumentParser without prefix matching of long options (``allow_abbrev=False``).

    ``add_subparsers`` makes its subcommands' parsers of the parent's class, so every
    subcommand (and theirs) refuses abbreviations too."""

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)


class EnvValue(str):
    """A flag's default taken from an environment variable: argparse runs the flag's
    type on string defaults, and the types here name ``variable`` when they refuse it."""

    variable: str

    def __new__(cls, text: str, variable: str) -> EnvValue:
        value = super().__new__(cls, text)
        value.variable = variable
        return value


def env_default(variable: str, fallback: str) -> str:
    """The default of a flag that ``variable`` can set: its value when set and not empty,
    else ``fallback`` (a string, so the flag's type checks and converts either)."""
    text = os.environ.get(variable, "").strip()
    return EnvValue(text, variable) if text else fallback


def _shown(text: str) -> str:
    return f"{text.variable}={text}" if isinstance(text, EnvValue) else text


def number(kind: type[int] | type[float], low: float, high: float,
           *, low_open: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a finite ``kind`` within [low, high] (``(low, high]`` when
    ``low_open``). NaN and infinities are refused, as are values out of range."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{_shown(text)!r} is not {'a whole number' if kind is int else 'a number'}"
            ) from None
        problem = number_problem(value, low, high, low_open=low_open)
        if problem:
            raise argparse.ArgumentTypeError(f"{_shown(text)}: {problem}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def number_problem(value: float, low: float, high: float, *, low_open: bool = False
                   ) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        return f"must be within {bracket}{low:g}, {high:g}]"
    return None


def check_number(what: str, value: float, low: float, high: float,
                 *, low_open: bool = False) -> None:
    """``number``'s rule for a value that did not come through argparse."""
    problem = number_problem(value, low, high, low_open=low_open)
    if problem:
        raise UsageError(f"{what} {value!r}: {problem}")


@dataclass(frozen=True)
class Range:
    """A documented range of a numeric flag, usable as its argparse ``type=``; one
    object gives the flag's check, its help text (``str``) and config checks."""

    kind: type[int] | type[float]
    low: float
    high: float
    low_open: bool = False

    def __call__(self, text: str) -> int | float:
        return number(self.kind, self.low, self.high, low_open=self.low_open)(text)

    @property
    def __name__(self) -> str:  # argparse names a type by it in some messages
        return self.kind.__name__

    def check(self, what: str, value: float) -> None:
        check_number(what, value, self.low, self.high, low_open=self.low_open)

    def __str__(self) -> str:
        if self.kind is int:
            return f"{self.low:g}-{self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


def port(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    return _port(text, 1)


def listen_port(text: str) -> int:
    """An argparse type: a TCP port to listen on, 1-65535, or 0 for any free port."""
    return _port(text, 0)


def _port(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not low <= value <= 65535:
        allowed = "1-65535" + (", or 0 for any free port" if low == 0 else "")
        raise argparse.ArgumentTypeError(f"{_shown(text)}: not a TCP port ({allowed})")
    return value


class InputFileError(UsageError):
    """A file the user named that cannot be taken as input; ``reason`` without the path,
    for callers that report the path themselves."""

    def __init__(self, what: str, path: Path | str, reason: str):
        super().__init__(f"{what} {path}: {reason}")
        self.path, self.reason = str(path), reason


def read_input_file(path: Path | str, what: str = "file",
                    max_bytes: int = MAX_INPUT_FILE_BYTES) -> bytes:
    """The bytes of a regular file the user named. A FIFO, device, socket or directory,
    a file larger than ``max_bytes`` or one that cannot be read is a UsageError naming
    ``what`` and the path. Opened non-blocking, so a FIFO is refused, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputFileError(what, path, f"cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(what, path, f"is {_kind(info.st_mode)}, not a "
                                 "regular file")
        if info.st_size > max_bytes:
            raise InputFileError(what, path, f"{info.st_size} bytes is more than the "
                                 f"{max_bytes >> 20} MiB an input file may have")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise InputFileError(what, path, f"more than the {max_bytes >> 20} MiB an "
                                     "input file may have")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise InputFileError(what, path, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_input_text(path: Path | str, what: str = "file",
                    max_bytes: int = MAX_INPUT_FILE_BYTES) -> str:
    data = read_input_file(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(what, path, f"not UTF-8 text (byte {exc.start})") from None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def system_tree(path: str) -> str | None:
    """The system tree or directory ``path`` (absolute, normalized here) is or lies in,
    or None. Paths below SYSTEM_DIRS (e.g. /var/lib/containerd) are not refused here."""
    norm = os.path.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm in SYSTEM_DIRS:
        return norm
    for tree in SYSTEM_TREES:
        if norm == tree or norm.startswith(tree + "/"):
            return tree
    return None


def overlaps(a: str, b: str) -> bool:
    """Whether one of two absolute paths is the other or lies inside it."""
    a, b = os.path.normpath(a), os.path.normpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")
