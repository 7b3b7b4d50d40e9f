"""Validation of every external string before it reaches argv, a path or a URL.

The CRD schema refuses these at `kubectl apply`; the daemon checks again here because a CR
may have been stored before a schema tightened, and config files do not pass the API server.
The patterns are the same ones the CRDs use (kept in step by tests/unit/test_crd_models.py).
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
SAFE_PATH = r"^/([A-Za-z0-9._+-]+/?)*$"
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
