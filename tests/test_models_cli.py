"""`nodeagent models ls|prewarm|gc` as a user runs them (subprocesses): HotModelSet files
with S3 models (moto in server mode behind the throttling proxy, real boto3 over HTTP)
and OCI artifacts (the real registry)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest
from moto import settings as moto_settings
from support.models_fixtures import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    aws_env,
    data,
    moto,
    proxy,
    s3,
)

from nodeagent.sandbox.artifacts import push_artifact


def nodeagent(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", "--log-format", "json",
                           *args], capture_output=True, text=True, timeout=timeout)


def model_list(path: Path, name: str, models: list[dict], selector: str = "") -> Path:
    doc = {"apiVersion": "nodeagent.io/v1alpha1", "kind": "HotModelSet",
           "metadata": {"name": name}, "spec": {"models": models}}
    if selector:
        key, value = selector.split("=")
        doc["spec"]["nodeSelector"] = {"matchLabels": {key: value}}
    path.write_text(json.dumps(doc))
    return path


def log_events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.fixture
def sources(s3, registry) -> dict[str, str]:
    for key, body in {"llm/config.json": b"{}", "llm/weights/a.bin": data(300_000, 1),
                      "small/only.txt": b"tiny"}.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    art = push_artifact(registry.host, "models/bert", "v1", {"vocab.txt": b"a b c",
                                                             "model.bin": data(5000, 2)})
    return {"llm": f"s3://{BUCKET}/llm/", "small": f"s3://{BUCKET}/small/only.txt",
            "bert": f"oci://{art.ref}"}


def test_prewarm_once_then_ls_then_gc(sources, tmp_path):
    cache = tmp_path / "cache"
    listed = model_list(tmp_path / "models.yaml", "serving", [
        {"name": "llm", "source": sources["llm"], "priority": 5, "required": True},
        {"name": "bert", "source": sources["bert"]}])
    run = nodeagent("models", "prewarm", "-f", str(listed), "--once", "--cache-dir", str(cache))
    assert run.returncode == 0, run.stderr
    assert f"models: 2/2 present in {cache}" in run.stdout
    assert "updated  llm" in run.stdout and "updated  bert" in run.stdout
    events = log_events(run.stderr)  # not a terminal: JSON log lines
    assert {e["model"] for e in events if e["msg"] == "model present"} == {"llm", "bert"}
    assert (cache / "llm" / "weights" / "a.bin").read_bytes() == data(300_000, 1)

    again = nodeagent("models", "prewarm", "-f", str(listed), "--cache-dir", str(cache),
                      "-o", "json")
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert [(m["name"], m["state"]) for m in out["models"]] == [("llm", "present"),
                                                                ("bert", "present")]

    # A third model outside the list, and one of the listed models held open by "a pod".
    other = model_list(tmp_path / "other.yaml", "other",
                       [{"name": "small", "source": sources["small"]}])
    assert nodeagent("models", "prewarm", "-f", str(other), "--cache-dir",
                     str(cache)).returncode == 0
    with open(cache / "bert" / "model.bin", "rb"):
        ls = nodeagent("models", "ls", "-f", str(listed), "--cache-dir", str(cache),
                       "-o", "json")
        assert ls.returncode == 0, ls.stderr
        rows = {r["name"]: r for r in json.loads(ls.stdout)["models"]}
        assert set(rows) == {"llm", "bert", "small"}
        assert rows["llm"]["source"] == sources["llm"] and rows["llm"]["required"]
        assert rows["llm"]["sizeBytes"] == 300_002 and rows["llm"]["verified"] == "yes"
        assert rows["bert"]["verification"] == {"full": 2}
        assert rows["bert"]["inUse"] and "open file of process" in rows["bert"]["inUseBy"]
        assert (rows["llm"]["listed"], rows["small"]["listed"]) == (True, False)
        table = nodeagent("models", "ls", "--cache-dir", str(cache)).stdout.splitlines()
        assert table[0].split() == ["NAME", "SIZE", "VERIFIED", "IN-USE", "LISTED", "SOURCE"]

        # gc with an empty list: "small" goes, "bert" stays (in use), nothing listed
        dry = nodeagent("models", "gc", "--no-list", "--dry-run", "--cache-dir", str(cache))
        assert dry.returncode == 0, dry.stderr
        assert "would evict small" in " ".join(dry.stdout.split())
        assert (cache / "small").is_dir()
        gc = nodeagent("models", "gc", "-f", str(listed), "--cache-dir", str(cache))
    assert gc.returncode == 0, gc.stderr
    text = " ".join(gc.stdout.split())
    assert "evicted small (4 B, not listed)" in text
    assert "kept llm (listed)" in text and "kept bert (listed)" in text
    assert "evicted 1 models, 4 B" in text
    assert not (cache / "small").exists() and not (cache / "small.manifest.json").exists()
    gc_all = nodeagent("models", "gc", "--no-list", "-o", "json", "--cache-dir", str(cache))
    assert {m["name"] for m in json.loads(gc_all.stdout)["evicted"]} == {"llm", "bert"}


def test_gc_keeps_a_model_in_use(sources, tmp_path):
    cache = tmp_path / "cache"
    listed = model_list(tmp_path / "m.yaml", "s", [{"name": "small",
                                                    "source": sources["small"]}])
    assert nodeagent("models", "prewarm", "-f", str(listed), "--cache-dir",
                     str(cache)).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(60)",
                               str(cache / "small" / "only.txt")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        gc = nodeagent("models", "gc", "--no-list", "--cache-dir", str(cache), "-o", "json")
        out = json.loads(gc.stdout)
        assert out["evicted"] == []
        [kept] = out["keptInUse"]
        assert kept["name"] == "small" and f"process {holder.pid}" in kept["why"]
        assert (cache / "small" / "only.txt").exists()
    finally:
        holder.kill()
        holder.wait()


def test_failures_exit_1_with_a_summary(sources, tmp_path):
    listed = model_list(tmp_path / "m.yaml", "s", [
        {"name": "small", "source": sources["small"]},
        {"name": "gone", "source": f"s3://{BUCKET}/nothing-here/"}])
    run = nodeagent("models", "prewarm", "-f", str(listed), "--cache-dir",
                    str(tmp_path / "cache"))
    assert run.returncode == 1
    assert "models: 1/2 present" in run.stdout
    assert f"failed   gone (not_found): no objects below s3://{BUCKET}/nothing-here/" \
        in run.stdout
    assert "Traceback" not in run.stderr


def test_invalid_list_fails_before_anything_naming_file_set_field_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        apiVersion: nodeagent.io/v1alpha1
        kind: HotModelSet
        metadata: {name: serving}
        spec:
          models:
            - {name: llama, source: "s3://models/llama/"}
            - {name: bert, source: "http://example.com/bert"}
        """))
    cache = tmp_path / "cache"
    run = nodeagent("models", "prewarm", "-f", str(bad), "--cache-dir", str(cache))
    assert run.returncode != 0
    assert (f'{bad} document 1 (HotModelSet "serving"): spec.models[1].source: Invalid value: '
            '"http://example.com/bert": is not supported') in run.stderr
    assert "nothing was downloaded" in run.stderr
    assert "Traceback" not in run.stderr and not cache.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--concurrency", "0"], "argument --concurrency: 0: must be within [1, 128]"),
    (["--high-water", "150"], "argument --high-water: 150: must be within (0, 100]"),
    (["--high-water", "nan"], "argument --high-water: nan: must be a finite number"),
    (["--cache-dir", "relative/dir"], "--cache-dir 'relative/dir': must be an absolute path"),
    (["--cache-dir", "/etc/models"], "refusing a system directory"),
    (["--hosts-dir", "/nonexistent"], "--hosts-dir /nonexistent: not a directory"),
    (["--metrics-port", "70000"], "argument --metrics-port: 70000: not a TCP port"),
    (["--docker-config", "/nonexistent.json"],
     "registry credentials /nonexistent.json: cannot open: No such file"),
    (["--node-labels", "novalue"], "--node-labels: 'novalue' is not key=value"),
    (["--all-sets", "--node-labels", "a=b"], "--all-sets and --node-labels exclude"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
    listed = model_list(tmp_path / "m.yaml", "s", [{"name": "a", "source": "s3://models/a/"}])
    cache = ["--cache-dir", str(tmp_path / "cache")] if "--cache-dir" not in args else []
    run = nodeagent("models", "prewarm", "-f", str(listed), *cache, *args)
    assert run.returncode in (1, 2), run.stderr  # 2: usage; 1: an unreadable file
    [line] = [line for line in run.stderr.splitlines()
              if line.startswith(("nodeagent: error", "nodeagent models prewarm: error"))]
    assert message in line
    assert "Traceback" not in run.stderr and not (tmp_path / "cache").exists()


def test_gc_without_a_list_is_refused(tmp_path):
    run = nodeagent("models", "gc", "--cache-dir", str(tmp_path / "cache"))
    assert run.returncode == 2
    assert "models gc needs the models to keep: -f FILE" in run.stderr


def test_node_labels_and_all_sets_pick_the_sets(sources, tmp_path):
    listed = model_list(tmp_path / "m.yaml", "gpu", [{"name": "small",
                                                      "source": sources["small"]}],
                        selector="pool=gpu")
    cache = tmp_path / "cache"
    none = nodeagent("models", "prewarm", "-f", str(listed), "--cache-dir", str(cache))
    assert none.returncode == 0 and "models: 0/0 present" in none.stdout
    assert any(e["msg"].startswith("sets with a nodeSelector skipped")
               for e in log_events(none.stderr))
    cpu = nodeagent("models", "prewarm", "-f", str(listed), "--cache-dir", str(cache),
                    "--node-labels", "pool=cpu")
    assert "models: 0/0 present" in cpu.stdout
    gpu = nodeagent("models", "prewarm", "-f", str(listed), "--cache-dir", str(cache),
                    "--node-labels", "pool=gpu")
    assert gpu.returncode == 0 and "models: 1/1 present" in gpu.stdout
    every = nodeagent("models", "prewarm", "-f", str(listed), "--cache-dir", str(cache),
                      "--all-sets", "-o", "json")
    assert json.loads(every.stdout)["models"][0]["state"] == "present"


def test_watch_file_follows_edits_and_stops_cleanly(sources, tmp_path):
    cache = tmp_path / "cache"
    listed = model_list(tmp_path / "m.yaml", "s", [{"name": "small",
                                                    "source": sources["small"]}])
    proc = subprocess.Popen([sys.executable, "-m", "nodeagent.cli", "--log-format", "json",
                             "models", "prewarm", "-f", str(listed), "--watch-file",
                             "--cache-dir", str(cache)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (cache / "small.manifest.json").exists(), "first model")
        time.sleep(0.1)
        listed.write_text("not: [valid")  # a broken edit keeps the previous list
        time.sleep(2.5)
        model_list(listed, "s", [{"name": "small", "source": sources["small"]},
                                 {"name": "llm", "source": sources["llm"]}])
        _wait_for(lambda: (cache / "llm.manifest.json").exists(), "the added model")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "models: 2/2 present when stopped" in out
    assert any(e["msg"] == "model list changed but is invalid; keeping the previous list"
               for e in log_events(err))


def _wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("wrong", ["unknown-key", "no-permission"])
def test_wrong_credentials_fail_clearly_and_never_show_a_secret(monkeypatch, moto, s3,
                                                                tmp_path, wrong):
    """Access denied (moto enforcing IAM): exit 1 naming the model and the permission, and
    neither the secret key nor the session token anywhere in stdout or stderr, in text,
    JSON, live progress or debug logs."""
    s3.put_object(Bucket=BUCKET, Key="llm/a.bin", Body=b"a")
    token = ""
    if wrong == "no-permission":
        iam = boto3.client("iam", endpoint_url=moto.url, region_name="us-east-1",
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        iam.create_user(UserName="no-s3")
        key = iam.create_access_key(UserName="no-s3")["AccessKey"]
        key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    else:
        key_id, secret = "AKIAWRONGWRONGWRONG1", "wR0ngS3cretKeyForTheCliTest/0123456789+abcd"
        token = "IQoJb3JpZ2luX2VjWRONGSESSIONTOKEN" + "t0k3n" * 20
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # enforce IAM
    listed = model_list(tmp_path / "models.yaml", "serving",
                        [{"name": "llm", "source": f"s3://{BUCKET}/llm/"}])
    base = ["models", "prewarm", "-f", str(listed), "--once", "--cache-dir",
            str(tmp_path / "cache")]
    for argv in (base, [*base, "-o", "json", "--progress", "live"],
                 ["--log-level", "debug", *base]):
        run = nodeagent(*argv)
        assert run.returncode == 1, run.stderr
        shown = run.stdout + run.stderr
        assert "llm" in run.stdout and "access_denied" in run.stdout
        assert "access denied by S3" in run.stdout and "s3:ListBucket" in run.stdout
        assert "Traceback" not in shown
        for hidden in (secret, token):
            assert not hidden or hidden not in shown, (argv, hidden)
