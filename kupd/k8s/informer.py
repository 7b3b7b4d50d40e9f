"""A small informer: list+watch one resource into a local cache.

Watches keep a local cache per resource; a dropped watch resumes from the last resourceVersion
and relists on 410 Gone, so API outages cost one list when it returns.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kupd.k8s.client import ApiError, Client, Watch

log = logging.getLogger(__name__)


def _older(obj: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether `obj` is an older version of `than`. resourceVersions are opaque by contract, but
    kube-apiserver's are etcd revisions (integers); anything else is never called older."""
    if than is None:
        return False
    a = str((obj.get("metadata") or {}).get("resourceVersion", ""))
    b = str((than.get("metadata") or {}).get("resourceVersion", ""))
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Informer:
    """List+watch one resource into a dict cache keyed by namespace/name; call `on_change` on every change.

    Objects are kept as plain dicts (the API's JSON), so custom and built-in resources look alike.
    `query` are the list's parameters, e.g. labelSelector or fieldSelector.
    """

    def __init__(self, name: str, api: Client, resource: str, on_change: Callable[[], None],
                 relevant: Callable[[dict[str, Any] | None, dict[str, Any]], bool] | None = None,
                 watch_seconds: int = 240, **query: Any) -> None:
        self.name = name
        # Each watch asks the server to end it after watch_seconds plus up to 50 % jitter: every
        # re-open is one request, so long watches are what keeps an idle daemon quiet, and the
        # jitter keeps N daemons started together from re-opening together. Bookmarks keep the
        # resourceVersion fresh meanwhile, so a re-open resumes without a LIST.
        self.watch_seconds = watch_seconds
        # When given, a MODIFIED event calls on_change only if relevant(old, new) is true.
        self._relevant = relevant
        self._api = api
        self._resource = resource
        self._query = query
        self._on_change = on_change
        self._cache: dict[str, dict[str, Any]] = {}
        # When this process first saw each object's current version, on its monotonic clock: a
        # liveness judged from it needs no other node's clock, and it is kept while nobody looks
        # (an idle coordinator runs no rounds, yet must know at an operation's start how long
        # ago each member Lease last changed).
        self._observed: dict[str, float] = {}
        # A journal of changes for consumers that keep something derived per object (the
        # coordinator's views): key -> the sequence number of its last change (deletion included),
        # oldest first, so `changes` costs what changed, not the cache's size. A relist (or a
        # journal grown past twice the cache, by churn) starts it over: consumers rebuild.
        self._seq = 0
        self._journal: dict[str, int] = {}
        self._restarted = 0
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
            self._store(self.key(obj), obj)

    def _store(self, key: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Cache `obj` unless the cache holds a newer version (under the lock); returns the version
        it held. A new version is observed now and journaled (an object without one, always)."""
        old = self._cache.get(key)
        if _older(obj, old):
            return old
        self._cache[key] = obj
        if old is None or _rv(old) != _rv(obj):
            self._observed[key] = time.monotonic()
            self._note(key)
        elif not _rv(obj):
            self._note(key)
        return old

    def changes(self, since: int) -> tuple[int, list[str] | None]:
        """(the sequence number now, the keys changed after `since`, oldest first); None instead of
        the keys when the journal started over after `since` (a relist): read everything again."""
        with self._lock:
            if since < self._restarted or since > self._seq:
                return self._seq, None
            keys = []
            for key in reversed(self._journal):
                if self._journal[key] <= since:
                    break
                keys.append(key)
            keys.reverse()
            return self._seq, keys

    def _note(self, key: str) -> None:
        """Journal a change of `key` (under the lock)."""
        self._seq += 1
        self._journal.pop(key, None)
        self._journal[key] = self._seq
        if len(self._journal) > 2 * len(self._cache) + 64:
            self._restart()

    def _restart(self) -> None:
        self._seq += 1
        self._restarted = self._seq
        self._journal = {}

    def observed_at(self, key: str) -> float | None:
        """time.monotonic() when this informer first saw the cached version of `key`."""
        with self._lock:
            return self._observed.get(key)

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
        self._replace(data.get("items") or [])
        self.synced.set()
        self._on_change()
        return str(data["metadata"]["resourceVersion"])

    def _replace(self, items: list[dict[str, Any]]) -> None:
        """The cache becomes a list's `items` (objects put() meanwhile kept when newer)."""
        with self._lock:
            fresh = {self.key(o): o for o in items}
            now = time.monotonic()
            for k, o in fresh.items():
                mine = self._cache.get(k)
                if mine is not None and _older(o, mine):
                    fresh[k] = mine  # put() while the list was under way
                if mine is None or _rv(fresh[k]) != _rv(mine) or k not in self._observed:
                    self._observed[k] = now
            self._observed = {k: t for k, t in self._observed.items() if k in fresh}
            self._cache = fresh
            self._restart()

    def _consume(self, watch: Watch, rv: str | None) -> str | None:
        """Apply a watch's events to the cache until it ends; returns the resourceVersion to resume
        from (None: relist)."""
        for ev in watch:
            if self._stop.is_set():
                return rv
            typ, obj = ev["type"], ev["object"]
            if typ == "ERROR":
                if obj.get("code") == 410:
                    return None  # our resourceVersion is too old: relist
                raise RuntimeError(f"watch error: {obj.get('message')}")
            rv = obj.get("metadata", {}).get("resourceVersion", rv)
            if typ != "BOOKMARK" and self._apply(typ, obj):
                self._on_change()
        return rv

    def _apply(self, typ: str, obj: dict[str, Any]) -> bool:
        """Apply one event to the cache; whether it is a change that calls on_change."""
        with self._lock:
            key = self.key(obj)
            if typ == "DELETED":
                old = self._cache.pop(key, None)
                self._observed.pop(key, None)
                self._note(key)
            else:
                if _older(obj, self._cache.get(key)):
                    return False  # this process already put() a newer version
                old = self._store(key, obj)
        return not (typ == "MODIFIED" and self._relevant is not None and not self._relevant(old, obj))

    def _watch_timeout(self) -> int:
        return int(self.watch_seconds * (1 + 0.5 * random.random()))  # noqa: S311 (jitter, not a secret)

    def _run(self) -> None:
        rv: str | None = None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                self._watch = self._api.watch(self._resource, resource_version=rv,
                                              timeout_seconds=self._watch_timeout(),
                                              **self._query)
                if self._stop.is_set():  # stop() ran while the watch was being opened
                    self._watch.close()
                    return
                started = time.monotonic()
                rv = self._consume(self._watch, rv)
                if rv is None:
                    log.info("informer %s: resourceVersion expired (410 Gone); relisting", self.name)
                if self._stop.is_set():
                    return
                backoff = 0.5
                if time.monotonic() - started < 1.0:
                    self._stop.wait(1.0)  # a watch the server ends at once must not become a busy loop
            except ApiError as e:
                if e.status == 410:
                    log.info("informer %s: resourceVersion expired (410 Gone); relisting", self.name)
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
