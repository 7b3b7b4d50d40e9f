"""The coordinator's writers: DirectUpdate status, coalesced on its own thread, and Events, best
effort on another.

The status grows with the cluster (~0.5 MB at 1000 nodes, and the API server needs ~0.5 s to
store it), so it is the record, not the handoff: grants travel in grant Leases at once, and the
status is written at most once per STATUS_INTERVAL or twice its last cost. Only the latest
planned status of an operation is written.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from kupd import k8s, rfc3339
from kupd.api.conform import conform
from kupd.api.models import DirectUpdateStatus
from kupd.errors import KupdError
from kupd.planner import PlanEvent

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
NODE_ONLY_EVENTS = frozenset({"StepStarted"})


class StatusWriter:
    """Statuses planned but not yet stored, by DirectUpdate uid (plans build on these), and the
    thread that stores them. `leading` gates every write; `stored` gets the object the API server
    returned (to keep the informer's cache current); `wake` runs after each write; `refused` gets
    an operation whose status the API server refused as invalid (it is not retried)."""

    def __init__(self, api: k8s.Client, leading: Callable[[], bool], stored: Callable[[dict[str, Any]], None],
                 wake: Callable[[], None],
                 refused: Callable[[dict[str, Any], k8s.Invalid], None] | None = None) -> None:
        self.api = api
        self.leading = leading
        self.stored = stored
        self.wake = wake
        self.refused = refused or (lambda obj, err: None)
        self.planned: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self._written_at = 0.0
        self._cost = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._job: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._writing = False

    def start(self) -> None:
        threading.Thread(target=self._loop, name="coordinator-status", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def offer(self, obj: dict[str, Any]) -> None:
        """Hand the planned status of `obj` to the writer thread if one is due and none is under way."""
        uid = obj["metadata"]["uid"]
        if uid not in self.planned or time.monotonic() - self._written_at < max(STATUS_INTERVAL, 2 * self._cost):
            return
        with self._lock:
            if not self._writing:
                self._job = (obj, self.planned[uid])
                self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            with self._lock:
                self._wake.clear()
                job, self._job = self._job, None
                self._writing = job is not None
            if job is None:
                continue
            obj, status = job
            uid = obj["metadata"]["uid"]
            try:
                self.write(obj, status)
                with self._lock:
                    # A newer plan made meanwhile stays to be written next.
                    if self.planned.get(uid) is status:
                        self.planned.pop(uid, None)
            except k8s.Invalid as e:
                with self._lock:
                    self.planned.pop(uid, None)
                self.refused(obj, e)
            except KupdError as e:
                log.warning("writing the status of %s: %s", obj["metadata"]["name"], e)
                self._written_at = time.monotonic()  # try again after the usual interval
            except Exception:
                log.exception("writing the status of %s", obj["metadata"]["name"])
                self._written_at = time.monotonic()
            finally:
                with self._lock:
                    self._writing = False
            self.wake()

    def write(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        """Store `status` as the status of `obj` now (this coordinator leading only)."""
        if not self.leading():
            return
        body = copy.deepcopy(obj)
        # Valid by construction: one value out of the CRD's bounds would make every write fail.
        body["status"] = conform(DirectUpdateStatus, status)
        t0 = time.monotonic()
        name = obj["metadata"]["name"]
        new = k8s.call(self.api.replace, f"write status of {name}",
                       k8s.kupd_path(k8s.DIRECTUPDATES, name, subresource="status"), body)
        self._written_at = time.monotonic()
        self._cost = self._written_at - t0
        self.writes += 1
        # Keep the cache current so the next round does not plan from the old status.
        self.stored(new)


def event_bodies(ref: dict[str, Any], ev: PlanEvent, identity: str, now: str) -> list[dict[str, Any]]:
    """The Events of one plan event: on the DirectUpdate `ref` names and, for a node's event, on
    its Node; a step's start on the Node only (it would drown the DirectUpdate's Events). Pure."""
    md = ref["metadata"]
    targets = [{"apiVersion": k8s.API_VERSION, "kind": "DirectUpdate", "name": md["name"], "uid": md["uid"]}]
    if ev.reason in NODE_ONLY_EVENTS and ev.node:
        targets = []
    if ev.node:
        targets.append({"apiVersion": "v1", "kind": "Node", "name": ev.node, "uid": ev.node})
    return [{
        "metadata": {"generateName": f"{md['name']}.", "namespace": "default"},
        "involvedObject": target, "reason": ev.reason, "message": ev.message[:1000],
        "type": "Warning" if ev.warning else "Normal",
        "source": {"component": "kupd", "host": identity},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": "kupd.io/coordinator", "reportingInstance": identity,
    } for target in targets]


class EventWriter:
    """Events are best effort and cost a POST each: sent from a queue, off the reconcile path."""

    def __init__(self, api: k8s.Client, identity: str) -> None:
        self.api = api
        self.identity = identity
        self._queue: queue.Queue[tuple[dict[str, Any], PlanEvent]] = queue.Queue(maxsize=10000)
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="coordinator-events", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def queue(self, obj: dict[str, Any], events: list[PlanEvent]) -> None:
        # Queue only what an Event names, not the whole object: at 1000 nodes each queued
        # DirectUpdate is ~0.5 MB and the queue holds many while the API server is slow.
        ref = {"metadata": {"name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"]}}
        for ev in events:
            try:
                self._queue.put_nowait((ref, ev))
            except queue.Full:
                log.debug("event queue full; dropping %s", ev.reason)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ref, ev = self._queue.get(timeout=1.0)
            except queue.Empty:
                continue
            for body in event_bodies(ref, ev, self.identity, rfc3339.now()):
                try:
                    self.api.create(k8s.path("", "v1", "events", namespace="default"), body)
                except Exception as e:  # Events are best effort; status is the record
                    log.debug("event %s: %s", ev.reason, e)

