#!/bin/sh
# Runs in a superpowered Bottlerocket host container: the host's / is at
# /.bottlerocket/rootfs, this container's user data and persistent directory at
# /.bottlerocket/host-containers/current. Host containers are restarted when they exit,
# so the build runs once (a marker in the persistent directory) and the container idles.
set -eu
host=/.bottlerocket/rootfs
state=/.bottlerocket/host-containers/current
if [ ! -e "$state/snapshot-done" ]; then
  # containerd may still be starting right after boot.
  for _ in $(seq 1 60); do [ -S "$host/run/containerd/containerd.sock" ] && break; sleep 2; done
  nodeagent snapshot build -f "$state/user-data" \
    --containerd-address "$host/run/containerd/containerd.sock" \
    --containerd-root "$host/var/lib/containerd" \
    --kubelet-dir "$host/var/lib/kubelet" \
    --name gpu-hot-images \
    --ssm-parameter /nodeagent/gpu/snapshot
  touch "$state/snapshot-done"
fi
exec sleep infinity
