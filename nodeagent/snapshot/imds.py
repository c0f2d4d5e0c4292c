"""Instance identity from the EC2 instance metadata service (IMDSv2), best effort.

Used for the snapshot's source-instance tag, the default region and resolving Xen
(``xvd*``) devices through EC2 attachments. Honours botocore's environment variables
``AWS_EC2_METADATA_SERVICE_ENDPOINT`` and ``AWS_EC2_METADATA_DISABLED``. Off EC2 (or with
IMDS hop limit 1 inside a pod network namespace) it answers None quickly.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

DEFAULT_ENDPOINT = "http://169.254.169.254"
TIMEOUT_S = 1.0


def _endpoint() -> str | None:
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def metadata(path: str) -> str | None:
    """GET /latest/meta-data/<path> with an IMDSv2 session token; None if unavailable."""
    base = _endpoint()
    if base is None:
        return None
    try:
        token_req = urllib.request.Request(
            f"{base}/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(token_req, timeout=TIMEOUT_S) as resp:
            token = resp.read().decode()
        req = urllib.request.Request(
            f"{base}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.read().decode().strip() or None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def instance_id() -> str | None:
    return metadata("instance-id")


def region() -> str | None:
    return metadata("placement/region")
