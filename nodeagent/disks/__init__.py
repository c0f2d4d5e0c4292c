"""Local NVMe instance store for containerd and kubelet (`nodeagent disks`).

discover.py  facts from the host (nodeagent/hostfacts: sysfs through pyudev or direct
             reads, /proc/<pid>/mountinfo) and device superblocks (signatures.py)
model.py     those facts as plain data
plan.py      pure decisions: which disks (candidates.py), which volumes (volumes.py),
             which steps (steps.py), and why; the plan itself is decisions.py
apply.py     the effects, each step idempotent; migrate.py copies and checks directories
units.py     systemd mount unit text; services.py systemctl (through nsenter from a pod)
host.py      the host seen from here (directly, or from a container via /proc/1)
status.py    `disks status` and the metric values; report.py text/JSON renderings
commands.py  the CLI; zipapp.py builds the standard-library-only single-file build
Standard library only (plus nodeagent/hostfacts, also standard library): nothing here
imports grpc, lightkube, boto3 or prometheus_client.
"""
