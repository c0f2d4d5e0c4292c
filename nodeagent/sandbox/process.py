"""Start, wait for and stop the sandbox's helper daemons (registry, containerd).

Shared by registry.py and containerd.py so both log to a file, fail with a message naming
that file, and always leave no process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nodeagent.errors import NodeagentError


class SandboxError(NodeagentError):
    """A sandbox daemon could not be started or is missing."""


def require_binary(name: str, package: str) -> str:
    """Path of `name`, or an error saying which Debian package provides it."""
    path = shutil.which(name)
    if path is None:
        raise SandboxError(
            f"{name!r} not found on PATH; install the Debian package {package!r} "
            "(./.ci/setup installs everything the sandbox needs)"
        )
    return path


def log_tail(log_file: Path, lines: int = 15) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Daemon:
    """One child process with its output appended to a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], log_file: Path, *, detach: bool = False
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.detach = detach
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def spawn(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            stamp = time.strftime("%H:%M:%S")
            out.write(f"==== {stamp} starting: {' '.join(self.argv)}\n".encode())
            out.flush()
            # Own session: a Ctrl-C on the demo's terminal reaches only us, and we then
            # stop the daemons in order instead of the terminal killing them mid-write.
            self.proc = subprocess.Popen(
                self._with_parent_death_signal(self.argv), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _with_parent_death_signal(self, argv: list[str]) -> list[str]:
        """Make the daemon get SIGTERM if we die (a killed pytest must not leave daemons).

        The kernel sends it when the spawning *thread* exits, so only from the main thread;
        `detach` (demo --keep) daemons outlive us on purpose.
        """
        setpriv = shutil.which("setpriv")  # util-linux
        in_main_thread = threading.current_thread() is threading.main_thread()
        if self.detach or setpriv is None or not in_main_thread:
            return argv
        return [setpriv, "--pdeathsig", "TERM", "--", *argv]

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll `ready` until true; seconds waited. Raises naming the log file on failure."""
        start = time.monotonic()
        delay = 0.01
        while time.monotonic() - start < timeout_s:
            if self.proc is not None and self.proc.poll() is not None:
                raise SandboxError(self._failure(f"exited with code {self.proc.returncode}"))
            if ready() and self.proc is not None and self.proc.poll() is None:
                return time.monotonic() - start
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        self.terminate()
        raise SandboxError(self._failure(f"did not become ready ({what}) within {timeout_s:.0f}s"))

    def _failure(self, why: str) -> str:
        tail = log_tail(self.log_file)
        return f"{self.name} {why}; see its log {self.log_file}" + (
            f":\n{tail}" if tail else ""
        )

    def terminate(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL. Idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL and reap (simulates a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
