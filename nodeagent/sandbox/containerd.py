"""A private containerd for the demo, tests and benchmarks.

Everything it owns (root, state, sockets, hosts.toml dir, CNI dirs, log) lives under its
work directory, so several instances run side by side and the node's own containerd
(/var/lib/containerd, /run/containerd) is never touched. It runs as root with the CRI
plugin and the overlayfs snapshotter, which is all a pull + unpack needs (no runc/CNI).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from nodeagent.sandbox.process import Daemon, SandboxError, require_binary

START_TIMEOUT_S = 30.0
# sun_path holds 108 bytes including the NUL; containerd adds ".ttrpc" to some names.
_MAX_SOCKET_PATH = 100

# Plugins a pull never uses; disabling them avoids probing the host at start-up.
_DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


def _q(value: object) -> str:
    """TOML basic string."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class PrivateContainerd:
    """containerd with a private root/state/socket; start/stop/restart/kill."""

    def __init__(
        self, workdir: Path, root: Path | None = None, *, max_concurrent_downloads: int = 3,
        log_level: str = "info", detach: bool = False, snapshotter: str = "overlayfs",
    ) -> None:
        """`detach`: keep running if this process dies (else it gets SIGTERM).
        `snapshotter`: what the CRI plugin unpacks with (overlayfs, as on EKS, or native)."""
        self.workdir = Path(workdir).absolute()
        self.root = Path(root).absolute() if root else self.workdir / "root"
        self.state = self.workdir / "state"
        self.config_path = self.workdir / "certs.d"  # hosts.toml: <config_path>/<host>/
        self.config_file = self.workdir / "config.toml"
        self.log_file = self.workdir / "containerd.log"
        self.max_concurrent_downloads = max_concurrent_downloads
        self.log_level = log_level
        self.detach = detach
        self.snapshotter = snapshotter
        self.socket_dir = self._pick_socket_dir()
        self.address = str(self.socket_dir / "containerd.sock")
        self.start_time_s: float | None = None
        self._daemon: Daemon | None = None

    def _pick_socket_dir(self) -> Path:
        """workdir/run if short enough, else a stable short dir under the temp dir."""
        candidate = self.workdir / "run"
        if len(str(candidate / "containerd.sock.ttrpc")) <= _MAX_SOCKET_PATH:
            return candidate
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"nodeagent-ctrd-{digest}"

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.running

    @property
    def pid(self) -> int | None:
        return self._daemon.pid if self._daemon else None

    def start(self) -> None:
        if self.running:
            return
        exe = require_binary("containerd", "containerd")
        cni = self.workdir / "cni"
        for d in (self.workdir, self.root, self.state, self.config_path, self.socket_dir,
                  cni / "bin", cni / "conf", self.workdir / "opt"):
            d.mkdir(parents=True, exist_ok=True)
        self.socket_dir.chmod(0o700)
        self._remove_stale_sockets()
        self.config_file.write_text(self.config_toml())
        self._daemon = Daemon("containerd", [exe, "--config", str(self.config_file)],
                              self.log_file, detach=self.detach)
        self._daemon.spawn()
        self.start_time_s = self._daemon.wait_ready(
            self._answers, START_TIMEOUT_S, f"CRI on {self.address}"
        )

    def config_toml(self) -> str:
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        disabled = ", ".join(_q(p) for p in _DISABLED_PLUGINS)
        return f"""\
version = 2
root = {_q(self.root)}
state = {_q(self.state)}
temp = {_q(self.workdir / "tmp")}
disabled_plugins = [{disabled}]

[grpc]
  address = {_q(self.address)}
[ttrpc]
  address = {_q(self.socket_dir / "ttrpc.sock")}
[debug]
  address = {_q(self.socket_dir / "debug.sock")}
  level = {_q(self.log_level)}
[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {_q(self.workdir / "opt")}
  {cri}
    disable_apparmor = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    max_concurrent_downloads = {int(self.max_concurrent_downloads)}
    [{cri[1:-1]}.containerd]
      snapshotter = {_q(self.snapshotter)}
    [{cri[1:-1]}.cni]
      bin_dir = {_q(self.workdir / "cni" / "bin")}
      conf_dir = {_q(self.workdir / "cni" / "conf")}
    [{cri[1:-1]}.registry]
      config_path = {_q(self.config_path)}
"""

    def _remove_stale_sockets(self) -> None:
        # A killed daemon leaves its socket files; containerd refuses to bind over them
        # only for some listeners, so clear them all (they are ours alone).
        for name in ("containerd.sock", "containerd.sock.ttrpc", "ttrpc.sock", "debug.sock"):
            (self.socket_dir / name).unlink(missing_ok=True)

    def _answers(self) -> bool:
        """True once the CRI image service answers on the socket (not just the socket)."""
        if not os.path.exists(self.address):
            return False
        return cri_answers(self.address)

    def _terminate(self) -> None:
        if self._daemon is not None:
            self._daemon.terminate()
            self._daemon = None
        self._remove_stale_sockets()

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after 10 s). Root stays on disk."""
        self._terminate()
        self._unmount_leftovers()
        if not self.socket_dir.is_relative_to(self.workdir):
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, like a crash or OOM kill; start() afterwards recovers."""
        if self._daemon is not None:
            self._daemon.kill()
            self._daemon = None

    def restart(self) -> None:
        """Graceful stop then start with the same root, state, socket and config."""
        self._terminate()
        self.start()

    def _unmount_leftovers(self) -> None:
        """Lazily unmount anything still mounted under our private root/state."""
        ours = (str(self.root) + "/", str(self.state) + "/")
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return
        targets = [ln.split()[4] for ln in lines if len(ln.split()) > 4]
        for target in sorted((t for t in targets if t.startswith(ours)), reverse=True):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)

    def map_registry(self, name: str, server: str, *, mirrors: Sequence[str] = ()) -> Path:
        """Write <config_path>/<name>/hosts.toml so pulls of `name/...` go to `server`
        (e.g. "http://127.0.0.1:PORT"), after any `mirrors`. containerd re-reads
        hosts.toml on every pull: no restart needed. Hosts are written as [host."..."]
        entries: containerd 1.6.20 rejects a file with only `server = ...`
        ("invalid `host` tree")."""
        lines = []
        for host in (*mirrors, server):
            lines += [f"[host.{_q(host)}]", '  capabilities = ["pull", "resolve"]', ""]
        path = self.config_path / name / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines))
        return path

    def ctr(self, *args: str, namespace: str = "k8s.io", timeout: float = 300) -> str:
        """Run `ctr` against this instance (tests and the demo use it to cross-check)."""
        exe = require_binary("ctr", "containerd")
        argv = [exe, "--address", self.address, "--namespace", namespace, *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise SandboxError(f"ctr {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def __enter__(self) -> PrivateContainerd:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PrivateContainerd(address={self.address!r}, root={str(self.root)!r})"


def cri_answers(address: str, timeout_s: float = 2.0) -> bool:
    """One raw CRI ImageFsInfo call (empty request) without generated stubs."""
    import grpc  # heavy; only needed once a daemon is being started

    channel = grpc.insecure_channel(f"unix://{address}")
    try:
        call = channel.unary_unary("/runtime.v1.ImageService/ImageFsInfo")
        call(b"", timeout=timeout_s)
        return True
    except grpc.RpcError:
        return False
    finally:
        channel.close()

