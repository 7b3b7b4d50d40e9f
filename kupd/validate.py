"""Validation of every external string before it reaches argv, a path or a URL.

The CRD schema refuses these at `kubectl apply`; the daemon checks again here because a CR
may have been stored before a schema tightened, and config files do not pass the API server.
The patterns are the same ones the CRDs use (a unit test, test_crd_models, keeps them in step).
"""

from __future__ import annotations

import re

from kupd.errors import ValidationError

# v1.31.2 — the Kubernetes release form. No pre-releases: kupd upgrades to releases only.
K8S_VERSION = r"^v(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$"
# 1.7.22 or v1.7.22 — containerd's form.
CONTAINERD_VERSION = r"^v?(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$"
# Debian/RPM package versions such as 1.31.2-1.1, 1:1.7.22-1, 1.31.2-150500.1.1
PACKAGE_VERSION = r"^([0-9]{1,5}:)?[0-9][A-Za-z0-9.+~]{0,62}(-[A-Za-z0-9.+~]{1,32})?$"
PACKAGE_NAME = r"^[a-z0-9][a-z0-9.+-]{0,62}$"
# RFC 1123 subdomain, which is what Node and object names are.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Absolute path of plain characters, no "..", no control characters.
# Written without nested quantifiers: Python's backtracking re would take exponential time on
# a crafted near-miss of `^/([A-Za-z0-9._+-]+/?)*$` (the API server's RE2 would not).
SAFE_PATH = r"^/([A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*/?)?$"
# http(s) URL with no whitespace, quotes or shell metacharacters.
SAFE_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+-]*)?$"


def _check(pattern: str, value: str, field: str, what: str, max_len: int = 253) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ValidationError(field, f"is {len(value)} characters long; at most {max_len} allowed")
    if not re.fullmatch(pattern, value):
        raise ValidationError(field, f"{value[:80]!r} is not a valid {what}")
    return value


def k8s_version(value: str, field: str = "version") -> str:
    return _check(K8S_VERSION, value, field, "Kubernetes version (like v1.31.2)", 32)


def containerd_version(value: str, field: str = "containerdVersion") -> str:
    return _check(CONTAINERD_VERSION, value, field, "containerd version (like 1.7.22)", 32)


def package_version(value: str, field: str = "packageVersion") -> str:
    return _check(PACKAGE_VERSION, value, field, "package version", 100)


def package_name(value: str, field: str = "package") -> str:
    return _check(PACKAGE_NAME, value, field, "package name", 63)


def node_name(value: str, field: str = "node") -> str:
    return _check(DNS_SUBDOMAIN, value, field, "node name (RFC 1123 subdomain)", 253)


def safe_path(value: str, field: str = "path") -> str:
    _check(SAFE_PATH, value, field, "absolute path", 4096)
    if any(part == ".." for part in value.split("/")):
        raise ValidationError(field, f"{value[:80]!r} must not contain '..'")
    return value


def safe_url(value: str, field: str = "url") -> str:
    return _check(SAFE_URL, value, field, "http(s) URL", 2048)


# --- Patterns of the custom resources (crds/*.yaml, kupd/api/models.py) -------------------
# Every one is anchored, uses ASCII classes only (no \d, \w, \s: those match Unicode look-alikes
# in some engines), and avoids nested ambiguous repetition so backtracking engines stay linear.

# v1.31 or v1.31.2: an UpdateSchedule's template may name a minor, meaning its newest patch.
K8S_VERSION_OR_MINOR = r"^v(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})(\.(0|[1-9][0-9]{0,3}))?$"
# RFC 1123 label: namespaces, cloud regions.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_LABEL_PREFIX = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
# A label key: optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
LABEL_KEY = rf"^{_LABEL_PREFIX}?{_LABEL_NAME}$"
# A label value: empty, or at most 63 characters of [-A-Za-z0-9_.] starting and ending alphanumeric.
LABEL_VALUE = rf"^({_LABEL_NAME})?$"
_SEL_KEY = r"([a-z0-9][-a-z0-9.]*/)?[A-Za-z0-9][-A-Za-z0-9_.]*"
_SEL_VALUE = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?"
_SEL_REQUIREMENT = (
    rf"(!?{_SEL_KEY}|{_SEL_KEY}(=|==|!=){_SEL_VALUE}"
    rf"|{_SEL_KEY} (in|notin) \({_SEL_VALUE}(,{_SEL_VALUE})*\))"
)
# A label selector string (`app=web,tier!=db,env in (a,b),!legacy`), as `kubectl -l` takes it.
LABEL_SELECTOR = rf"^{_SEL_REQUIREMENT}(,{_SEL_REQUIREMENT})*$"
# S3/GCS bucket: dot-separated labels of [a-z0-9_-] starting and ending alphanumeric (no "..").
BUCKET_NAME = r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)*$"
# Object key prefix: relative, "/"-separated segments that never start with "." (so no "..").
OBJECT_PREFIX = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*/?$"
# IANA time zone name: UTC, Europe/Berlin, America/Argentina/Buenos_Aires, Etc/GMT+5.
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+-]{0,31}(/[A-Za-z0-9][A-Za-z0-9_+-]{0,31}){0,2}$"
# RFC 3339 timestamp with an explicit offset (Z or +hh:mm), as user-written times must carry one.
RFC3339_TIME = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
SHA256_HEX = r"^[a-f0-9]{64}$"
# Operation progress as "done/total", like 3/6.
PROGRESS = r"^[0-9]{1,6}/[0-9]{1,6}$"
# metav1.Condition type and reason, as upstream validates them.
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


def _cron_field(atom: str) -> str:
    item = rf"(\*|{atom}(-{atom})?)(/[1-9][0-9]?)?"
    return rf"{item}(,{item})*"


# Five-field cron (minute hour day-of-month month day-of-week) with in-range numbers, lists,
# ranges, steps and English month/day abbreviations. No macros (@daily), no seconds field.
CRON_SCHEDULE = "^" + " ".join(_cron_field(atom) for atom in (
    r"[0-5]?[0-9]",
    r"(2[0-3]|[01]?[0-9])",
    r"(3[01]|[12][0-9]|0?[1-9])",
    r"(1[0-2]|0?[1-9]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))",
    r"([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat))",
)) + "$"


def bucket_name(value: str, field: str = "bucket") -> str:
    """S3 or GCS bucket name (the CRD's pattern; 3 to 222 characters as GCS allows with dots)."""
    _check(BUCKET_NAME, value, field, "bucket name", 222)
    if len(value) < 3:
        raise ValidationError(field, f"{value!r} is shorter than 3 characters")
    return value


def object_prefix(value: str, field: str = "prefix") -> str:
    """Object name prefix such as `kupd/backups/`: relative, no empty, '.' or '..' parts."""
    _check(OBJECT_PREFIX, value, field, "object name prefix", 512)
    if any(part in (".", "..") for part in value.split("/")):
        raise ValidationError(field, f"{value[:80]!r} must not contain '.' or '..' parts")
    return value
