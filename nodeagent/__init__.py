"""nodeagent: make AI/ML workloads start fast on Kubernetes nodes.

Subpackages, one concern each:
  disks/       NVMe instance-store discovery, planning and setup (RAID0/10, mkfs, binds)
  containerd/  asyncio gRPC client for containerd (CRI ImageService + native API)
  prewarm/     hot image lists, the pull engine, pinning, registry auth
  kube/        Kubernetes API: HotImageSet watch, Node status, taints, leases
  snapshot/    EBS snapshots of the prewarmed data volume, hydration after restore
  sandbox/     a throwaway local registry + private containerd (demo, tests, benchmarks)
"""

__version__ = "0.1.0"
