"""Runs INSIDE the Debian systemd VM as nodeagent-test.service (after containerd.service):
acts for the boot's phase and records what it sees to /var/lib/nodeagent-test/<phase>.json,
then powers the VM off. Standard library only (the image's python3).

Phases (from /opt/nodeagent-test/phase):
- first: containerd runs on the root volume with a pre-loaded image (as on an AMI).
  `nodeagent disks setup` is run from another mount namespace (`unshare -m`, like the
  DaemonSet's container): refused while containerd runs, then done with
  --restart-services. A second image is imported on the new volume.
- reboot: nothing is run by hand: the mount units written by setup must have mounted the
  volume and the binds before containerd started. Then the boot service is enabled.
- stopstart: blank instance store; nodeagent-disks.service must re-create everything
  before containerd starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

OUT = Path("/var/lib/nodeagent-test")
ARGS = ["--instance-store-model", "QEMU.NVMe.Ctrl"]
UNITS = ["nodeagent-disks.service", "mnt-k8s\\x2ddisks-0.mount", "var-lib-containerd.mount",
         "var-lib-kubelet.mount", "var-log-pods.mount", "containerd.service"]


def sh(*argv: str, timeout: float = 900) -> dict:
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr,
            "seconds": round(time.monotonic() - start, 2)}


def nodeagent_in_other_namespace(*args: str) -> dict:
    res = sh("unshare", "--mount", "--propagation", "private", "/usr/local/bin/nodeagent",
             "--log-format", "json", "disks", *args, *ARGS)
    if res["rc"] in (0, 3) and "-o" in args and res["out"].strip():  # 3: plan's refusal
        res["json"] = json.loads(res["out"])
    return res


def wait_active(unit: str, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = sh("systemctl", "is-active", unit)["out"].strip() == "active"
        if active and (unit != "containerd.service" or sh("ctr", "version")["rc"] == 0):
            return True
        time.sleep(1)
    return False


def blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def oci_archive(name: str, payload: bytes) -> Path:
    """A one-layer OCI image archive, as `ctr images import` reads it."""
    layer_io = io.BytesIO()
    with tarfile.open(fileobj=layer_io, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = layer_io.getvalue()
    layer_digest, layer_size = blob(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    config_digest, config_size = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]}).encode()
    manifest_digest, manifest_size = blob(manifest)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]})
    path = Path(f"/tmp/{hashlib.sha256(name.encode()).hexdigest()[:8]}.tar")
    with tarfile.open(path, "w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index.encode(),
                 f"blobs/sha256/{layer_digest[7:]}": layer,
                 f"blobs/sha256/{config_digest[7:]}": config,
                 f"blobs/sha256/{manifest_digest[7:]}": manifest}
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def import_image(name: str) -> dict:
    return sh("ctr", "-n", "k8s.io", "images", "import", str(oci_archive(name, name.encode())))


def images() -> list[str]:
    return sorted(sh("ctr", "-n", "k8s.io", "images", "ls", "-q")["out"].split())


def findmnt(path: str) -> str:
    return sh("findmnt", "-n", "-o", "SOURCE,FSTYPE", "--mountpoint", path)["out"].strip()


def unit_times() -> dict:
    props = "ActiveState,Result,InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic"
    found = {}
    for unit in UNITS:
        out = sh("systemctl", "show", "-p", props, unit)["out"]
        found[unit] = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return found


def observe(r: dict) -> None:
    r["containerd_active"] = wait_active("containerd.service")
    r["containerd_start"] = Path("/run/nodeagent-test/containerd-start").read_text() \
        if Path("/run/nodeagent-test/containerd-start").exists() else ""
    r["images"] = images()
    r["mounts"] = {p: findmnt(p) for p in ("/mnt/k8s-disks/0", "/var/lib/containerd",
                                           "/var/lib/kubelet", "/var/log/pods")}
    r["units"] = unit_times()
    r["mdstat"] = Path("/proc/mdstat").read_text() if Path("/proc/mdstat").exists() else ""
    r["md_uuid_fs"] = sh("blkid", "-p", "-o", "value", "-s", "UUID", "/dev/md/kubernetes")[
        "out"].strip()
    r["disks_journal"] = sh("journalctl", "-b", "-u", "nodeagent-disks.service", "-o",
                            "cat")["out"][-6000:]
    r["requires"] = sorted(os.listdir("/etc/systemd/system/containerd.service.requires")) \
        if os.path.isdir("/etc/systemd/system/containerd.service.requires") else []
    r["failed_units"] = sh("systemctl", "--failed", "--no-legend", "--plain")["out"]
    r["uptime"] = float(Path("/proc/uptime").read_text().split()[0])


def phase_first(r: dict) -> None:
    r["containerd_active_before"] = wait_active("containerd.service")
    r["import_preloaded"] = import_image("docker.io/library/preloaded:v1")
    r["images_before"] = images()
    r["plan"] = nodeagent_in_other_namespace("plan", "-o", "json")
    r["refused"] = nodeagent_in_other_namespace("setup", "-o", "json")
    r["setup"] = nodeagent_in_other_namespace("setup", "--restart-services", "-o", "json")
    r["rerun"] = nodeagent_in_other_namespace("setup", "-o", "json")
    observe(r)
    r["import_after"] = import_image("docker.io/library/after-setup:v1")
    r["images_end"] = images()


def phase_reboot(r: dict) -> None:
    observe(r)
    r["rerun"] = sh("/usr/local/bin/nodeagent", "disks", "setup", "-o", "json", *ARGS)
    r["enable"] = sh("systemctl", "enable", "nodeagent-disks.service")


def phase_stopstart(r: dict) -> None:
    observe(r)
    r["rerun"] = sh("/usr/local/bin/nodeagent", "disks", "setup", "-o", "json", *ARGS)


def main() -> None:
    phase = Path("/opt/nodeagent-test/phase").read_text().strip()
    OUT.mkdir(parents=True, exist_ok=True)
    r: dict = {"phase": phase}
    try:
        {"first": phase_first, "reboot": phase_reboot, "stopstart": phase_stopstart}[phase](r)
    except Exception as exc:  # recorded for the host-side assertions
        import traceback

        r["guest_error"] = f"{exc!r}\n{traceback.format_exc()}"
    out = OUT / f"{phase}.json"
    out.write_text(json.dumps(r, indent=1))
    os.sync()
    sh("systemctl", "poweroff", "--no-block")


if __name__ == "__main__":
    main()
