"""Coordinator election and the coordinator's reconcile loop.

Election: a Lease, `kupd-coordinator`. A candidate takes it over only when it has watched the
holder's renewTime stand still for a whole lease duration (measured on its own clock, so clock
skew between nodes does not matter), and every takeover increments leaseTransitions: the epoch.
Writes use resourceVersion, so two candidates cannot both win.

Reconcile: informers keep DirectUpdates, Leases and Nodes in memory; any change (or a 1 s
tick, for lease expiry, bake times and windows) runs the pure planner on the oldest unfinished
DirectUpdate. A new grant is delivered at once in the node's own grant Lease (one small write,
seen by that node alone); the status, which grows with the cluster (~0.5 MB at 1000 nodes, and
the API server needs ~0.5 s to store it), is the record and is written coalesced, at most once
per STATUS_INTERVAL or twice its last cost. A grant Lease is cleared only once the status that
records the end of its turn is stored, so a successor finds every turn either in the status or
in a grant Lease (the planner adopts the latter).
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kupd import kube, logsetup, planner
from kupd import protocol as p
from kupd.errors import KupdError
from kupd.member import micro_time
from kupd.versions import Version

log = logging.getLogger(__name__)

GATE_SECONDS = 5.0
STATUS_INTERVAL = 1.0
NODE_ONLY_EVENTS = frozenset({"StepStarted"})
# A member Lease's own duration, as its node wrote it, bounded: a node cannot make itself immortal.
MEMBER_DURATION_BOUNDS = (5, 600)


class StatusRefused(KupdError):
    """The API server refused a status write as invalid (400/422): retrying the same cannot help."""


def _in_flight(status: dict[str, Any]) -> set[str]:
    return {e["name"] for e in status.get("nodes") or [] if e.get("phase") in planner.IN_FLIGHT and e.get("grant")}


def _report_key(anns: dict[str, Any]) -> tuple[Any, ...]:
    r = p.Report.decode(anns.get(p.ANN_REPORT))
    return (r.uid, r.granted_at, r.phase, r.reason, tuple(r.versions)) if r else ()


def _lease_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a Lease's change needs a round now. A renewal that moves only renewTime does not:
    expiry is found by the 1 s tick. Nor does a report that moves only to the next step: the
    record of steps is coalesced anyway, and the tick picks it up. What frees or holds a slot
    (a turn's start, its end, a drain blocked) and changed facts do."""
    if (new.get("metadata") or {}).get("name", "").startswith(p.GRANT_LEASE_PREFIX):
        return False  # grant Leases are this coordinator's own writes
    if old is None:
        return True
    o, n = old.get("spec") or {}, new.get("spec") or {}
    if o.get("holderIdentity") != n.get("holderIdentity") or o.get("leaseDurationSeconds") != n.get(
            "leaseDurationSeconds"):
        return True
    oa = dict((old.get("metadata") or {}).get("annotations") or {})
    na = dict((new.get("metadata") or {}).get("annotations") or {})
    if oa.get(p.ANN_REPORT) != na.get(p.ANN_REPORT) and _report_key(oa) != _report_key(na):
        return True
    oa.pop(p.ANN_REPORT, None)
    na.pop(p.ANN_REPORT, None)
    return oa != na


class Elector:
    def __init__(self, api: kube.Client, namespace: str, identity: str, duration: int) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.duration = duration
        self.epoch = -1
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._path = kube.lease_path(namespace, p.COORDINATOR_LEASE)

    @property
    def leading(self) -> bool:
        return self.epoch >= 0 and time.monotonic() - self._renewed_at < self.duration

    def try_acquire_or_renew(self) -> bool:
        """One election round; returns whether this daemon is the coordinator afterwards."""
        now = micro_time()
        # Leadership counts from before the request: the holder must give up no later than a
        # successor (who measures from the renewTime it saw) may take over.
        started = time.monotonic()
        try:
            lease = self.api.get(self._path)
        except kube.ApiError as e:
            if e.status != 404:
                raise kube.map_error(e, "read coordinator lease") from e
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": p.COORDINATOR_LEASE, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self.api.create(kube.lease_path(self.namespace), body)
            except kube.ApiError as e2:
                if e2.status == 409:
                    return False
                raise kube.map_error(e2, "create coordinator lease") from e2
            except Exception as e2:
                raise kube.map_error(e2, "create coordinator lease") from e2
            return self._won(0, started)
        except Exception as e:
            raise kube.map_error(e, "read coordinator lease") from e

        spec = lease.setdefault("spec", {})
        holder, renew = str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")
        mono = time.monotonic()
        if (holder, renew) != self._observed:
            self._observed, self._observed_at = (holder, renew), mono
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            spec["renewTime"] = now
            if self._replace(lease):
                return self._won(transitions, started)
            return False
        expired = not holder or mono - self._observed_at > int(spec.get("leaseDurationSeconds") or self.duration)
        if not expired:
            self.epoch = -1
            return False
        spec.update(holderIdentity=self.identity, acquireTime=now, renewTime=now,
                    leaseDurationSeconds=self.duration, leaseTransitions=transitions + 1)
        if self._replace(lease):
            log.info("became coordinator at epoch %d (previous holder %r)", transitions + 1, holder)
            return self._won(transitions + 1, started)
        return False

    def _replace(self, lease: dict[str, Any]) -> bool:
        # PUT with the resourceVersion just read: of two candidates, only one can win.
        try:
            self.api.replace(self._path, lease)
            return True
        except kube.ApiError as e:
            if e.status == 409:
                self.epoch = -1
                return False
            raise kube.map_error(e, "update coordinator lease") from e
        except Exception as e:
            raise kube.map_error(e, "update coordinator lease") from e

    def _won(self, epoch: int, started: float) -> bool:
        self.epoch = epoch
        self._renewed_at = started
        return True

    def release(self) -> None:
        """Give the lease up on a clean shutdown so the next coordinator need not wait it out."""
        if self.epoch < 0:
            return
        try:
            lease = self.api.get(self._path)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.api.replace(self._path, lease)
        except Exception as e:
            log.debug("releasing the coordinator lease: %s", e)
        self.epoch = -1


class Coordinator:
    """Runs while this daemon holds the coordinator lease."""

    def __init__(self, api: kube.Client, namespace: str, identity: str, member_duration: int,
                 elector: Elector, newest_patch: Callable[[str], str],
                 validate_spec: Callable[[dict[str, Any]], Any] | None = None,
                 on_plan: Callable[[str, dict[str, Any]], None] | None = None,
                 on_operations: Callable[[set[str]], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.member_duration = member_duration
        self.elector = elector
        self.newest_patch = newest_patch
        self.validate_spec = validate_spec
        self.on_plan = on_plan or (lambda name, status: None)
        self.on_operations = on_operations or (lambda names: None)
        self.on_refused = on_refused or (lambda name: None)
        # DirectUpdates whose status the API server refused (uid -> why): they are no longer run,
        # and no longer hold up the operations queued behind them.
        self._refused: dict[str, str] = {}
        # Liveness without node clocks: when this coordinator saw each member Lease change, on its
        # own monotonic clock (name -> (resourceVersion, when first seen)). renewTime is never used.
        self._seen: dict[str, tuple[str, float]] = {}
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._resolved: dict[tuple[int, int], str] = {}
        self._gate_cache: tuple[str, float, str | None] | None = None
        self.writes = 0
        self.grant_writes = 0
        # Statuses planned but not yet stored, by DirectUpdate uid; plans build on these.
        self._planned: dict[str, dict[str, Any]] = {}
        self._written_at = 0.0
        self._write_cost = 0.0
        # The status write runs on its own thread: at 1000 nodes the API server needs ~0.5 s to
        # store it, and grants must not wait for that. Only the latest planned status is written.
        self._write_lock = threading.Lock()
        self._write_wake = threading.Event()
        self._to_write: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._writing = False
        # Decoded member Leases by resourceVersion: a round re-reads N Leases, most unchanged.
        self._decoded: dict[str, tuple[str, datetime | None, int, Version | None, p.Report | None]] = {}
        self._grant_memo: dict[str, p.Grant | None] = {}
        self.ops = kube.Informer("directupdates", api, kube.path(p.GROUP, p.VERSION, p.DIRECTUPDATES),
                                 self._dirty.set)
        # A renewal that changes nothing but renewTime needs no round: expiry is found by the
        # 1 s tick. Without this, every member's renewal (N every ~7 s) runs an O(N) round.
        self.leases = kube.Informer("leases", api, kube.lease_path(namespace), self._dirty.set,
                                    relevant=_lease_changed)
        # Events are best effort and cost two POSTs each: send them off the reconcile path.
        self._events: queue.Queue[tuple[dict[str, Any], planner.PlanEvent]] = queue.Queue(maxsize=10000)
        self.nodes = kube.Informer("nodes", api, kube.path("", "v1", "nodes"), self._dirty.set)
        # Schedules: their own informers only wake the scheduler, which lists what it needs.
        self._sched_dirty = threading.Event()
        self._sched_dirty.set()
        self._sched_due: datetime | None = None
        self.schedules = [
            kube.Informer(plural, api, kube.path(p.GROUP, p.VERSION, plural), self._wake_scheduler)
            for plural in (p.SCHEDULEDUPDATES, p.UPDATESCHEDULES)
        ]
        from kupd.clock import SystemClock
        from kupd.scheduler import Scheduler

        self.scheduler = Scheduler(api, SystemClock(), newest_patch)

    def _wake_scheduler(self) -> None:
        self._sched_dirty.set()
        self._dirty.set()

    def start(self) -> None:
        for inf in (self.ops, self.leases, self.nodes, *self.schedules):
            inf.start()
        threading.Thread(target=self._loop, name="coordinator", daemon=True).start()
        threading.Thread(target=self._event_loop, name="coordinator-events", daemon=True).start()
        threading.Thread(target=self._write_loop, name="coordinator-status", daemon=True).start()

    def _event_loop(self) -> None:
        while not self._stop.is_set():
            try:
                obj, ev = self._events.get(timeout=1.0)
            except queue.Empty:
                continue
            self._event(obj, ev)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._write_wake.set()
        for inf in (self.ops, self.leases, self.nodes, *self.schedules):
            inf.stop()

    def _loop(self) -> None:
        for inf in (self.ops, self.leases, self.nodes):
            while not inf.synced.wait(1) and not self._stop.is_set():
                pass
        while not self._stop.is_set():
            self._dirty.wait(1.0)
            self._dirty.clear()
            if self._stop.is_set() or not self.elector.leading:
                continue
            try:
                self._run_scheduler()
                self.reconcile()
            except KupdError as e:
                log.warning("reconcile: %s", e)
                self._stop.wait(getattr(e, "delay", 1.0))
            except Exception:
                log.exception("reconcile failed")
                self._stop.wait(1.0)

    def _run_scheduler(self) -> None:
        now = datetime.now(UTC)
        if not self._sched_dirty.is_set() and (self._sched_due is None or now < self._sched_due):
            return
        self._sched_dirty.clear()
        try:
            self._sched_due = self.scheduler.reconcile()
        except KupdError as e:
            log.warning("scheduler: %s", e)
            self._sched_due = None
            self._sched_dirty.set()

    # -- one round -------------------------------------------------------------------------
    def _views(self, now: datetime) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
        nodes = []
        for n in self.nodes.items():
            labels = n["metadata"].get("labels") or {}
            nodes.append(planner.NodeView(n["metadata"]["name"], labels, p.LABEL_CONTROL_PLANE in labels,
                                          kube.ready(n)))
        members: dict[str, planner.MemberView] = {}
        mono = time.monotonic()
        present = set()
        for lease in self.leases.items():
            name = lease["metadata"]["name"]
            if not name.startswith(p.MEMBER_LEASE_PREFIX):
                continue
            present.add(name)
            node = name[len(p.MEMBER_LEASE_PREFIX):]
            rv = str(lease["metadata"].get("resourceVersion", ""))
            cached = self._decoded.get(name)
            if cached is None or cached[0] != rv or not rv:
                spec = lease.get("spec") or {}
                anns = lease["metadata"].get("annotations") or {}
                kubelet = anns.get(p.ANN_KUBELET)
                cached = (rv, planner.parse_time(spec.get("renewTime")),
                          int(spec.get("leaseDurationSeconds") or self.member_duration),
                          Version.parse(kubelet) if kubelet else None, p.Report.decode(anns.get(p.ANN_REPORT)))
                self._decoded[name] = cached
            _, _renew, duration, kubelet_version, report = cached
            seen = self._seen.get(name)
            if seen is None or seen[0] != rv or not rv:
                seen = self._seen[name] = (rv, mono)
            lo, hi = MEMBER_DURATION_BOUNDS
            alive = mono - seen[1] < min(max(duration, lo), hi)
            members[node] = planner.MemberView(node, alive, kubelet_version, report)
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
        return nodes, members

    def _resolve(self, hops_needed: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
        for mk in hops_needed:
            if mk not in self._resolved:
                self._resolved[mk] = self.newest_patch(f"v{mk[0]}.{mk[1]}")
        return self._resolved

    def reconcile(self) -> None:
        now = datetime.now(UTC)
        ops = sorted(self.ops.items(), key=lambda o: (o["metadata"].get("creationTimestamp", ""),
                                                      o["metadata"]["name"]))
        self.on_operations({o["metadata"]["name"] for o in ops})
        active = [o for o in ops if (o.get("status") or {}).get("phase") not in planner.TERMINAL_OP]
        # The grant Leases, read once a round and kept current with this round's own writes.
        grants = self._grant_leases()
        # Every round, operation or not: liveness counts from when each Lease change was seen.
        nodes, members = self._views(now)
        if not active:
            if any(grants.values()):
                self._clear_grants(None, ops, members, grants)
            return
        # Each DirectUpdate on its own: one whose status cannot be stored is set aside (it was
        # reported), so it holds up nobody; the oldest of the others runs, the rest wait their turn.
        runnable = [o for o in active if o["metadata"]["uid"] not in self._refused]
        first = runnable[0] if runnable else None
        for queued in runnable[1:]:
            assert first is not None
            st = dict(queued.get("status") or {})
            msg = f"queued behind {first['metadata']['name']}"
            if st.get("message") != msg or st.get("phase") != planner.OP_PENDING:
                st = planner.queued(st, msg, int(queued["metadata"].get("generation", 1)), now)
                try:
                    self._write(queued, st)
                except StatusRefused as e:
                    self._on_refused(queued, e)
                except KupdError as e:
                    log.warning("writing the status of %s: %s", queued["metadata"]["name"], e)
        if first is not None:
            try:
                self._reconcile_one(first, nodes, members, now, grants)
            except KupdError:
                raise
            except Exception:
                # A defect planning one operation must not stop the others' grant Leases being
                # cleared below; it is logged with its traceback and tried again next round.
                log.exception("planning %s", first["metadata"]["name"])
        self._clear_grants(first["metadata"]["uid"] if first else None, ops, members, grants)

    def _reconcile_one(self, obj: dict[str, Any], nodes: list[planner.NodeView],
                       members: dict[str, planner.MemberView], now: datetime, grants: dict[str, str]) -> None:
        md = obj["metadata"]
        uid = md["uid"]
        planned = self._planned.get(uid)
        if planned is not None and planned.get("epoch") != self.elector.epoch:
            # Planned in an earlier term of this daemon: another coordinator may have written
            # since, so plan from what is stored.
            self._planned.pop(uid, None)
            planned = None
        status = planned or obj.get("status") or {}
        resolved: dict[tuple[int, int], str] = {}
        hops = status.get("hops") or []
        try:
            target = Version.parse(str((obj.get("spec") or {}).get("version", "")))
            # Resolve the intermediate minors when hops are planned: at the start, and again
            # when spec.version was raised past the last hop.
            if not hops or Version.parse(str(hops[-1])) < target:
                versions = [m.kubelet for m in members.values() if m.kubelet]
                if versions and min(versions) < target:
                    resolved = self._resolve(planner.hop_minors(min(versions), target)[:-1])
        except KupdError as e:
            log.warning("resolving hops for %s: %s", md["name"], e)
        op = planner.Operation(md["name"], uid, int(md.get("generation", 1)), obj.get("spec") or {},
                               status, md.get("annotations") or {})
        result = planner.plan(op, nodes, members, epoch=self.elector.epoch, coordinator=self.identity,
                              now=now, resolved_minors=resolved, validate_spec=self.validate_spec,
                              gate_failure=self._gates((obj.get("spec") or {}).get("healthGates")),
                              delivered=self._delivered(grants))
        with logsetup.log_context(operation=md["name"]):
            if result.status != status:
                self._planned[uid] = result.status
                self.on_plan(md["name"], result.status)
                self._queue_events(obj, result.events)
            # Deliver before recording: a turn must not wait for the large status write.
            self._deliver(obj, self._planned.get(uid) or status, grants)
            if uid in self._planned and time.monotonic() - self._written_at >= max(STATUS_INTERVAL,
                                                                                    2 * self._write_cost):
                with self._write_lock:
                    if not self._writing:
                        self._to_write = (obj, self._planned[uid])
                        self._write_wake.set()

    def _write_loop(self) -> None:
        """Store the planned status handed over by the reconcile loop, one write at a time."""
        while not self._stop.is_set():
            self._write_wake.wait(1.0)
            with self._write_lock:
                self._write_wake.clear()
                job, self._to_write = self._to_write, None
                self._writing = job is not None
            if job is None:
                continue
            obj, status = job
            uid = obj["metadata"]["uid"]
            try:
                self._write(obj, status)
                with self._write_lock:
                    # A newer plan made meanwhile stays to be written next.
                    if self._planned.get(uid) is status:
                        self._planned.pop(uid, None)
            except StatusRefused as e:
                with self._write_lock:
                    self._planned.pop(uid, None)
                self._on_refused(obj, e)
            except KupdError as e:
                log.warning("writing the status of %s: %s", obj["metadata"]["name"], e)
                self._written_at = time.monotonic()  # try again after the usual interval
            except Exception:
                log.exception("writing the status of %s", obj["metadata"]["name"])
                self._written_at = time.monotonic()
            finally:
                with self._write_lock:
                    self._writing = False
            self._dirty.set()

    # -- grant Leases ------------------------------------------------------------------------
    def _grant_leases(self) -> dict[str, str]:
        """node -> the value of its grant Lease's annotation, as last seen or written."""
        out = {}
        for lease in self.leases.items():
            name = lease["metadata"]["name"]
            if name.startswith(p.GRANT_LEASE_PREFIX):
                out[name[len(p.GRANT_LEASE_PREFIX):]] = p.grant_value(lease)
        return out

    def _decode_grant(self, value: str) -> p.Grant | None:
        if value not in self._grant_memo:
            if len(self._grant_memo) > 10000:
                self._grant_memo.clear()
            self._grant_memo[value] = p.Grant.decode(value)
        return self._grant_memo[value]

    def _delivered(self, grants: dict[str, str]) -> dict[str, p.Grant]:
        out = {}
        for node, value in grants.items():
            g = self._decode_grant(value) if value else None
            if g is not None:
                out[node] = g
        return out

    def _deliver(self, obj: dict[str, Any], status: dict[str, Any], grants: dict[str, str]) -> None:
        """Write every in-flight grant of `status` that its node's grant Lease does not carry yet."""
        md = obj["metadata"]
        for e in status.get("nodes") or []:
            if e.get("phase") not in planner.IN_FLIGHT or not e.get("grant"):
                continue
            grant = p.Grant.from_record(md["name"], md["uid"], e, obj.get("spec") or {})
            have = grants.get(e["name"])
            if not have or self._decode_grant(have) != grant:
                self._write_grant(e["name"], grant.encode(), grants)

    def _clear_grants(self, active_uid: str | None, ops: list[dict[str, Any]],
                      members: dict[str, planner.MemberView], grants: dict[str, str]) -> None:
        """Clear the grant Leases of turns that are over.

        A turn of the operation being run is over once the stored status records it so (until
        then a successor needs the Lease to adopt it). A turn of any other operation (finished,
        failed or deleted while the node still worked) is over when its node reports so.
        """
        by_uid = {o["metadata"]["uid"]: o for o in ops}
        for node, value in list(grants.items()):
            if not value:
                continue
            g = self._decode_grant(value)
            if g is not None and g.uid == active_uid and g.uid in by_uid:
                keep = (node in _in_flight(by_uid[g.uid].get("status") or {})
                        or node in _in_flight(self._planned.get(g.uid) or {}))
            else:
                keep = g is not None and not planner.turn_over(members.get(node), g)
            if not keep:
                self._write_grant(node, "", grants)

    def _write_grant(self, node: str, value: str, grants: dict[str, str]) -> None:
        if not self.elector.leading:
            return
        name = p.grant_lease_name(node)
        # The epoch annotation lets admission policy kupd.io-grants check it against the coordinator
        # Lease: a deposed coordinator's late write is refused by the API server itself.
        anns = {p.ANN_GRANT: value, p.ANN_EPOCH: str(self.elector.epoch)}
        body = {"metadata": {"name": name, "namespace": self.namespace, "annotations": anns,
                             "labels": {"app.kubernetes.io/name": "kupd", "kupd.io/node": node,
                                        p.LABEL_LEASE_KIND: p.LEASE_KIND_GRANT}},
                "spec": {"holderIdentity": node}}
        what = f"{'clear' if not value else 'deliver'} grant of {node}"
        new = kube.patch_or_create(self.api, kube.lease_path(self.namespace, name), kube.lease_path(self.namespace),
                                   body, what)
        self.grant_writes += 1
        self.leases.put(new)
        grants[node] = value
        if value:
            log.info("delivered grant to %s", node)

    def _gates(self, gates: dict[str, Any] | None) -> str | None:
        """External health gates, evaluated at most every GATE_SECONDS (they cost a query each)."""
        if not gates:
            return None
        now = time.monotonic()
        key = repr(sorted(gates.items()))
        if self._gate_cache and self._gate_cache[0] == key and now - self._gate_cache[1] < GATE_SECONDS:
            return self._gate_cache[2]
        from kupd import health

        result = health.evaluate(self.api, gates)
        self._gate_cache = (key, now, result)
        return result

    def _on_refused(self, obj: dict[str, Any], err: StatusRefused) -> None:
        """A status the API server refused as invalid: a defect of kupd, reported as an Event, a log
        line and a metric. The operation is set aside so it blocks no other, and marked Failed
        with a minimal status (the phase and a message are valid by construction) if it can be."""
        md = obj["metadata"]
        if md["uid"] in self._refused:
            return
        self._refused[md["uid"]] = str(err)
        msg = f"the API server refused the status kupd wrote: {err}"[:1000]
        log.error("DirectUpdate %s: %s", md["name"], msg)
        self.on_refused(md["name"])
        self._queue_events(obj, [planner.PlanEvent(str(planner.Reason.STATUS_REFUSED), msg, warning=True)])
        stored = dict(obj.get("status") or {})
        stored.update(phase=planner.OP_FAILED, message=f"kupd could not record this operation: {msg}"[:1000])
        try:
            self._write(obj, stored)
        except KupdError as e:
            log.error("DirectUpdate %s: even the minimal status was not stored: %s", md["name"], e)

    def _write(self, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if not self.elector.leading:
            return
        body = copy.deepcopy(obj)
        body["status"] = status
        t0 = time.monotonic()
        what = f"write status of {obj['metadata']['name']}"
        try:
            new = self.api.replace(kube.path(p.GROUP, p.VERSION, p.DIRECTUPDATES, obj["metadata"]["name"],
                                             subresource="status"), body)
        except kube.ApiError as e:
            if e.status in (400, 422):
                raise StatusRefused(f"{what}: refused ({e.status}): {str(e.message or e.reason)[:500]}") from e
            raise kube.map_error(e, what) from e
        except Exception as e:
            raise kube.map_error(e, what) from e
        self._written_at = time.monotonic()
        self._write_cost = self._written_at - t0
        self.writes += 1
        # Keep the cache current so the next round does not plan from the old status.
        self.ops.put(new)

    def _queue_events(self, obj: dict[str, Any], events: list[planner.PlanEvent]) -> None:
        # Queue only what an Event names, not the whole object: at 1000 nodes each queued
        # DirectUpdate is ~0.5 MB and the queue holds many while the API server is slow.
        ref = {"metadata": {"name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"]}}
        for ev in events:
            try:
                self._events.put_nowait((ref, ev))
            except queue.Full:
                log.debug("event queue full; dropping %s", ev.reason)

    def _event(self, obj: dict[str, Any], ev: planner.PlanEvent) -> None:
        md = obj["metadata"]
        now = micro_time()
        targets = [{"apiVersion": f"{p.GROUP}/{p.VERSION}", "kind": "DirectUpdate", "name": md["name"],
                    "uid": md["uid"]}]
        if ev.reason in NODE_ONLY_EVENTS and ev.node:
            targets = []  # per-step detail: on the Node only, it would drown the DirectUpdate's Events
        if ev.node:
            targets.append({"apiVersion": "v1", "kind": "Node", "name": ev.node, "uid": ev.node})
        for ref in targets:
            body = {
                "metadata": {"generateName": f"{md['name']}.", "namespace": "default"},
                "involvedObject": ref, "reason": ev.reason, "message": ev.message[:1000],
                "type": "Warning" if ev.warning else "Normal",
                "source": {"component": "kupd", "host": self.identity},
                "firstTimestamp": now[:19] + "Z", "lastTimestamp": now[:19] + "Z", "count": 1,
                "reportingComponent": "kupd.io/coordinator", "reportingInstance": self.identity,
            }
            try:
                self.api.create(kube.path("", "v1", "events", namespace="default"), body)
            except Exception as e:  # Events are best effort; status is the record
                log.debug("event %s: %s", ev.reason, e)
