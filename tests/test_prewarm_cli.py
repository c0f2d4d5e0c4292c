"""`nodeagent prewarm` and `nodeagent images` as a user runs them (subprocesses), against
a real private containerd and real registries (open and htpasswd-protected)."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.prewarm_helpers import hotlist_yaml

from nodeagent.api.hotimageset import load_hotimageset_file
from nodeagent.errors import UsageError
from nodeagent.prewarm.commands import parse_node_labels
from nodeagent.prewarm.desired import select_for_node
from nodeagent.registry.reference import parse_reference


def nodeagent(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", "--log-format", "json", *args],
                          capture_output=True, text=True, timeout=timeout)


def start_nodeagent(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ctr_names(containerd) -> list[str]:
    return containerd.ctr("images", "ls", "-q").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_config(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def test_prewarm_private_registry_via_docker_config_then_images(
        tmp_path, containerd, auth_sample_images, auth_credentials):
    refs = [auth_sample_images[n].ref for n in ("python", "model-server", "trainer")]
    host = parse_reference(refs[0]).registry
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("private", refs))
    config = docker_config(tmp_path / "config.json", host, auth_credentials.username,
                           auth_credentials.password)
    run = nodeagent("prewarm", "-f", str(hot), "--once", "--docker-config", str(config),
                    "--containerd-address", containerd.address)
    assert run.returncode == 0, run.stderr
    assert "prewarm: 3/3 images present (3 pulled, 0 already there)" in run.stdout
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert {e.get("image") for e in events if e["msg"] == "image present"} == set(refs)
    assert auth_credentials.password not in run.stdout + run.stderr

    listing = nodeagent("images", "-o", "json", "-f", str(hot),
                        "--containerd-address", containerd.address)
    assert listing.returncode == 0, listing.stderr
    rows = {r["image"]: r for r in json.loads(listing.stdout)}
    for ref in refs:
        row = rows[ref]
        assert row["pinned_by_nodeagent"] and row["pin_label"] and row["hot"]
        assert row["size"] > 0 and row["digest"].startswith("sha256:")
        assert len(row["references"]) == 2  # tag and repo@digest
    table = nodeagent("images", "--containerd-address", containerd.address)
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["IMAGE", "DIGEST", "SIZE", "PINNED", "CRI-PINNED", "HOT"]
    assert sum(1 for line in lines if "nodeagent" in line) == 3


PLUGIN = """#!{python}
import json, sys
request = json.load(sys.stdin)
assert request["kind"] == "CredentialProviderRequest", request
print(json.dumps({{
    "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
    "kind": "CredentialProviderResponse",
    "cacheKeyType": "Registry",
    "cacheDuration": "60s",
    "auth": {{{host!r}: {{"username": {user!r}, "password": {password!r}}}}},
}}))
"""


def test_prewarm_private_registry_via_credential_provider_plugin(
        tmp_path, containerd, auth_sample_images, auth_credentials):
    ref = auth_sample_images["trainer"].ref
    host = parse_reference(ref).registry
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "test-credential-provider"
    plugin.write_text(PLUGIN.format(python=sys.executable, host=host,
                                    user=auth_credentials.username,
                                    password=auth_credentials.password))
    plugin.chmod(0o755)
    config = tmp_path / "credential-provider.json"
    config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{"name": "test-credential-provider", "matchImages": [host],
                       "defaultCacheDuration": "1m",
                       "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}],
    }))
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("private", [ref]))
    run = nodeagent("prewarm", "-f", str(hot), "--credential-provider-config", str(config),
                    "--credential-provider-bin-dir", str(bin_dir),
                    "--containerd-address", containerd.address)
    assert run.returncode == 0, run.stderr
    assert "1/1 images present" in run.stdout
    assert auth_credentials.password not in run.stdout + run.stderr


def test_wrong_password_in_watch_mode_clear_error_no_secret_in_output_or_metrics(
        tmp_path, containerd, auth_sample_images, auth_credentials):
    ref = auth_sample_images["python"].ref
    wrong = "N0t-the-" + auth_credentials.password
    config = docker_config(tmp_path / "config.json", parse_reference(ref).registry,
                           auth_credentials.username, wrong)
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("private", [ref]))
    port = free_port()
    proc = start_nodeagent("prewarm", "-f", str(hot), "--watch-file", "--docker-config",
                           str(config), "--metrics-port", str(port),
                           "--containerd-address", containerd.address)
    body = ""
    try:
        deadline = time.monotonic() + 60
        while 'nodeagent_prewarm_pull_failures_total{reason="auth"} 1.0' not in body:
            assert time.monotonic() < deadline, body
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                    body = r.read().decode()
            except OSError:
                continue
        assert 'nodeagent_prewarm_images{state="failed"} 1.0' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"failed   {ref}" in out and "registry refused the credentials" in out
    for text in (out, err, body):
        assert wrong not in text
        assert base64.b64encode(f"{auth_credentials.username}:{wrong}".encode()).decode() \
            not in text
    assert ctr_names(containerd) == []


def test_watch_file_picks_up_a_changed_hot_list(tmp_path, containerd, sample_images):
    first, second = sample_images["python"], sample_images["trainer"]
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("set", [first.ref]))
    proc = start_nodeagent("prewarm", "-f", str(hot), "--watch-file",
                           "--containerd-address", containerd.address)
    try:
        deadline = time.monotonic() + 60
        while first.ref not in ctr_names(containerd):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.3)
        hot.write_text("not: [valid")  # a broken edit keeps the previous list
        time.sleep(2.5)
        hot.write_text(hotlist_yaml("set", [first.ref, second.ref]))
        while second.ref not in ctr_names(containerd):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "hot list changed but is invalid; keeping the previous list" in err
    assert "2/2 images present" in out


def test_invalid_hot_list_exits_nonzero_naming_the_problem_and_pulls_nothing(
        tmp_path, containerd, sample_images):
    hot = tmp_path / "hot.yaml"
    good = hotlist_yaml("good", [sample_images["python"].ref])
    bad = hotlist_yaml("bad", ["Not A Valid:ref"])
    hot.write_text(good + "---\n" + bad)
    run = nodeagent("prewarm", "-f", str(hot), "--containerd-address", containerd.address)
    assert run.returncode != 0
    assert str(hot) in run.stderr and "spec.images[0].image" in run.stderr
    assert "nothing was pulled" in run.stderr
    assert ctr_names(containerd) == []
    missing = nodeagent("prewarm", "-f", str(tmp_path / "nope.yaml"),
                        "--containerd-address", containerd.address)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_unknown_image_fails_with_summary_and_exit_1(tmp_path, containerd, registry):
    ref = f"{registry.host}/nodeagent-test/does-not-exist:1"
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("set", [ref]))
    run = nodeagent("prewarm", "-f", str(hot), "--containerd-address", containerd.address)
    assert run.returncode == 1
    assert "0/1 images present" in run.stdout and f"failed   {ref}" in run.stdout
    assert "no such repository, tag or digest" in run.stdout


def test_bad_flags_are_usage_errors(tmp_path):
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("set", ["nginx:1"]))
    run = nodeagent("prewarm", "-f", str(hot), "--concurrency", "0")
    assert run.returncode == 2
    assert "argument --concurrency: 0: must be within [1, 64]" in run.stderr
    run = nodeagent("prewarm", "-f", str(hot), "--credential-provider-bin-dir", str(tmp_path))
    assert run.returncode == 2
    assert "--credential-provider-bin-dir needs --credential-provider-config" in run.stderr


def test_node_selection_without_and_with_node_labels(tmp_path):
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("all", ["a:1"]) + "---\n"
                   + hotlist_yaml("gpu", ["b:1"], selector="gpu: 'true'"))
    sets = load_hotimageset_file(hot)

    def names(images):
        return sorted(d.reference.repository for d in images)

    assert names(select_for_node(sets, None, False)) == ["library/a"]
    assert names(select_for_node(sets, {"gpu": "true"}, False)) == ["library/a", "library/b"]
    assert names(select_for_node(sets, {"gpu": "false"}, False)) == ["library/a"]
    assert names(select_for_node(sets, None, True)) == ["library/a", "library/b"]
    assert parse_node_labels("a=1, b=2") == {"a": "1", "b": "2"}
    with pytest.raises(UsageError, match="not key=value"):
        parse_node_labels("a")


def test_default_concurrency_is_cpus_plus_one_between_2_and_4():
    from nodeagent.prewarm.config import default_concurrency

    assert [default_concurrency(n) for n in (1, 2, 3, 96)] == [2, 3, 4, 4]
