"""The one validating decoder for what the coordinator reads but did not write itself.

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

Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kupd import validate
from kupd.errors import ValidationError
from kupd.protocol import ANN_KUBELET, ANN_REPORT, Report
from kupd.versions import Version

MAX_TEXT = 64 * 1024
"""Bound of one annotation value kupd parses (the API server's bound is 256 KiB for all together)."""
MAX_DEPTH = 8
"""Nesting depth of JSON kupd parses: a report is three levels deep."""
MAX_MESSAGE = 2048  # status.nodes[].message
MAX_ATTEMPTS = 100  # status.nodes[].attempts
INT64 = 2**53 - 1  # the CRD's bound of every integer field
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)

_UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_STEP = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_REASON = re.compile(r"^([A-Za-z][A-Za-z0-9]{0,63})?$")
_K8S_VERSION = re.compile(validate.K8S_VERSION)
_DNS_SUBDOMAIN = re.compile(validate.DNS_SUBDOMAIN)
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
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        raise Invalid(field, "must be an RFC 3339 time like 2026-12-05T02:00:00Z")
    try:
        t = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise Invalid(field, f"{value!r} is not an RFC 3339 time like 2026-12-05T02:00:00Z") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise Invalid(field, f"{value!r} has no time zone offset")
    try:
        utc = t.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_TIME <= utc <= MAX_TIME:
        raise Invalid(field, f"{value!r} is outside the supported range {MIN_TIME:%Y}..{MAX_TIME:%Y}")
    return utc


def normal_time(value: str) -> str:
    """A time `time_text` accepted, in the form the CRD's date-time format always accepts."""
    return parse_time(value, "time").strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def version(value: object, field: str) -> Version:
    if not isinstance(value, str) or len(value) > 32 or not _K8S_VERSION.match(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise Invalid(field, f"{shown!r} is not a Kubernetes version like v1.31.2")
    return Version.parse(value, field)


# -- the report -------------------------------------------------------------------------------
def report(raw: object) -> Report | None:
    """The progress report of a member Lease's `kupd.io/report` annotation; None when there is none.
    Unknown keys are ignored (a newer kupd may add some); everything else is checked."""
    if raw is None or raw == "":
        return None
    data = bounded_json(raw, "report")
    if not isinstance(data, dict):
        raise Invalid("report", f"must be a JSON object, got {type(data).__name__}")
    versions = data.get("versions")
    if not isinstance(versions, list) or not 1 <= len(versions) <= 64:
        raise Invalid("report.versions", "must be a list of 1 to 64 versions")
    for i, v in enumerate(versions):
        version(v, f"report.versions[{i}]")
    phase = text(data, "phase", "report.phase", 16)
    if phase not in TURN_PHASES:
        raise Invalid("report.phase", f"{phase[:20]!r} is not one of {', '.join(TURN_PHASES)}")
    operation = text(data, "operation", "report.operation", 253, _DNS_SUBDOMAIN)
    uid = text(data, "uid", "report.uid", 64, _UID)
    if not operation or not uid:
        raise Invalid("report.operation" if not operation else "report.uid", "is required")
    return Report(
        operation=operation, uid=uid, epoch=integer(data, "epoch", "report.epoch"), versions=list(versions),
        phase=phase, step=text(data, "step", "report.step", 63, _STEP),
        attempts=integer(data, "attempts", "report.attempts", 0, MAX_ATTEMPTS),
        started_at=time_text(data, "started_at", "report.started_at"),
        finished_at=time_text(data, "finished_at", "report.finished_at"),
        message=message(data, "message", "report.message"),
        reason=text(data, "reason", "report.reason", 64, _REASON),
        backup=backup(data.get("backup"), "report.backup"),
        step_seconds=step_seconds(data.get("step_seconds"), "report.step_seconds"),
        granted_at=time_text(data, "granted_at", "report.granted_at"),
    )


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
        out["node"] = text(value, "node", f"{field}.node", 253, _DNS_SUBDOMAIN)
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


# -- a member Lease ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """What a member Lease says, decoded. `problem` is set when something in it is invalid; the
    rest is then what could be trusted (an invalid report reads as none)."""

    node: str
    renewed: datetime | None
    duration: int
    claimed_kubelet: Version | None
    report: Report | None
    problem: str | None = None


def member(lease: Mapping[str, Any], default_duration: int) -> Member:
    md = lease.get("metadata") or {}
    name = str(md.get("name") or "")
    node = name.split("kupd-node-", 1)[-1]
    spec = lease.get("spec") or {}
    anns = md.get("annotations") or {}
    problems: list[str] = []
    renewed = None
    if spec.get("renewTime"):
        try:
            renewed = parse_time(spec.get("renewTime"), "spec.renewTime")
        except Invalid as e:
            problems.append(f"invalid lease, field {e}")
    duration = spec.get("leaseDurationSeconds")
    if isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= 3600:
        duration = default_duration
    claimed = None
    if anns.get(ANN_KUBELET):
        try:
            claimed = version(anns[ANN_KUBELET], ANN_KUBELET)
        except Invalid as e:
            problems.append(f"invalid annotation {e}")
    rep = None
    try:
        rep = report(anns.get(ANN_REPORT))
    except Invalid as e:
        problems.append(f"invalid report, field {e}")
    return Member(node, renewed, duration, claimed, rep, "; ".join(problems)[:500] or None)
