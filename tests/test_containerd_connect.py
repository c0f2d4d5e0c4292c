"""ContainerdClient's connection to containerd: the address flag, what a missing socket, a
dead daemon and a containerd without the CRI plugin look like, and secrets never printed.

The daemon is a real containerd (1.6.20 from Debian) from the shared fixtures in
conftest.py (a private containerd per test). One test starts its own containerd because
it needs a config the fixture does not offer (CRI plugin disabled).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import containerd_helpers
from support.containerd_helpers import closing, until

from nodeagent.containerd.client import (
    ADDRESS_ENV,
    AuthConfig,
    ContainerdClient,
    ContainerdError,
    ContainerdTooOld,
    ContainerdUnavailable,
    add_address_argument,
)
from nodeagent.sandbox.containerd import PrivateContainerd

client = containerd_helpers.client


# -- no daemon needed -------------------------------------------------------------------


def test_public_module_does_not_import_grpc() -> None:
    code = "import sys, nodeagent.containerd.client; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_address_argument_default_env_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str) -> str:
        parser = argparse.ArgumentParser()
        add_address_argument(parser)
        return parser.parse_args(argv).containerd_address

    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert parse() == "/run/containerd/containerd.sock"
    monkeypatch.setenv(ADDRESS_ENV, "/tmp/x.sock")
    assert parse() == "/tmp/x.sock"
    assert parse("--containerd-address", "/y.sock") == "/y.sock"


def test_auth_config_repr_masks_secrets() -> None:
    auth = AuthConfig(username="bob", password="hunter2", auth="Ym9iOmh1bnRlcjI=",
                      identity_token="idtok", registry_token="regtok")
    for text in (repr(auth), str(auth), f"{auth}", repr([auth])):
        assert "bob" in text
        for secret in ("hunter2", "Ym9iOmh1bnRlcjI=", "idtok", "regtok"):
            assert secret not in text


async def test_missing_socket_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "no-such" / "containerd.sock")
    client = ContainerdClient(path)
    with pytest.raises(ContainerdUnavailable, match="does not exist") as err:
        await client.connect()
    assert path in str(err.value) and ADDRESS_ENV in str(err.value)
    await client.close()


async def test_regular_file_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "containerd.sock"
    path.write_text("")
    async with closing(ContainerdClient(str(path))) as client:
        with pytest.raises(ContainerdError, match="is not a unix socket") as err:
            await client.connect()
    assert not isinstance(err.value, ContainerdUnavailable)
    assert str(path) in str(err.value)


# -- against the real daemon ------------------------------------------------------------------


@pytest.mark.containerd
async def test_connect_reports_daemon_version(
    containerd: PrivateContainerd, client: ContainerdClient
) -> None:
    info = await client.version()
    assert info.version and info.revision
    server = containerd.ctr("version").split("Server:", 1)[1]
    assert info.version in server and info.revision in server
    assert await client.connect() == info  # reconnecting on an open client is harmless


@pytest.mark.containerd
async def test_daemon_gone_raises_unavailable(containerd: PrivateContainerd) -> None:
    client = ContainerdClient(containerd.address)
    await client.connect()
    containerd.kill()  # crash: the socket file stays, nobody listens
    with pytest.raises(ContainerdUnavailable, match="not answering") as err:
        await client.list_images()
    assert containerd.address in str(err.value)
    await client.close()
    containerd.start()
    containerd.stop()  # clean stop removes the socket
    async with closing(ContainerdClient(containerd.address)) as fresh:
        with pytest.raises(ContainerdUnavailable, match="does not exist"):
            await fresh.connect()


@pytest.mark.containerd
async def test_cri_disabled_is_reported_as_too_old(tmp_path: Path) -> None:
    if shutil.which("containerd") is None or os.geteuid() != 0:
        pytest.skip("needs the containerd binary and root")
    with _containerd_without_cri(tmp_path) as address:
        client = ContainerdClient(address)
        try:
            await until(lambda: _answers(client), 30, "containerd without CRI to start")
            with pytest.raises(ContainerdTooOld) as err:
                await client.connect()
        finally:
            await client.close()
    version = (await _version_of_binary())
    assert version in str(err.value) and address in str(err.value)
    assert "runtime.v1" in str(err.value)


async def _answers(client: ContainerdClient) -> bool:
    try:
        await client.version()
    except ContainerdUnavailable:
        return False
    return True


async def _version_of_binary() -> str:
    out = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[2]


@contextlib.contextmanager
def _containerd_without_cri(tmp_path: Path) -> Iterator[str]:
    sockets = Path(tempfile.mkdtemp(prefix="na-nocri-"))  # short: sun_path is 108 bytes
    config = tmp_path / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sockets}/c.sock"\n[ttrpc]\n  address = "{sockets}/t.sock"\n'
    )
    with open(tmp_path / "containerd.log", "wb") as log:
        proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        yield f"{sockets}/c.sock"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(sockets, ignore_errors=True)
