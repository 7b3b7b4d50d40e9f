"""The validating decoder's parts for what the coordinator reads but did not write itself.

A member Lease is written by its node's own kupd credential, which a worker's root (or a stolen
token) holds; its annotations, the progress report among them, are therefore untrusted. So are
annotations on DirectUpdates (anyone who may patch their metadata writes them) and the agent's
checkpoint on disk. Every such value passes through here once, at the edge:

- text is bounded in size before it is parsed, JSON in nesting depth before `json.loads` sees it
  (a report of 50,000 `[` must not reach Python's recursion limit);
- every field is checked for type and range against what kupd itself writes and what the CRD
  schema accepts, so whatever passes can be copied into status without making the write fail;
- free text (a message) is normalised (cut to its bound), not refused: it hurts nobody;
- anything else is refused with `Invalid`, naming the field, and the caller records that as a
  fact about that one node ("node w-2: invalid report, field attempts: ...") instead of raising.

The wire formats built from these parts live with the protocol: `protocol.decode_report` and
`protocol.decode_member_lease`. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kupd import rfc3339, validate
from kupd.errors import ValidationError
from kupd.versions import Version

MAX_TEXT = 64 * 1024
"""Bound of one annotation value kupd parses (the API server's bound is 256 KiB for all together)."""
MAX_DEPTH = 8
"""Nesting depth of JSON kupd parses: a report is three levels deep."""
MAX_MESSAGE = 2048  # status.nodes[].message
MAX_ATTEMPTS = 100  # status.nodes[].attempts
INT64 = 2**53 - 1  # the CRD's bound of every integer field

UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
STEP = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
REASON = re.compile(r"^([A-Za-z][A-Za-z0-9]{0,63})?$")
_K8S_VERSION = re.compile(validate.K8S_VERSION)
DNS_SUBDOMAIN = re.compile(validate.DNS_SUBDOMAIN)
_SHA256 = re.compile(validate.SHA256_HEX)
TURN_PHASES = ("Upgrading", "Succeeded", "Failed")


class Invalid(ValidationError):
    """An untrusted value is malformed; `field` names it, like `report.attempts`."""


# -- generic, bounded JSON --------------------------------------------------------------------
def bounded_json(text: object, field: str, max_bytes: int = MAX_TEXT, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` of `text`, refusing what is too large or too deep before parsing it."""
    if not isinstance(text, str):
        raise Invalid(field, f"must be JSON text, got {type(text).__name__}")
    if len(text) > max_bytes:
        raise Invalid(field, f"is {len(text)} characters long, more than {max_bytes}")
    depth = _depth(text)
    if depth > max_depth:
        raise Invalid(field, f"nests {depth} levels deep, more than {max_depth}")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise Invalid(field, f"is not JSON: {str(e)[:80]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings; a linear scan, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif ch in "]}":
            depth -= 1
    return deepest


# -- fields -----------------------------------------------------------------------------------
def text(data: Mapping[str, Any], key: str, field: str, max_len: int, pattern: re.Pattern[str] | None = None,
         default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise Invalid(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise Invalid(field, f"is {len(value)} characters long, more than {max_len}")
    if pattern is not None and value and not pattern.match(value):
        raise Invalid(field, f"{value[:40]!r} is not of the form {pattern.pattern}")
    return value


def message(data: Mapping[str, Any], key: str, field: str, max_len: int = MAX_MESSAGE) -> str:
    """Free text: must be a string; cut to `max_len` rather than refused."""
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Invalid(field, f"must be a string, got {type(value).__name__}")
    return value[:max_len]


def integer(data: Mapping[str, Any], key: str, field: str, lo: int = 0, hi: int = INT64, default: int = 0) -> int:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(field, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise Invalid(field, f"{value} is out of range {lo}..{hi}")
    return value


def time_text(data: Mapping[str, Any], key: str, field: str) -> str:
    """An RFC 3339 time in kupd's range, or "" when absent; returned as written."""
    value = text(data, key, field, 40)
    if value:
        parse_time(value, field)
    return value


def parse_time(value: object, field: str) -> datetime:
    """An RFC 3339 time with an offset, between 1970 and 9000, as an aware UTC datetime."""
    try:
        return rfc3339.parse_time(value, field)
    except ValidationError as e:
        raise Invalid(e.field, e.reason) from None


def normal_time(value: str) -> str:
    """A time `time_text` accepted, in the form the CRD's date-time format always accepts."""
    return rfc3339.format_time(parse_time(value, "time")) if value else ""


def version(value: object, field: str) -> Version:
    if not isinstance(value, str) or len(value) > 32 or not _K8S_VERSION.match(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise Invalid(field, f"{shown!r} is not a Kubernetes version like v1.31.2")
    return Version.parse(value, field)


def node_kubelet(node: Mapping[str, Any]) -> Version | None:
    """The kubelet version a Node's status reports (its kubelet writes it; a kupd credential
    cannot), or None when it reports none kupd can read."""
    value = ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")
    try:
        return version(value, "status.nodeInfo.kubeletVersion") if value else None
    except Invalid:
        return None


# -- parts of a report ------------------------------------------------------------------------
def backup(value: object, field: str) -> dict[str, Any]:
    """A backup record as status.backup holds it (camelCase), checked against the CRD's bounds."""
    if value is None or value == {}:
        return {}
    if not isinstance(value, dict):
        raise Invalid(field, f"must be an object, got {type(value).__name__}")
    out: dict[str, Any] = {"location": text(value, "location", f"{field}.location", 2048)}
    if not out["location"]:
        raise Invalid(f"{field}.location", "is required")
    for key in ("size", "revision"):
        if key in value:
            out[key] = integer(value, key, f"{field}.{key}")
    if "sha256" in value:
        out["sha256"] = text(value, "sha256", f"{field}.sha256", 64, _SHA256)
    if "verified" in value:
        if not isinstance(value["verified"], bool):
            raise Invalid(f"{field}.verified", "must be true or false")
        out["verified"] = value["verified"]
    if "takenAt" in value:
        out["takenAt"] = normal_time(time_text(value, "takenAt", f"{field}.takenAt"))
    if "node" in value:
        out["node"] = text(value, "node", f"{field}.node", 253, DNS_SUBDOMAIN)
    return out


def step_seconds(value: object, field: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 64:
        raise Invalid(field, "must be an object of at most 64 step durations")
    out: dict[str, float] = {}
    for k, v in value.items():
        if not isinstance(k, str) or len(k) > 127:
            raise Invalid(field, "has a key that is not a step name")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 1e7:
            raise Invalid(f"{field}[{k[:40]}]", "must be a number of seconds in 0..1e7")
        out[k] = float(v)
    return out
