"""nodeagent: make AI/ML workloads start fast on Kubernetes nodes.

The edge: cli.py and each concern's commands.py turn flags into typed options.
Subpackages, one concern each:
  agent/        the DaemonSet agent: wires the concerns below together (nothing imports it)
  prewarm/      hot images pulled and pinned in containerd: the engine and its decisions
  snapshot/     EBS snapshots of the prewarmed data volume, hydration after restore
  kube/         Kubernetes API: watches, Node condition, taints, Events, Leases, secrets
  api/          the nodeagent.io/v1alpha1 API: HotImageSet, validation, CRD
  credentials/  registry credentials: docker config, kubelet credential provider plugins
  registry/     image references, platforms, the OCI distribution client
  containerd/   asyncio gRPC client for containerd (CRI ImageService + native API)
  disks/        NVMe instance-store discovery, planning and setup (RAID0/10, mkfs, binds)
  hostfacts/    mountinfo, sysfs block devices, EC2 NVMe identities (disks, snapshot)
  sandbox/      a throwaway local registry + private containerd (demo, tests, benchmarks)
Shared modules: metrics.py, console.py, log.py, errors.py, aio.py.
"""

__version__ = "0.1.0"
