"""The thin Kubernetes layer: client construction, error mapping and a small informer.

API errors are mapped once, here: 409 (conflict) and 5xx/connection failures are retryable,
403/422 permanent. Watches keep a local cache per resource; a dropped watch resumes from the
last resourceVersion and relists on 410 Gone, so API outages cost one list when it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3

from kupd.errors import NotFoundError, PermanentError, RetryableError
from kupd.kubeapi import ApiError, Client, Watch, path

__all__ = ["ApiError", "Client", "Conflict", "Forbidden", "Informer", "NotFound", "api_client", "call",
           "lease_path", "map_error", "patch_or_create", "path", "ready"]

log = logging.getLogger(__name__)


def api_client(kubeconfig: str, timeout: float = 10.0) -> Client:
    """A client from a kubeconfig file. kupd's own small client (kupd/kubeapi.py), not the
    official one: that one imports ~800 model classes and would double the daemon's memory."""
    return Client.from_kubeconfig(kubeconfig, timeout=timeout)


class Conflict(RetryableError):
    """Optimistic-concurrency conflict: re-read and try again."""


class NotFound(NotFoundError):
    pass


class Forbidden(PermanentError):
    pass


def map_error(e: Exception, what: str) -> Exception:
    if isinstance(e, ApiError):
        if e.status == 409:
            return Conflict(f"{what}: conflict", delay=0.2)
        if e.status == 404:
            return NotFound(f"{what}: not found")
        if e.status in (401, 403):
            return Forbidden(f"{what}: forbidden ({e.status}): {_reason(e)}")
        if e.status in (400, 422):
            return PermanentError(f"{what}: refused ({e.status}): {_reason(e)}")
        if e.status == 429:
            return RetryableError(f"{what}: throttled", delay=1.0)
        return RetryableError(f"{what}: API error {e.status}: {_reason(e)}", delay=2.0)
    return RetryableError(f"{what}: API unreachable: {type(e).__name__}: {str(e)[:200]}", delay=2.0)


def _reason(e: ApiError) -> str:
    return str(e.message or e.reason)[:500]


def call(fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> Any:
    """Run one API call, mapping its errors to kupd's error types."""
    try:
        return fn(*args, **kwargs)
    except (ApiError, urllib3.exceptions.HTTPError, OSError) as e:
        raise map_error(e, what) from e


def ready(obj: dict[str, Any]) -> bool:
    """Whether a Node's or Pod's status has condition Ready=True."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def lease_path(namespace: str, name: str | None = None) -> str:
    """A Lease (or, without a name, the Leases) in `namespace`: kupd's member, grant and coordinator objects."""
    return path("coordination.k8s.io", "v1", "leases", name, namespace)


def patch_or_create(api: Client, item: str, collection: str, body: dict[str, Any], what: str,
                    create_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge-patch the object at `item`, creating it in `collection` (from `create_body`, by
    default `body`) when it does not exist: one request for an object this process owns, no read."""
    try:
        new: dict[str, Any] = api.patch(item, body)
        return new
    except ApiError as e:
        if e.status != 404:
            raise map_error(e, what) from e
    except Exception as e:
        raise map_error(e, what) from e
    created: dict[str, Any] = call(api.create, what, collection, create_body or body)
    return created


def _older(obj: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether `obj` is an older version of `than`. resourceVersions are opaque by contract, but
    kube-apiserver's are etcd revisions (integers); anything else is never called older."""
    if than is None:
        return False
    a = str((obj.get("metadata") or {}).get("resourceVersion", ""))
    b = str((than.get("metadata") or {}).get("resourceVersion", ""))
    return a.isdigit() and b.isdigit() and int(a) < int(b)


class Informer:
    """List+watch one resource into a dict cache keyed by namespace/name; call `on_change` on every change.

    Objects are kept as plain dicts (the API's JSON), so custom and built-in resources look alike.
    `query` are the list's parameters, e.g. labelSelector or fieldSelector.
    """

    def __init__(self, name: str, api: Client, resource: str, on_change: Callable[[], None],
                 relevant: Callable[[dict[str, Any] | None, dict[str, Any]], bool] | None = None,
                 **query: Any) -> None:
        self.name = name
        # When given, a MODIFIED event calls on_change only if relevant(old, new) is true.
        self._relevant = relevant
        self._api = api
        self._resource = resource
        self._query = query
        self._on_change = on_change
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)
        self._watch: Watch | None = None

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.close()

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._cache.values())

    def put(self, obj: dict[str, Any]) -> None:
        """Record an object this process just wrote, before its watch event arrives."""
        with self._lock:
            if not _older(obj, self._cache.get(self.key(obj))):
                self._cache[self.key(obj)] = obj

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get(key)

    @staticmethod
    def key(obj: dict[str, Any]) -> str:
        md = obj.get("metadata", {})
        ns = md.get("namespace")
        return f"{ns}/{md['name']}" if ns else str(md["name"])

    def _relist(self) -> str:
        data = self._api.list(self._resource, **self._query)
        with self._lock:
            fresh = {self.key(o): o for o in data.get("items") or []}
            for k, o in fresh.items():
                mine = self._cache.get(k)
                if mine is not None and _older(o, mine):
                    fresh[k] = mine  # put() while the list was under way
            self._cache = fresh
        self.synced.set()
        self._on_change()
        return str(data["metadata"]["resourceVersion"])

    def _run(self) -> None:
        rv: str | None = None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                self._watch = self._api.watch(self._resource, resource_version=rv, timeout_seconds=240,
                                              **self._query)
                if self._stop.is_set():  # stop() ran while the watch was being opened
                    self._watch.close()
                    return
                started = time.monotonic()
                for ev in self._watch:
                    if self._stop.is_set():
                        return
                    typ, obj = ev["type"], ev["object"]
                    if typ == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # our resourceVersion is too old: relist
                            break
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if typ == "BOOKMARK":
                        continue
                    with self._lock:
                        if typ == "DELETED":
                            old = self._cache.pop(self.key(obj), None)
                        else:
                            old = self._cache.get(self.key(obj))
                            if _older(obj, old):
                                continue  # this process already put() a newer version
                            self._cache[self.key(obj)] = obj
                    if typ == "MODIFIED" and self._relevant is not None and not self._relevant(old, obj):
                        continue
                    self._on_change()
                backoff = 0.5
                if time.monotonic() - started < 1.0:
                    self._stop.wait(1.0)  # a watch the server ends at once must not become a busy loop
            except ApiError as e:
                if e.status == 410:
                    rv = None
                    continue
                # Refusals say the credential or its roles are wrong: the operator must see them.
                level = logging.WARNING if e.status in (401, 403) else logging.DEBUG
                log.log(level, "informer %s: %s; retrying in %.1fs", self.name, e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as e:
                # A dropped connection or an API outage: relist, since a restarted API server may
                # not know our resourceVersion any more.
                rv = None
                log.debug("informer %s: %s; relisting in %.1fs", self.name, e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
