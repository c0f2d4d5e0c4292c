"""What users type or point nodeagent at, as they see the answer: options spelled out in
full, numbers finite and within their documented ranges (flags and environment), ports,
and input files that are regular files under the size cap. Every refusal names the flag,
variable or file, exits non-zero without a traceback, and comes before anything is done."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.prewarm_helpers import hotlist_yaml

from nodeagent import cli
from nodeagent.inputs import MAX_INPUT_FILE_BYTES, Range, listen_port, port

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def nodeagent(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", "--log-format", "json", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def refused(capsys, *argv: str) -> str:
    """stderr of an argv that argparse must refuse (exit 2, before any handler runs)."""
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def model_list(path: Path) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "nodeagent.io/v1alpha1", "kind": "HotModelSet", "metadata": {"name": "s"},
        "spec": {"models": [{"name": "a", "source": "s3://models/a/"}]}}))
    return path


def error_line(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if re.match(r"nodeagent[\w ]*: error:", line)]
    assert "Traceback" not in stderr
    return line


# ---------------------------------------------------------------- no abbreviations


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_command_and_subcommand_refuses_abbreviated_options():
    parsers = dict(_parsers(cli.build_parser()))
    for prog in ("nodeagent", "nodeagent prewarm", "nodeagent models gc", "nodeagent disks plan",
                 "nodeagent disks setup", "nodeagent snapshot create", "nodeagent agent"):
        assert prog in parsers
    assert [prog for prog, p in parsers.items() if p.allow_abbrev] == []


def test_abbreviated_remove_unlisted_is_refused_and_nothing_is_removed(
        tmp_path, containerd, sample_images):
    listed, unlisted = sample_images["python"].ref, sample_images["trainer"].ref
    both, one = tmp_path / "both.yaml", tmp_path / "one.yaml"
    both.write_text(hotlist_yaml("set", [listed, unlisted]))
    one.write_text(hotlist_yaml("set", [listed]))
    first = nodeagent("prewarm", "-f", str(both), "--containerd-address", containerd.address,
                      timeout=300)
    assert first.returncode == 0, first.stderr
    run = nodeagent("prewarm", "-f", str(one), "--remove", "--containerd-address",
                    containerd.address)
    assert run.returncode == 2
    assert "unrecognized arguments: --remove" in error_line(run.stderr)
    assert unlisted in containerd.ctr("images", "ls", "-q").split()


def test_abbreviated_global_options_are_refused(capsys):
    assert "unrecognized arguments: --log-lev=debug" in error_line(
        refused(capsys, "--log-lev=debug", "images"))
    assert "unrecognized arguments: --conc 3" in error_line(
        refused(capsys, "models", "prewarm", "-f", "x", "--conc", "3"))


def test_abbreviated_disks_setup_arguments_of_the_agent_are_refused():
    from nodeagent.disks.commands import setup_options
    from nodeagent.errors import UsageError

    with pytest.raises(UsageError, match="unrecognized arguments: --strat raid0"):
        setup_options(["--strat", "raid0"])


# ---------------------------------------------------------------- numbers

PREWARM, MODELS = ["prewarm", "-f", "x"], ["models", "prewarm", "-f", "x"]
NUMBERS = [
    ([*PREWARM, "--stall-timeout", "nan"], "--stall-timeout: nan: must be a finite"),
    ([*PREWARM, "--stall-timeout", "inf"], "--stall-timeout: inf: must be a finite"),
    ([*PREWARM, "--stall-timeout", "0"], "--stall-timeout: 0: must be within (0, 86400]"),
    ([*PREWARM, "--concurrency", "65"], "--concurrency: 65: must be within [1, 64]"),
    ([*PREWARM, "--max-retries", "-1"], "--max-retries: -1: must be within [0, 100]"),
    ([*PREWARM, "--max-retries", "2.5"], "--max-retries: '2.5' is not a whole number"),
    ([*PREWARM, "--high-water", "nan"], "--high-water: nan: must be a finite"),
    ([*PREWARM, "--high-water", "0"], "--high-water: 0: must be within (0, 100]"),
    ([*PREWARM, "--fetch-chunk-mib", "2048"], "--fetch-chunk-mib: 2048: must be within"),
    ([*PREWARM, "--fetch-connections-per-blob", "0"],
     "--fetch-connections-per-blob: 0: must be within [1, 64]"),
    ([*PREWARM, "--fetch-connections", "1000"],
     "--fetch-connections: 1000: must be within [1, 256]"),
    (["agent", "--heartbeat", "nan"], "--heartbeat: nan: must be a finite number"),
    (["agent", "--status-min-interval", "-1"], "--status-min-interval: -1: must be within"),
    (["agent", "--startup-taint-timeout", "inf"], "--startup-taint-timeout: inf: must be a finite"),
    (["agent", "--rollout-limit", "-1"], "--rollout-limit: -1: must be within [0, 100000]"),
    (["agent", "--lease-duration", "2"], "--lease-duration: 2: must be within [3, 3600]"),
    (["agent", "--models-resync", "5"], "--models-resync: 5: must be within [10, 86400]"),
    (["agent", "--stall-timeout", "nan"], "--stall-timeout: nan: must be a finite number"),
    ([*MODELS, "--concurrency", "129"],
     "--concurrency: 129: must be within [1, 128]"),
    ([*MODELS, "--high-water", "inf"], "--high-water: inf: must be a finite"),
    (["demo", "--bench-mib", "0"], "--bench-mib: 0: must be within [1, 65536]"),
]


@pytest.mark.parametrize(("argv", "message"), NUMBERS, ids=[" ".join(a) for a, _ in NUMBERS])
def test_numbers_out_of_range_or_not_finite_are_refused_naming_the_flag(capsys, argv, message):
    assert f"argument {message}" in error_line(refused(capsys, *argv))


ENVIRONMENT = [
    ("NODEAGENT_STARTUP_TAINT_TIMEOUT", "abc",
     "--startup-taint-timeout: 'NODEAGENT_STARTUP_TAINT_TIMEOUT=abc' is not a number"),
    ("NODEAGENT_METRICS_PORT", "99999", "--metrics-port: NODEAGENT_METRICS_PORT=99999: not a TCP"),
    ("NODEAGENT_ROLLOUT_LIMIT", "-5", "--rollout-limit: NODEAGENT_ROLLOUT_LIMIT=-5: must be"),
    ("NODEAGENT_MODELS_RESYNC", "nan", "--models-resync: NODEAGENT_MODELS_RESYNC=nan: must be a"),
]


@pytest.mark.parametrize(("variable", "value", "message"), ENVIRONMENT,
                         ids=[v for v, _, _ in ENVIRONMENT])
def test_the_agents_environment_is_checked_by_name_and_breaks_no_other_command(
        capsys, monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    assert f"argument {message}" in error_line(refused(capsys, "agent", "--node-name", "n"))
    # Building the parser reads the variable; only the agent's own run checks it.
    with pytest.raises(SystemExit) as info:
        cli.main(["images", "--help"])
    assert info.value.code == 0


def test_a_bad_high_water_variable_is_refused_by_name_before_anything(tmp_path):
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("set", ["nginx:1"]))
    run = nodeagent("prewarm", "-f", str(hot), "--containerd-address", "/nonexistent",
                    NODEAGENT_HIGH_WATER="nan")
    assert run.returncode == 2
    assert "NODEAGENT_HIGH_WATER nan: must be a finite number" in error_line(run.stderr)
    models = model_list(tmp_path / "models.json")
    cache = tmp_path / "cache"
    run = nodeagent("models", "prewarm", "-f", str(models), "--cache-dir", str(cache),
                    NODEAGENT_HIGH_WATER="150")
    assert run.returncode == 2
    assert "NODEAGENT_HIGH_WATER 150.0: must be within (0, 100]" in error_line(run.stderr)
    assert not cache.exists()


def test_range_types_say_their_range():
    assert str(Range(int, 1, 64)) == "1-64"
    assert str(Range(float, 0, 86400, low_open=True)) == "(0, 86400]"
    assert Range(float, 0, 1, low_open=True)("1") == 1.0
    assert port("65535") == 65535 and listen_port("0") == 0
    for bad in ("0", "65536", "-1", "http"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a TCP port"):
            port(bad)


def test_readme_limits_table_has_every_numeric_flag_with_its_range():
    parsers = dict(_parsers(cli.build_parser()))
    section = README.split("## Limits", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    for prog in ("nodeagent prewarm", "nodeagent images", "nodeagent agent",
                 "nodeagent models prewarm", "nodeagent models ls", "nodeagent models gc",
                 "nodeagent demo"):
        command = prog.removeprefix("nodeagent ")
        for action in parsers[prog]._actions:
            if isinstance(action.type, Range):
                text = str(action.type)
            elif action.dest == "metrics_port":
                text = "1-65535, 0: any free port"
            else:
                continue
            flag = action.option_strings[-1]
            assert [row for row in rows if row.startswith(f"| `{flag}` |") and
                    f"`{command}`" in row and row.endswith(f"| {text} |")], (prog, flag, text)


# ---------------------------------------------------------------- ports


@pytest.mark.parametrize("command", [["prewarm", "-f", "x"], ["models", "prewarm", "-f", "x"],
                                     ["agent", "--node-name", "n"]])
def test_a_metrics_port_that_is_no_port_is_refused_naming_the_flag(capsys, command):
    line = error_line(refused(capsys, *command, "--metrics-port", "99999"))
    assert "argument --metrics-port: 99999: not a TCP port (1-65535, or 0 for any free port)" \
        in line


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_metrics_port_in_use_is_a_one_line_error_for_every_command(tmp_path, busy_port):
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("set", ["nginx:1"]))
    models = model_list(tmp_path / "models.json")
    port_ = str(busy_port)
    for argv in (["prewarm", "-f", str(hot), "--containerd-address", "/nonexistent"],
                 ["models", "prewarm", "-f", str(models), "--cache-dir", str(tmp_path / "c")],
                 ["agent", "--node-name", "n", "--server", "http://127.0.0.1:9",
                  "--startup-taint", "", "--no-models", "--containerd-address", "/nonexistent",
                  "--credential-provider-config", str(tmp_path / "absent.json")]):
        run = nodeagent(*argv, "--metrics-port", port_)
        assert run.returncode == 1, (argv, run.stderr)
        assert f"--metrics-port {port_}: address already in use" in error_line(run.stderr)


# ---------------------------------------------------------------- files


def test_a_device_or_fifo_as_hot_list_is_refused_at_once_naming_it(tmp_path):
    fifo = tmp_path / "hot.yaml"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a character device"), (str(fifo), "a FIFO")):
        run = nodeagent("prewarm", "-f", path, "--containerd-address", "/nonexistent",
                        timeout=20)
        assert run.returncode == 1
        line = error_line(run.stderr)
        assert f"invalid hot list: {path}: is {kind}, not a regular file" in line
        assert "nothing was pulled from it" in run.stderr


def test_a_fifo_inside_a_hot_list_directory_is_refused_the_directory_still_read(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "a.yaml").write_text(hotlist_yaml("a", ["nginx:1"]))
    os.mkfifo(lists / "b.yaml")
    run = nodeagent("prewarm", "-f", str(lists), "--containerd-address", "/nonexistent",
                    timeout=20)
    assert run.returncode == 1
    assert f"invalid hot list: {lists}/b.yaml: is a FIFO, not a regular file" in \
        error_line(run.stderr)
    (lists / "b.yaml").unlink()
    run = nodeagent("images", "-f", str(lists), "--containerd-address", "/nonexistent")
    assert "invalid hot list" not in run.stderr  # a directory keeps meaning "its hot lists"
    assert "containerd socket /nonexistent does not exist" in error_line(run.stderr)


def test_a_hot_list_over_the_size_cap_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(MAX_INPUT_FILE_BYTES + 1)  # sparse: costs no disk
    run = nodeagent("models", "prewarm", "-f", str(big), "--cache-dir", str(tmp_path / "c"))
    assert run.returncode == 1
    assert (f"{big}: {MAX_INPUT_FILE_BYTES + 1} bytes is more than the 16 MiB an input file "
            "may have") in error_line(run.stderr)


def test_each_command_says_what_it_did_not_do_because_of_a_bad_list(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("not: [valid")
    run = nodeagent("images", "-f", str(bad), "--containerd-address", "/nonexistent")
    assert run.returncode == 1
    assert "no image was listed; fix and retry" in run.stderr
    assert "pulled" not in run.stderr
    cache = tmp_path / "cache"
    run = nodeagent("models", "ls", "-f", str(bad), "--cache-dir", str(cache))
    assert run.returncode == 1 and "no model was listed; fix and retry" in run.stderr
    run = nodeagent("models", "gc", "-f", str(bad), "--cache-dir", str(cache))
    assert run.returncode == 1 and "nothing was evicted; fix and retry" in run.stderr
    assert "downloaded" not in run.stderr


def test_credential_files_must_be_regular_files(tmp_path):
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("set", ["nginx:1"]))
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    run = nodeagent("prewarm", "-f", str(hot), "--docker-config", str(fifo),
                    "--containerd-address", "/nonexistent", timeout=20)
    assert run.returncode == 1
    assert f"registry credentials {fifo}: is a FIFO, not a regular file" in error_line(run.stderr)
    run = nodeagent("prewarm", "-f", str(hot), "--credential-provider-config", str(fifo),
                    "--containerd-address", "/nonexistent", timeout=20)
    assert run.returncode == 1
    assert f"credential provider config {fifo}: is a FIFO, not a regular file" in \
        error_line(run.stderr)


# ---------------------------------------------------------------- exit codes


def test_flags_that_would_be_dropped_are_refused_not_ignored(tmp_path, capsys):
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("gpu", ["nginx:1"], selector="gpu: 'true'"))
    assert cli.main(["prewarm", "-f", str(hot), "--all-sets", "--node-labels", "gpu=false",
                     "--containerd-address", "/nonexistent"]) == 2
    assert "--all-sets and --node-labels exclude each other" in error_line(
        capsys.readouterr().err)
    cache = tmp_path / "cache"
    for argv in (["models", "ls"], ["models", "gc", "--no-list"]):
        assert cli.main([*argv, "--node-labels", "a=b", "--cache-dir", str(cache)]) == 2
        assert "--node-labels needs -f" in error_line(capsys.readouterr().err)
    assert not cache.exists()
