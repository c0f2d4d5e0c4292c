"""Helpers shared by the tests: test doubles, fixtures' building blocks, VM drivers.

kubeapi.py              a TEST DOUBLE of the Kubernetes API server (list/watch, RBAC)
agent_helpers.py        an in-process agent against it and a real containerd
prewarm_helpers.py      desired images, a pausable throttling TCP proxy
aws_servers.py          moto in server mode behind a recording proxy
loopfs.py               a real XFS on a loop device
disks_fakes.py          a fake node for the disk code (sysfs tree, /dev, /proc)
disks_vm.py             QEMU VMs with emulated NVMe disks; disks_vm_driver.py runs in them
disks_image.py          a bootable disk image for the systemd VM test;
                        disks_systemd_guest.py runs in that guest
pull_features.py        layers with every tar feature, for the fast pull's equivalence tests
pull_compare.py         snapshot trees compared, for the same tests
containerd_helpers.py   the ContainerdClient tests' client fixture, polling, throttling proxy
auth_helpers.py         the registry credential tests' secret and docker config keyrings
resolve_helpers.py      what resolve_manifest should answer for a pushed image
hotlist_cases.py        HotImageSet files valid and invalid (the table of errors)
daemonset_manifests.py  daemonset/'s documents, as the manifest tests read them
"""
