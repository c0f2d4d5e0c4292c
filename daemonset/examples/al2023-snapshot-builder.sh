#!/bin/bash
# EC2 user data for a throwaway AL2023 (EKS-optimized AMI) snapshot builder instance.
# Launch it with the AMI and architecture of your nodes, a blank second EBS volume
# /dev/xvdb of the size your nodes will use, and an instance profile allowed to pull your
# images (ECR: AmazonEC2ContainerRegistryReadOnly) plus
# daemonset/examples/iam-policy-snapshot.json. It never joins a cluster (nodeadm is not
# run), so no kubelet identity or pod state ends up in the snapshot.
#
# It formats the blank volume, mounts it at /var/lib/containerd (as the nodes' user data
# will), starts containerd, then `nodeagent snapshot build`: prewarm + pin the hot list,
# verify, freeze the volume for the CreateSnapshot call only, wait, publish the id to
# SSM. Read it with `aws ssm get-parameter --name /nodeagent/gpu/snapshot`, then
# terminate the instance.
set -euo pipefail
exec > >(tee -a /var/log/nodeagent-builder.log) 2>&1

for _ in $(seq 1 60); do [ -e /dev/xvdb ] && break; sleep 1; done
systemctl stop containerd 2>/dev/null || true
blkid /dev/xvdb >/dev/null 2>&1 || mkfs.xfs -L containerd /dev/xvdb  # blank volumes only
mkdir -p /var/lib/containerd
mount -o noatime /dev/xvdb /var/lib/containerd
systemctl start containerd

# nodeagent needs Python 3.11 (AL2023 packages it). NODEAGENT_WHEEL: a wheel built from
# this repository (`pip wheel --no-deps .`), e.g. fetched from your artifact store.
NODEAGENT_WHEEL=${NODEAGENT_WHEEL:-/opt/nodeagent-0.1.0-py3-none-any.whl}
dnf install -y -q python3.11 python3.11-pip
python3.11 -m venv /opt/nodeagent
/opt/nodeagent/bin/pip install -q "$NODEAGENT_WHEEL"

cat > /etc/nodeagent-hot.yaml <<'HOT'
apiVersion: nodeagent.io/v1alpha1
kind: HotImageSet
metadata:
  name: gpu
spec:
  priority: 100
  images:
    - image: nvcr.io/nvidia/pytorch:24.05-py3
    - image: 123456789012.dkr.ecr.us-west-2.amazonaws.com/ml/triton:24.05
HOT

/opt/nodeagent/bin/nodeagent --log-format json snapshot build -f /etc/nodeagent-hot.yaml \
  --credential-provider-config /etc/eks/image-credential-provider/config.json \
  --credential-provider-bin-dir /etc/eks/image-credential-provider \
  --name gpu-hot-images \
  --ssm-parameter /nodeagent/gpu/snapshot
