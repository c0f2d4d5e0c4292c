"""Secrets are masked by their known values, never by guessing words: the rules of the
registry of known values (nodeagent/redaction.py), the sources that fill it, and what a
user sees on stderr, in log lines, in /metrics, in Events and in Node conditions."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from support.kubeapi import KubeApiDouble
from support.prewarm_helpers import hotlist_yaml

from nodeagent import redaction
from nodeagent.credentials.dockerconfig import AuthSourceError, DockerConfigKeyring
from nodeagent.log import redact_text
from nodeagent.registry.reference import parse_reference

NUMERIC = "8675309"
SHORT = "pw1"
EMBEDDED = "abc123xyz"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ----------------------------------------------------------------------------- the rules


def test_short_numeric_and_embedded_values_are_masked_words_are_not():
    redaction.register(SHORT, NUMERIC, EMBEDDED)
    assert redact_text(f"key {NUMERIC} (call {NUMERIC}0)") == "key *** (call ***0)"
    assert redact_text(f"token={EMBEDDED};") == "token=***;"
    assert redact_text(f"x{EMBEDDED}y") == "x***y"  # 4+ characters: inside words too
    assert redact_text(f"login {SHORT} failed, pin={SHORT};") == "login *** failed, pin=***;"
    # 1-3 characters: only where they stand alone
    assert redact_text(f"{SHORT}0 a{SHORT} {SHORT}x") == f"{SHORT}0 a{SHORT} {SHORT}x"
    for words in ('auths["r.io"].password: must be a string', "token: unexpected status",
                  "secret=none; passwd must be set", "Authorization required"):
        assert redact_text(words) == words


def test_overlapping_values_are_masked_whole():
    redaction.register("abcdef", "cdefgh", "xyz")
    assert redact_text("1abcdefgh2") == "1***2"
    assert redact_text("abcdef xyz-xyz") == "*** ***-***"


def test_common_encodings_are_masked():
    password = 'p@ss w/"rd\\é'
    redaction.register_login("alice", password)
    basic = b64(f"alice:{password}")
    assert redact_text(f"Authorization: Basic {basic}") == "Authorization: Basic ***"
    assert redact_text("https://proxy/?p=p%40ss%20w%2F%22rd%5C%C3%A9&x=1") \
        == "https://proxy/?p=***&x=1"
    assert redact_text("form p%40ss+w%2F%22rd%5C%C3%A9") == "form ***"
    assert redact_text(json.dumps({"k": password})) == '{"k": "***"}'
    assert redact_text(json.dumps({"k": password}, ensure_ascii=False)) == '{"k": "***"}'
    assert redact_text(repr([password, "it's"])) == "['***', \"it's\"]"


def test_blank_values_are_ignored():
    redaction.register("", "   ", None)
    assert redaction.known_count() == 0
    assert redact_text("a   b") == "a   b"


def test_the_newest_values_are_kept():
    redaction.register("first-secret")
    for i in range(redaction.MAX_VALUES - 1):
        redaction.register(f"value-{i:05d}")
    redaction.register("first-secret")  # learned again: now the newest
    redaction.register("one-more")
    assert redaction.known_count() == redaction.MAX_VALUES
    assert redact_text("first-secret value-00000 value-00001") == "*** value-00000 ***"


def test_registration_from_threads_while_redacting():
    errors: list[BaseException] = []
    stop = threading.Event()

    def redact_loop():
        while not stop.is_set():
            try:
                redact_text("tok-0-0 and tok-3-99")
            except BaseException as exc:  # any failure fails the test
                errors.append(exc)

    reader = threading.Thread(target=redact_loop)
    reader.start()
    writers = [threading.Thread(target=lambda n=n: [redaction.register(f"tok-{n}-{i}")
                                                      for i in range(100)])
               for n in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert not errors
    assert redact_text(" ".join(f"tok-{n}-{i}" for n in range(4) for i in range(100))) \
        == " ".join(["***"] * 400)


def test_environment_secrets_and_proxy_passwords():
    redaction.register_environment({
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "AWS_SESSION_TOKEN": "IQoJb3JpZ2lu",
        "AWS_REGION": "us-east-1", "HTTPS_PROXY": "http://proxyuser:s%40fe1@proxy:3128"})
    text = ("key wJalrXUtnFEMI/K7MDENG token IQoJb3JpZ2lu via "
            "http://proxyuser:s%40fe1@proxy:3128 (s@fe1) in us-east-1")
    assert redact_text(text) == "key *** token *** via http://proxyuser:***@proxy:3128 (***) " \
                                "in us-east-1"


# ----------------------------------------------------------------------------- sources


def test_docker_config_values_become_known_even_when_the_file_is_rejected():
    DockerConfigKeyring.from_json(json.dumps({"auths": {
        "a.io": {"auth": b64(f"alice:{NUMERIC}")},
        "b.io": {"username": "bob", "password": SHORT},
        "c.io": {"identitytoken": "idtok-" + EMBEDDED}}}), "config.json")
    text = f"{b64('alice:' + NUMERIC)} {NUMERIC} {SHORT} idtok-{EMBEDDED} alice bob"
    assert redact_text(text) == "*** *** *** *** alice bob"
    with pytest.raises(AuthSourceError) as info:
        DockerConfigKeyring.from_json(json.dumps({"auths": {"d.io": {"auth": "Zm9v%7"}}}),
                                      "config.json")
    assert str(info.value) == 'config.json: auths["d.io"].auth: not valid base64'
    assert redact_text("echo Zm9v%7") == "echo ***"


async def test_bearer_tokens_from_a_token_service_become_known(bearer_registry, image_pusher,
                                                              auth_credentials):
    from nodeagent.containerd.model import AuthConfig
    from nodeagent.registry.endpoints import registry_endpoints
    from nodeagent.registry.session import RegistrySession, Request

    image = image_pusher("redaction/token", [4 << 10], registry=bearer_registry,
                         credentials=auth_credentials)
    service = bearer_registry.token_server
    issued: list[str] = []
    issue = service.issue

    def recording_issue(*args, **kwargs):
        answer = issue(*args, **kwargs)
        issued.append(answer["token"])
        return answer

    service.issue = recording_issue
    try:
        ref = parse_reference(image.ref)
        (endpoint,) = registry_endpoints(ref.registry, None)
        auth = AuthConfig(username=auth_credentials.username, password=auth_credentials.password)
        async with RegistrySession() as session:
            url = endpoint.url(ref.repository, "manifests", ref.tag, ref.registry)
            await session.read(endpoint, url, Request(f'image "{ref}"', ref.repository, auth),
                               {"Accept": "application/vnd.oci.image.manifest.v1+json"})
    finally:
        del service.issue
    assert issued
    assert redact_text(f"Authorization: Bearer {issued[-1]}") == "Authorization: Bearer ***"
    assert redact_text(b64(f"{auth_credentials.username}:{auth_credentials.password}")) == "***"


async def test_credential_headers_from_hosts_toml_become_known(registry, image_pusher):
    import dataclasses

    from nodeagent.registry.endpoints import registry_endpoints
    from nodeagent.registry.session import RegistrySession, Request

    image = image_pusher("redaction/header", [4 << 10])
    ref = parse_reference(image.ref)
    (endpoint,) = registry_endpoints(ref.registry, None)
    endpoint = dataclasses.replace(endpoint, headers=(
        ("Authorization", "Bearer hdr-tok-42"), ("X-Api-Key", "k3y"), ("X-Trace", "t-1234")))
    async with RegistrySession() as session:
        url = endpoint.url(ref.repository, "manifests", ref.tag, ref.registry)
        await session.read(endpoint, url, Request(f'image "{ref}"', ref.repository),
                           {"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert redact_text("sent Bearer hdr-tok-42, key k3y, trace t-1234") \
        == "sent ***, key ***, trace t-1234"


def test_s3_credentials_from_the_chain_become_known(tmp_path, monkeypatch):
    from nodeagent.models.s3 import make_client

    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\n"
                           "aws_secret_access_key = Ch41nS3cretFromFile\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    make_client(4, region="us-east-1", endpoint_url="http://127.0.0.1:9")
    assert redact_text("signed with Ch41nS3cretFromFile") == "signed with ***"


# ----------------------------------------------------------------------------- Events, conditions


async def test_events_and_node_conditions_do_not_carry_a_pull_secret(monkeypatch):
    from nodeagent.agent.condition import CONDITION_TYPE
    from nodeagent.api.hotimageset import SecretRef
    from nodeagent.kube.client import load_config, make_client
    from nodeagent.kube.events import EventRecorder
    from nodeagent.kube.nodestatus import Condition, NodeConditionReporter
    from nodeagent.kube.secrets import PullSecrets

    config = {"auths": {"reg.example.com": {"username": "u", "password": NUMERIC}}}
    with KubeApiDouble() as api:
        api.create("nodes", {"metadata": {"name": "n1", "labels": {}}, "spec": {},
                             "status": {"conditions": []}})
        api.create("secrets", {"metadata": {"name": "reg", "namespace": "ml"},
                               "type": "kubernetes.io/dockerconfigjson",
                               "data": {".dockerconfigjson": b64(json.dumps(config))}})
        client = make_client(load_config(server=api.url))
        try:
            await PullSecrets(client)([SecretRef("ml", "reg")])
            # a registry that echoes what it was sent, as some error pages do
            echoed = f"reg.example.com/app:1: HTTP 401: user u password {NUMERIC} refused"
            recorder = EventRecorder(client, "n1")
            recorder.emit("Warning", "ImagePullFailed", echoed, key="app")
            await recorder.flush()
            reporter = NodeConditionReporter(client, "n1", CONDITION_TYPE, min_interval_s=0)
            assert await reporter.report(Condition("False", "PullFailed", echoed))
        finally:
            await client.close()
        (event,) = api.list("events", namespace="default")
        (condition,) = api.get("nodes", "n1")["status"]["conditions"]
    shown = "reg.example.com/app:1: HTTP 401: user u password *** refused"
    assert event["message"] == shown
    assert condition["message"] == shown


# ----------------------------------------------------------------------------- the CLI


def nodeagent(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", "--log-format", "json", *args],
                          capture_output=True, text=True, timeout=timeout)


def docker_config(path, auths):
    path.write_text(json.dumps({"auths": auths}))
    return path


def test_config_error_keeps_its_words(tmp_path):
    """The audit's case: a validation message naming the password field is not masked."""
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("set", ["r.io/a:1"]))
    config = docker_config(tmp_path / "config.json", {"r.io": {"password": 5}})
    run = nodeagent("prewarm", "-f", str(hot), "--docker-config", str(config),
                    "--containerd-address", str(tmp_path / "none.sock"))
    assert run.returncode != 0
    assert f'nodeagent: error: {config}: auths["r.io"].password: must be a string' \
        in run.stderr


FAILING_PLUGIN = """#!{python}
import os, sys
sys.stdin.read()
sys.stderr.write("aws: key {numeric} ({password}) token={embedded}; pin {short}; "
                 "password: must be set; sts {never_seen}\\n")
sys.exit(1)
"""


def test_failing_plugin_stderr_shows_its_words_not_its_secrets(tmp_path, containerd):
    """Known values (a docker config password), the plugin's env values (short, numeric)
    and long opaque strings are masked; the plugin's own words come through."""
    never_seen = "ASIAQ7EXAMPLE/9sK2mQpLx0vR4tY8uW3zN6bC1dF5"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "failing-provider"
    plugin.write_text(FAILING_PLUGIN.format(
        python=sys.executable, numeric=NUMERIC, password="hunter2", embedded=EMBEDDED,
        short=SHORT, never_seen=never_seen))
    plugin.chmod(0o755)
    provider_config = tmp_path / "credential-provider.json"
    provider_config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{"name": "failing-provider", "matchImages": ["registry.invalid"],
                       "defaultCacheDuration": "1m",
                       "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                       "env": [{"name": "AWS_KEY", "value": NUMERIC},
                               {"name": "AWS_PASSWORD", "value": "hunter2"},
                               {"name": "PIN", "value": SHORT}]}]}))
    config = docker_config(tmp_path / "config.json",
                           {"other.io": {"username": "o", "password": EMBEDDED}})
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("private", ["registry.invalid/app:1"]))
    run = nodeagent("prewarm", "-f", str(hot), "--docker-config", str(config),
                    "--credential-provider-config", str(provider_config),
                    "--credential-provider-bin-dir", str(bin_dir),
                    "--containerd-address", containerd.address)
    seen = run.stdout + run.stderr
    assert run.returncode != 0
    assert ("exit status 1; stderr: aws: key *** (***) token=***; pin ***; "
            "password: must be set; sts ***") in seen, seen
    for secret in (NUMERIC, "hunter2", EMBEDDED, never_seen):
        assert secret not in seen
    assert f" {SHORT}" not in seen


def test_cri_pull_with_wrong_numeric_password_shows_containerd_text_not_the_password(
        tmp_path, containerd, bearer_registry, image_pusher, auth_credentials):
    """containerd's own words ("failed to fetch oauth token: unexpected status") come
    through whole; the password and its base64 login appear nowhere, /metrics included."""
    image = image_pusher("redaction/bearer", [64 << 10], registry=bearer_registry,
                         credentials=auth_credentials)
    login = b64(f"{auth_credentials.username}:{NUMERIC}")
    config = docker_config(tmp_path / "config.json",
                           {parse_reference(image.ref).registry: {"auth": login}})
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("private", [image.ref]))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", "prewarm", "-f",
         str(hot), "--watch-file", "--docker-config", str(config), "--pull-path", "cri",
         "--metrics-port", str(port), "--containerd-address", containerd.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AWS_SECRET_ACCESS_KEY": NUMERIC + "-aws"})
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
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert ("containerd said: failed to pull and unpack image" in err
            and "failed to authorize: failed to fetch oauth token: unexpected status: "
                "401 Unauthorized" in err), err
    assert f"failed   {image.ref}" in out
    for text in (out, err, body):
        assert NUMERIC not in text and login not in text


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
