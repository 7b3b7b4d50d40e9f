"""kupd's one Kubernetes edge: the client, kubeconfig parsing, paths, the informer and the one
mapping of API failures to kupd's error values.

- `kubeconfig`: pure parsing of a kubeconfig into `Settings`;
- `paths`: pure URL building, and the group and version of kupd's resources;
- `client`: the thin I/O (urllib3 + json), no retries, HTTP errors as `ApiError`;
- `errors`: `map_error`/`call`, the retry policy (`retry_delay`, pure);
- `informer`: list+watch into a cache; `objects`: pure helpers over API objects.

Everything else in kupd reaches the API server through the names exported here.
"""

from __future__ import annotations

from kupd.k8s.client import ApiError, Client, Watch
from kupd.k8s.errors import (
    TRANSPORT_ERRORS,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    call,
    map_error,
    patch_or_create,
    retry_delay,
)
from kupd.k8s.informer import Informer
from kupd.k8s.kubeconfig import Settings, load_kubeconfig, parse_kubeconfig
from kupd.k8s.objects import ready
from kupd.k8s.paths import (
    API_VERSION,
    DIRECTUPDATES,
    GROUP,
    SCHEDULEDUPDATES,
    UPDATESCHEDULES,
    VERSION,
    kupd_path,
    lease_path,
    node_path,
    path,
)

__all__ = [
    "API_VERSION", "DIRECTUPDATES", "GROUP", "SCHEDULEDUPDATES", "TRANSPORT_ERRORS", "UPDATESCHEDULES", "VERSION",
    "ApiError", "Client", "Conflict", "Forbidden", "Informer", "Invalid", "NotFound", "Settings", "Watch",
    "api_client", "call",
    "kupd_path", "lease_path", "load_kubeconfig", "map_error", "node_path", "parse_kubeconfig", "patch_or_create",
    "path", "ready", "retry_delay",
]


def api_client(kubeconfig: str, timeout: float = 10.0) -> Client:
    """A client from a kubeconfig file. kupd's own small client, not the official one: that one
    imports ~800 model classes and would double the daemon's memory."""
    return Client.from_kubeconfig(kubeconfig, timeout=timeout)
