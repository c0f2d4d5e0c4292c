"""Freeze a filesystem (FIFREEZE) for the shortest possible window, and always thaw it.

Three layers make sure nothing is left frozen:
- ``finally``: the body raising (e.g. CreateSnapshot failing) thaws on the way out;
- SIGINT/SIGTERM/SIGHUP/SIGQUIT arriving in the window are deferred and re-raised after the
  thaw (a handler that ran mid-window could otherwise exit without thawing);
- a watchdog process, started before the freeze, thaws when the window exceeds its limit or
  when this process dies without saying "done" (SIGKILL, OOM kill), since a frozen
  filesystem blocks every writer on the node, kubelet and containerd included.

Nothing inside the window may write to the frozen filesystem (it would block until the
watchdog fires): callers prepare clients and credentials before entering.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from nodeagent.errors import NodeagentError

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

# Runs in a separate interpreter: stdlib only, everything imported before "ready".
_WATCHDOG = r"""
import fcntl, os, select, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDONLY)
os.write(1, b"ready\n")
ready, _, _ = select.select([0], [], [], float(sys.argv[2]))
message = os.read(0, 64) if ready else b""
if not message.startswith(b"done"):
    try:
        fcntl.ioctl(fd, int(sys.argv[3]), 0)
        os.write(1, b"thawed\n")
    except OSError:
        os.write(1, b"not-frozen\n")
"""


class FreezeError(NodeagentError):
    """The filesystem could not be frozen (names the path and the reason)."""


@dataclass
class FreezeWindow:
    """Filled in as the window closes: how long it lasted and who thawed it."""

    path: str
    frozen_seconds: float = 0.0
    thawed_by_watchdog: bool = False


def _ioctl(fd: int, request: int) -> None:
    fcntl.ioctl(fd, request, 0)


def _freeze_error(path: str, exc: OSError) -> FreezeError:
    reasons = {
        errno.EBUSY: "it is already frozen (by another process); not touching it",
        errno.EPERM: "permission denied: freezing needs CAP_SYS_ADMIN (run as root / "
        "privileged)",
        errno.EOPNOTSUPP: "this filesystem does not support freezing",
        errno.ENOTTY: "this filesystem does not support freezing",
        errno.EINVAL: "this filesystem does not support freezing",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return FreezeError(f"cannot freeze the filesystem of {path}: {reason}")


class _Watchdog:
    """A child process that thaws the filesystem if we overrun or die."""

    def __init__(self, path: str, max_seconds: float) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, path, str(max_seconds),
                 str(FITHAW)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C must not reach it
            )
        except OSError as exc:
            raise FreezeError(f"cannot start the freeze watchdog for {path}: {exc}") from exc
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.proc.kill()
            self.proc.wait()
            raise FreezeError(f"cannot start the freeze watchdog for {path}")

    def finish(self) -> bool:
        """Tell it we thawed; returns True if it had thawed first (window overrun)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(b"done\n")
            self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait()
        return b"thawed" in out


class _DeferSignals:
    """Hold termination signals while frozen; re-deliver them after the thaw.

    Python handlers only run in the main thread, so outside it we rely on the watchdog.
    """

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.saved: dict[int, object] = {}

    def __enter__(self) -> _DeferSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in DEFERRED_SIGNALS:
                self.saved[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        for sig in dict.fromkeys(self.pending):
            signal.raise_signal(sig)


@contextlib.contextmanager
def frozen(path: str, max_seconds: float = 30.0) -> Iterator[FreezeWindow]:
    """Sync, freeze the filesystem holding ``path``, run the body, thaw (always).

    ``max_seconds`` bounds the window: past it the watchdog thaws and the body's result is
    only crash-consistent (``window.thawed_by_watchdog`` says so afterwards).
    """
    os.sync()  # flush dirty data now so the freeze itself (which syncs again) is short
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise FreezeError(f"cannot open {path}: {exc.strerror}") from exc
    window = FreezeWindow(path=path)
    try:
        watchdog = _Watchdog(path, max_seconds)
        try:
            with _DeferSignals():
                try:
                    _ioctl(fd, FIFREEZE)
                except OSError as exc:
                    raise _freeze_error(path, exc) from exc
                started = time.monotonic()
                try:
                    yield window
                finally:
                    _thaw(fd, path)
                    window.frozen_seconds = time.monotonic() - started
        finally:
            window.thawed_by_watchdog = watchdog.finish()
    finally:
        os.close(fd)


def _thaw(fd: int, path: str) -> None:
    try:
        _ioctl(fd, FITHAW)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not frozen (the watchdog thawed it)
            raise FreezeError(f"cannot thaw {path}: {exc.strerror}") from exc
