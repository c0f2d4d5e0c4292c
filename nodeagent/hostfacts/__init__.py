"""Facts about this host's storage, read from /proc and /sys: the one reader of them.

mountinfo.py  what is mounted where (/proc/<pid>/mountinfo), swap devices (/proc/swaps)
sysfs.py      block devices (pyudev when installed, direct sysfs reads otherwise), the
              disk behind a device number, the disks under md/dm devices
nvme.py       how EC2 names its NVMe devices: instance store, EBS (volume id in the serial)

Used by ``disks`` (local NVMe setup) and ``snapshot`` (which EBS volume holds a path).
Standard library only, like ``disks``: the single-file disks build (disks/zipapp.py)
carries this package too.
"""
