"""The AWS names a user gives the snapshot commands, checked before anything is asked of
AWS or changed (pure, standard library only).

Syntax here: regions, zones (names and IDs), SSM parameter names, volume and instance ids,
tag values, endpoint URLs. The argparse types raise ``ArgumentTypeError`` (argparse then
names the flag and exits 2). Whether a zone exists in the region is EC2's answer
(``match_zones``, fed by DescribeAvailabilityZones before anything is frozen or created).
"""

from __future__ import annotations

import argparse
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

_REGION = r"[a-z]{2,4}(?:-[a-z]+)+-\d{1,2}"  # us-east-1, us-gov-west-1, eusc-de-east-1
REGION = re.compile(rf"^{_REGION}$")
# us-east-1a; Local Zones us-west-2-lax-1a; Wavelength Zones us-east-1-wl1-bos-wlz-1
ZONE_NAME = re.compile(rf"^{_REGION}(?:[a-z]|(?:-[a-z0-9]+)+)$")
# use1-az1, usgw1-az2; Local Zones usw2-lax1-az1; Wavelength Zones use1-wl1-bos-wlz1
ZONE_ID = re.compile(r"^[a-z]{2,6}\d{1,2}(?:-[a-z0-9]+)*-(?:az|wlz)\d{1,2}$")
VOLUME_ID = re.compile(r"^vol-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
SSM_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")
SSM_NAME_MAX = 1011  # SSM's limit for a name, the ARN prefix included: a bound, not exact
SSM_LEVELS_MAX = 15
TAG_VALUE_MAX = 256  # EC2's limit for a tag value


def region_problem(name: str) -> str | None:
    if REGION.match(name):
        return None
    return "not an AWS region name (like us-east-1, us-gov-west-1)"


def region(text: str) -> str:
    """argparse type: an AWS region name."""
    problem = region_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def zones(text: str) -> list[str]:
    """argparse type: comma-separated Availability Zone names or zone IDs."""
    found = [z.strip() for z in text.split(",") if z.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r}: no zone given")
    for zone in found:
        if not (ZONE_NAME.match(zone) or ZONE_ID.match(zone)):
            raise argparse.ArgumentTypeError(
                f"{zone!r} is neither a zone name (like us-east-1a, or a Local Zone like "
                "us-west-2-lax-1a) nor a zone ID (like use1-az1)")
    return found


def ssm_parameter_problem(name: str) -> str | None:
    if not name:
        return "empty"
    if len(name) > SSM_NAME_MAX:
        return f"longer than {SSM_NAME_MAX} characters"
    if not SSM_NAME.match(name):
        return "may only contain letters, digits and _ . - / (no spaces)"
    if "/" in name and not name.startswith("/"):
        return "a name with a hierarchy must start with / (like /nodeagent/gpu/snapshot)"
    segments = [s for s in name.split("/") if s]
    if not segments or "//" in name or name.endswith("/"):
        return "empty path segment"
    if len(segments) > SSM_LEVELS_MAX:
        return f"more than {SSM_LEVELS_MAX} levels"
    if segments[0].lower().startswith(("aws", "ssm")):
        return "names starting with aws or ssm are reserved by AWS"
    return None


def ssm_parameter(text: str) -> str:
    """argparse type: an SSM parameter name PutParameter would accept."""
    problem = ssm_parameter_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def _matching(pattern: re.Pattern[str], example: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not pattern.match(text):
            raise argparse.ArgumentTypeError(f"{text!r}: expected an id like {example}")
        return text

    parse.__name__ = "id"
    return parse


volume_id = _matching(VOLUME_ID, "vol-0123456789abcdef0")
instance_id = _matching(INSTANCE_ID, "i-0123456789abcdef0")


def tag_value(text: str) -> str:
    """argparse type: an EC2 tag value (at most 256 characters)."""
    if len(text) > TAG_VALUE_MAX:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r}...: {len(text)} characters, EC2 tag values have at most "
            f"{TAG_VALUE_MAX}")
    return text


def endpoint_url(text: str) -> str:
    """argparse type: an http(s) URL with a host."""
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an http(s) URL like https://ec2.us-east-1.amazonaws.com")
    return text


# ---------------------------------------------------------------------- zones in a region


@dataclass(frozen=True)
class Zone:
    """One zone of DescribeAvailabilityZones' answer."""

    name: str
    zone_id: str = ""
    state: str = "available"
    opt_in: str = ""  # "opt-in-not-required" | "opted-in" | "not-opted-in" | ""


def match_zones(requested: Sequence[str], region_name: str,
                known: Iterable[Zone]) -> tuple[tuple[str, ...], list[str]]:
    """The zone names for the requested names or IDs (in order, once each), and one
    problem per zone that is unknown in the region, not opted in or not available."""
    known = list(known)
    by_key = {z.name: z for z in known} | {z.zone_id: z for z in known if z.zone_id}
    names: list[str] = []
    problems: list[str] = []
    for wanted in requested:
        zone = by_key.get(wanted)
        if zone is None:
            listed = ", ".join(sorted(z.name for z in known)) or "none"
            problems.append(f"{wanted}: not a zone of region {region_name} (its zones: "
                            f"{listed})")
        elif zone.opt_in == "not-opted-in":
            problems.append(f"{wanted} ({zone.name}): the account has not opted in to it")
        elif zone.state != "available":
            problems.append(f"{wanted} ({zone.name}): state {zone.state}")
        elif zone.name not in names:
            names.append(zone.name)
    return tuple(names), problems
