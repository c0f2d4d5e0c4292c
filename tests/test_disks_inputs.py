"""What `nodeagent disks plan|setup` refuses to do with the paths it is given, and the exit
codes it gives: system trees, overlapping mount and bind targets, bad units dirs, flags
that contradict each other, and a plan that says setup would refuse.

The CLI runs against a fake node (tests/support/disks_fakes.py) with an instance-store
disk, so a flag that slipped through would be planned as a real copy and bind. Its host
refuses to run any command: a refused input must stop before anything is examined or
touched.
"""

from __future__ import annotations

import json

import pytest
from support.disks_fakes import EBS, FakeNode

from nodeagent.cli import main
from nodeagent.disks import host as disks_host
from nodeagent.disks import steps as st
from nodeagent.disks.commands import setup_options
from nodeagent.disks.discover import gather
from nodeagent.disks.options import Options
from nodeagent.disks.plan import make_plan
from nodeagent.errors import UsageError

USAGE, REFUSED = 2, 3


@pytest.fixture
def node(tmp_path):
    """EBS root on nvme0n1, one blank instance-store disk: setup would build a volume."""
    n = FakeNode(tmp_path)
    n.add_disk("nvme0n1", model=EBS, serial="vol0123456789abcdef0", partitions=1)
    n.mountinfo.clear()
    n.mount(n.devnum("nvme0n1p1"), "/", fstype="xfs", source="/dev/nvme0n1p1")
    n.add_disk("nvme1n1", serial="AWS1")
    return n


@pytest.fixture
def cli(node, monkeypatch, capsys):
    """Run `nodeagent disks ...` on the fake node; returns (exit code, stdout, stderr) and
    records whether the host was even looked at."""
    looked: list[str] = []

    def no_commands(argv, **_kw):
        raise AssertionError(f"a command ran on the host: {argv}")

    def fake_host():
        looked.append("host")
        host = node.host()
        host.run = no_commands  # type: ignore[method-assign]
        return host

    monkeypatch.setattr(disks_host, "detect_host", fake_host)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["disks", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    run.looked = looked  # type: ignore[attr-defined]
    return run


def refused_before_looking(cli, args: list[str], *needles: str) -> str:
    for action in ("plan", "setup"):
        code, out, err = cli(action, *args)
        assert code == USAGE, (action, out, err)
        for needle in needles:
            assert needle in err, (action, err)
        assert "Traceback" not in err
    assert cli.looked == [], "a refused input must stop before the host is examined"
    return err


# ------------------------------------------------------------------ system trees


@pytest.mark.parametrize("path, tree", [
    ("/proc", "/proc"), ("/sys/kernel", "/sys"), ("/dev/shm", "/dev"), ("/boot", "/boot"),
    ("/etc/kubernetes", "/etc"), ("/usr/local", "/usr"), ("/run/containerd", "/run"),
    ("/lib/modules", "/lib"), ("/var/lib/../../proc/sys", "/proc"), ("//sys", "/sys"),
])
def test_bind_in_a_kernel_or_system_tree_is_refused(cli, path, tree):
    refused_before_looking(cli, ["--bind", path], f"--bind {path}: ",
                           f"in {tree}, a kernel or operating-system tree")


@pytest.mark.parametrize("path", ["/", "/var", "/var/lib", "/var/log", "/var/lib/", "/mnt",
                                  "/home", "/tmp"])
def test_bind_of_a_top_system_directory_itself_is_refused(cli, path):
    refused_before_looking(cli, ["--bind", path], f"--bind {path}: ", "system directory")


def test_dirs_below_var_lib_and_var_log_stay_allowed(node):
    binds = ("/var/lib/containerd", "/var/lib/kubelet", "/var/log/pods",
             "/var/lib/soci-snapshotter-grpc", "/opt/models")
    opts = Options(binds=binds, binds_given=True)
    plan = make_plan(gather(node.host(), opts, prefer_pyudev=False), opts)
    assert plan.refusals == []
    assert [s.path for s in plan.steps if isinstance(s, st.MoveDir)] == list(binds)


# ------------------------------------------------------------------ overlapping targets


def test_mount_path_inside_a_bound_directory_is_refused(cli):
    refused_before_looking(
        cli, ["--mount-path", "/var/lib/containerd/vol", "--bind", "/var/lib/containerd"],
        "--mount-path /var/lib/containerd/vol: lies inside --bind /var/lib/containerd")


def test_mount_path_inside_a_default_bind_is_refused(cli):
    refused_before_looking(cli, ["--mount-path", "/var/lib/kubelet/disks"],
                           "--mount-path /var/lib/kubelet/disks: lies inside --bind "
                           "/var/lib/kubelet (a default bind)")


@pytest.mark.parametrize("bind", ["/mnt/k8s-disks/0", "/mnt/k8s-disks", "/mnt/k8s-disks/0/x"])
def test_bind_onto_or_inside_the_volume_mount_is_refused(cli, bind):
    refused_before_looking(cli, ["--bind", bind],
                           f"--bind {bind}: is or lies inside --mount-path /mnt/k8s-disks")


def test_bind_containing_the_volume_mount_is_refused(cli):
    refused_before_looking(cli, ["--mount-path", "/srv/disks/k8s", "--bind", "/srv/disks"],
                           "--mount-path /srv/disks/k8s: lies inside --bind /srv/disks")


def test_nested_binds_are_refused(cli):
    refused_before_looking(cli, ["--bind", "/var/lib/a", "--bind", "/var/lib/a/b"],
                           "--bind /var/lib/a/b: lies inside --bind /var/lib/a")


def test_the_same_bind_twice_is_refused(cli):
    refused_before_looking(cli, ["--bind", "/var/lib/a", "--bind", "/var/lib/a/"],
                           "--bind /var/lib/a/: given twice")


def test_binds_kept_in_the_same_volume_directory_are_refused(cli):
    # /var/lib/a-b and /var/lib/a/b would both be copied to <volume>/var-lib-a-b.
    refused_before_looking(cli, ["--bind", "/var/lib/a-b", "--bind", "/var/lib/a/b"],
                           "--bind /var/lib/a/b and --bind /var/lib/a-b would both be kept "
                           "in var-lib-a-b on the volume")


@pytest.mark.parametrize("path", ["/etc/disks", "/proc/x", "/usr/local/disks", "/var", "/",
                                  "/mnt"])
def test_mount_path_in_a_system_tree_is_refused(cli, path):
    refused_before_looking(cli, ["--mount-path", path], f"--mount-path {path}: ")


def test_mount_strategy_has_no_binds_to_overlap(node):
    # The default binds are not used by --strategy mount: a mount path below one is fine.
    Options(strategy="mount", mount_path="/var/lib/kubelet/disks")


# ------------------------------------------------------------------ units dir


@pytest.mark.parametrize("path, why", [
    ("etc/systemd/system", "must be an absolute path"),
    ("/proc/1/root/etc", "in /proc, where systemd reads no units"),
    ("/sys/fs", "in /sys, where systemd reads no units"),
    ("/dev/shm/units", "in /dev, where systemd reads no units"),
    ("/var/lib/kubelet/units", "lies inside --bind /var/lib/kubelet"),
    ("/mnt/k8s-disks/units", "lies inside --mount-path /mnt/k8s-disks"),
])
def test_bad_units_dir_is_refused(cli, path, why):
    refused_before_looking(cli, ["--units-dir", path], f"--units-dir {path}: {why}")


def test_runtime_units_dir_is_allowed():
    assert Options(units_dir="/run/systemd/system").units_dir == "/run/systemd/system"


# ------------------------------------------------------------------ flags and exit codes


def test_no_binds_with_bind_is_a_usage_error(cli):
    refused_before_looking(cli, ["--no-binds", "--bind", "/var/lib/x"],
                           "--no-binds and --bind /var/lib/x")
    with pytest.raises(UsageError, match="--no-binds and --bind /var/lib/x"):
        setup_options(["--no-binds", "--bind", "/var/lib/x"])


def test_agent_refuses_the_same_disks_setup_arguments_at_start():
    with pytest.raises(UsageError, match="--bind /proc: in /proc, a kernel or operating"):
        setup_options(["--bind", "/proc"])
    with pytest.raises(UsageError, match="--mount-path /var/lib/containerd/v: lies inside"):
        setup_options(["--mount-path", "/var/lib/containerd/v"])


def test_plan_exits_as_setup_would_when_setup_would_refuse(cli, node):
    node.mkfs("nvme1n1", "ext4", label="userdata")
    code, out, _ = cli("plan")
    assert code == REFUSED
    assert "setup would REFUSE" in out and "carries ext4 label 'userdata'" in out
    code, out, _ = cli("plan", "-o", "json")
    assert code == REFUSED and json.loads(out)["refusals"]
    code, _, err = cli("setup")
    assert code == REFUSED and "disks setup refused, nothing changed" in err
    code, out, _ = cli("plan", "--force", "nvme1n1")
    assert code == 0 and "setup would:" in out


def test_plan_help_states_its_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["disks", "plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit 3 when setup would refuse" in text


# ------------------------------------------------------------------ symlinks on the way


@pytest.mark.parametrize("flag, path, link, to", [
    ("--bind", "/var/lib/containerd", "/var/lib", "/data/lib"),  # a default bind's parent
    ("--mount-path", "/mnt/k8s-disks", "/mnt", "/data/mnt"),
    ("--mount-path", "/mnt/k8s-disks", "/mnt/k8s-disks", "../data/disks"),  # itself
])
def test_a_symlink_on_the_way_to_a_mount_is_refused(cli, node, flag, path, link, to):
    # the kernel records mounts under the real path: a re-run would not find its own
    # mounts and would mount again on top
    node.mkdir("/data/lib/containerd", {"meta.db": b"x"})
    node.mkdir("/data/mnt")
    node.mkdir("/data/disks")
    real = node.root / link.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.symlink_to(to)
    code, out, _ = cli("plan")
    assert code == REFUSED
    assert f"{flag} {path}: {link} is a symlink (to {to})" in out
    assert "give the path without symlinks" in out
    code, _, err = cli("setup")
    assert code == REFUSED and "disks setup refused, nothing changed" in err
    assert (node.root / "data/lib/containerd/meta.db").read_bytes() == b"x"
    assert not list((node.root / "data/mnt").iterdir())


def test_a_symlink_elsewhere_on_the_node_is_no_concern(cli, node):
    (node.root / "var").mkdir(exist_ok=True)
    (node.root / "var/run").symlink_to("../run")  # as on most distributions
    code, out, _ = cli("plan")
    assert code == 0 and "symlink" not in out
