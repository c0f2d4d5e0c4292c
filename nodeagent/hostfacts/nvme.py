"""How EC2 NVMe devices identify themselves (controller model and serial).

On Nitro instances every EBS volume is an NVMe namespace whose controller has model
"Amazon Elastic Block Store" and serial ``vol0123...`` (the volume id without its dash);
instance-store disks say "Amazon EC2 NVMe Instance Storage".
"""

from __future__ import annotations

import re

EBS_MODEL = "Amazon Elastic Block Store"
INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"
_EBS_SERIAL = re.compile(r"^vol-?([0-9a-f]{8,17})$")


def ebs_volume_id_from_serial(serial: str) -> str | None:
    """NVMe serial "vol0123456789abcdef0" -> EBS volume id "vol-0123456789abcdef0"."""
    match = _EBS_SERIAL.match(serial.strip())
    return f"vol-{match.group(1)}" if match else None
