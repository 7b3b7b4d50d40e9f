"""API paths and the names kupd's custom resources live under: pure URL building.

The group and version of kupd's custom resources are defined here, once.
"""

from __future__ import annotations

import urllib.parse

GROUP = "kupd.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DIRECTUPDATES = "directupdates"
SCHEDULEDUPDATES = "scheduledupdates"
UPDATESCHEDULES = "updateschedules"


def _segment(value: str, what: str) -> str:
    # Names come from CRs, node names and CLI arguments: one of them must never climb out of its
    # place in the URL ("..") or add a segment ("/"), which quoting alone would not prevent for "..".
    if not value or value in (".", "..") or "/" in value:
        raise ValueError(f"invalid {what} for an API path: {value!r}")
    return urllib.parse.quote(value, safe="")


def path(group: str, version: str, plural: str, name: str | None = None, namespace: str | None = None,
         subresource: str | None = None) -> str:
    """The URL path of a resource: the core group ("") lives under /api, all others under /apis."""
    if group:
        parts = ["apis", _segment(group, "group"), _segment(version, "version")]
    else:
        parts = ["api", _segment(version, "version")]
    if namespace is not None:
        parts += ["namespaces", _segment(namespace, "namespace")]
    parts.append(_segment(plural, "resource"))
    if name is not None:
        parts.append(_segment(name, "name"))
    if subresource is not None:
        if name is None:
            raise ValueError("a subresource needs a name")
        parts.append(_segment(subresource, "subresource"))
    return "/" + "/".join(parts)


def kupd_path(plural: str, name: str | None = None, subresource: str | None = None) -> str:
    """One of kupd's cluster-scoped custom resources (or, without a name, the collection)."""
    return path(GROUP, VERSION, plural, name, subresource=subresource)


def lease_path(namespace: str, name: str | None = None) -> str:
    """A Lease (or, without a name, the Leases) in `namespace`: kupd's member, grant and coordinator objects."""
    return path("coordination.k8s.io", "v1", "leases", name, namespace)


def node_path(name: str | None = None, subresource: str | None = None) -> str:
    return path("", "v1", "nodes", name, subresource=subresource)
