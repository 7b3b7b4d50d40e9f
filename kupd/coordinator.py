"""The coordinator's reconcile loop, run while this daemon holds the coordinator Lease
(kupd/election.py).

Informers keep DirectUpdates, Leases and Nodes in memory; any change (or a 1 s tick, for lease
expiry, bake times and windows) runs the pure planner on the oldest unfinished DirectUpdate. A
new grant is delivered at once in the node's own grant Lease (kupd/grants.py: one small write,
seen by that node alone); the status is the record and is written coalesced by
kupd/statuswriter.py. A grant Lease is cleared only once the status that records the end of its
turn is stored, so a successor finds every turn either in the status or in a grant Lease (the
planner adopts the latter).

The planner's inputs come from kupd/liveness.py (Nodes and member Leases) and kupd/planinputs.py
(hops, preflight facts, removed APIs, health gates); the scheduler and the external health gates
are handed in (daemon.py wires them).
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kupd import clusterfacts, k8s, logsetup, planner, preflight
from kupd import protocol as p
from kupd.api.models import DirectUpdateSpec, HealthGates, parse_directupdate_spec
from kupd.conditions import Condition, set_condition
from kupd.election import Elector
from kupd.errors import KupdError, ValidationError
from kupd.grants import ActivityLease, GrantLeases
from kupd.liveness import Liveness, node_changed
from kupd.planinputs import PlanInputs
from kupd.statuswriter import EventWriter, StatusWriter

log = logging.getLogger(__name__)

__all__ = ["Coordinator", "Elector", "SchedulerLike"]


class SchedulerLike(Protocol):
    def reconcile(self) -> datetime | None:
        """One pass over the schedules; when the next one is due (None: on the next change only)."""


def _waiting(status: dict[str, Any]) -> bool:
    """Whether an operation waits for an operator or a window: paused by spec.paused or outside
    its maintenance window (not a health gate's pause between waves, nor a new one not planned yet)."""
    return status.get("phase") == planner.OP_PAUSED and any(
        c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") in ("Paused", "OutsideWindow")
        for c in status.get("conditions") or [])


class Coordinator:
    """Runs while this daemon holds the coordinator lease."""

    def __init__(self, api: k8s.Client, namespace: str, identity: str, member_duration: int,
                 elector: Elector, newest_patch: Callable[[str, dict[str, Any] | None], str],
                 on_plan: Callable[[str, dict[str, Any]], None] | None = None,
                 scheduler: SchedulerLike | None = None,
                 gates: Callable[[HealthGates], str | None] | None = None, watch_seconds: int = 240,
                 on_operations: Callable[[set[str]], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.identity = identity
        self.elector = elector
        self.on_plan = on_plan or (lambda name, status: None)
        self.on_operations = on_operations or (lambda names: None)
        self.on_refused = on_refused or (lambda name: None)
        self.scheduler = scheduler
        # DirectUpdates whose status the API server refused (uid -> why): they are no longer run,
        # and no longer hold up the operations queued behind them.
        self._refused: dict[str, str] = {}
        self._dirty = threading.Event()
        self._stop = threading.Event()
        # The parsed spec of each DirectUpdate, by uid and generation: parsed once, not every round.
        self._specs: dict[str, tuple[int, DirectUpdateSpec | ValidationError]] = {}
        # Whether the last round found nothing to do (no operation to run, no grant Lease to
        # clear): then only a change wakes a round, not the 1 s tick, so an idle coordinator's CPU
        # does not grow with N.
        self._idle = False
        self.ops = k8s.Informer("directupdates", api, k8s.kupd_path(k8s.DIRECTUPDATES), self._dirty.set,
                                watch_seconds=watch_seconds)
        # A renewal that changes nothing but renewTime needs no round: expiry is found by the
        # 1 s tick. Without this, every member's renewal (N every ~7 s) runs an O(N) round.
        self.leases = k8s.Informer("leases", api, k8s.lease_path(namespace), self._dirty.set,
                                   relevant=p.lease_changed, watch_seconds=watch_seconds)
        # The kubelet rewrites its Node's status every few minutes; only what the planner reads wakes a round.
        self.nodes = k8s.Informer("nodes", api, k8s.node_path(), self._dirty.set, relevant=node_changed,
                                  watch_seconds=watch_seconds)
        self.liveness = Liveness(self.nodes, self.leases, member_duration)
        self.inputs = PlanInputs(newest_patch, functools.partial(clusterfacts.gather, api),
                                 functools.partial(api.get_text, "/metrics"), gates)
        self.grants = GrantLeases(api, namespace, self.leases, elector)
        self.activity = ActivityLease(api, namespace, self.leases, elector, member_duration)
        self.status = StatusWriter(api, lambda: self.elector.leading, self.ops.put, self._dirty.set,
                                   refused=self._on_refused)
        self.events = EventWriter(api, identity)
        # Schedules: their own informers only wake the scheduler, which lists what it needs.
        self._sched_dirty = threading.Event()
        self._sched_dirty.set()
        self._sched_due: datetime | None = None
        self.schedules = [
            k8s.Informer(plural, api, k8s.kupd_path(plural), self._wake_scheduler, watch_seconds=watch_seconds)
            for plural in (k8s.SCHEDULEDUPDATES, k8s.UPDATESCHEDULES)
        ] if scheduler is not None else []

    def _wake_scheduler(self) -> None:
        self._sched_dirty.set()
        self._dirty.set()

    def start(self) -> None:
        for inf in (self.ops, self.leases, self.nodes, *self.schedules):
            inf.start()
        threading.Thread(target=self._loop, name="coordinator", daemon=True).start()
        self.events.start()
        self.status.start()
        self.grants.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.status.stop()
        self.events.stop()
        self.grants.stop()
        for inf in (self.ops, self.leases, self.nodes, *self.schedules):
            inf.stop()

    def _loop(self) -> None:
        for inf in (self.ops, self.leases, self.nodes):
            while not inf.synced.wait(1) and not self._stop.is_set():
                pass
        while not self._stop.is_set():
            changed = self._dirty.wait(1.0)
            self._dirty.clear()
            if self._stop.is_set() or not self.elector.leading:
                continue
            try:
                self._run_scheduler()
                if changed or not self._idle:
                    self.reconcile()
            except KupdError as e:
                log.warning("reconcile: %s", e)
                self._stop.wait(getattr(e, "delay", 1.0))
            except Exception:
                log.exception("reconcile failed")
                self._stop.wait(1.0)

    def _run_scheduler(self) -> None:
        if self.scheduler is None:
            return
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

    def _say_ended(self, obj: dict[str, Any], now: datetime) -> None:
        """An ended operation whose spec was edited afterwards says that it is not acted on."""
        md = obj["metadata"]
        op = planner.Operation(md["name"], md["uid"], int(md.get("generation", 1)), ValidationError("spec", "-"),
                               obj.get("status") or {})
        out = planner.edited_after_end(op, now)
        if out is not None:
            self._write_status(obj, out.status, out.events)

    def _write_status(self, obj: dict[str, Any], status: dict[str, Any],
                      events: list[planner.PlanEvent] | None = None) -> None:
        """Store a status outside the operation's own round, then queue its Events. A refused
        write sets the operation aside (`_on_refused`); an API error is logged, and the next round
        writes it again."""
        try:
            self.status.write(obj, status)
        except k8s.Invalid as e:
            self._on_refused(obj, e)
            return
        except KupdError as e:
            log.warning("writing the status of %s: %s", obj["metadata"]["name"], e)
            return
        if events:
            self.events.queue(obj, events)

    def reconcile(self) -> None:
        now = datetime.now(UTC)
        ops = sorted(self.ops.items(), key=lambda o: (o["metadata"].get("creationTimestamp", ""),
                                                      o["metadata"]["name"]))
        self.on_operations({o["metadata"]["name"] for o in ops})
        active = [o for o in ops if (o.get("status") or {}).get("phase") not in planner.TERMINAL_OP]
        for o in ops:
            self._say_ended(o, now)
        # The grant Leases, read once a round and kept current with this round's own writes.
        grants = self.grants.values()
        self._idle = not active and not any(grants.values())
        if not active:
            self.activity.announce(None)
            if any(grants.values()):
                self._clear_grants(None, ops, self.liveness.views()[1], grants)
            return
        # Liveness counts from when the informer first saw each Lease version (its own monotonic
        # clock), so an idle coordinator that ran no rounds still judges members rightly here.
        nodes, members = self.liveness.views()
        # Each DirectUpdate on its own: one whose status cannot be stored is set aside (it was
        # reported), so it holds up nobody; the oldest of the others runs, the rest wait their turn.
        runnable = [o for o in active if o["metadata"]["uid"] not in self._refused]
        first = runnable[0] if runnable else None
        for queued in runnable[1:]:
            self._queue_behind(queued, runnable[0], now)
        if first is not None and self.activity.activating(first, _waiting(self._planned(first))):
            # Members were idle (renewing hourly) until this operation's announcement: judging them
            # now would call every one of them lost. They renew within ACTIVATION_SPREAD of hearing
            # it; the next rounds plan with what they say.
            self._clear_grants(first["metadata"]["uid"], ops, members, grants)
            return
        if first is not None:
            try:
                self._reconcile_one(first, nodes, members, now, grants)
            except KupdError:
                raise
            except Exception as e:
                # Something in this operation kupd did not foresee (a status written by hand or by an
                # older kupd, say): it stays with this operation and says so; turns of other operations
                # are still cleared below, and the next round tries again.
                log.exception("evaluating DirectUpdate %s", first["metadata"]["name"])
                self._evaluation_failed(first, e, now)
            planned = self._planned(first)
            # Paused by spec.paused or outside its window, an operation may wait for days: members
            # stay idle meanwhile (turns in flight keep their own members active) and renew at once
            # when it resumes. A health gate's pause between waves is short: members stay active.
            self.activity.announce(None if _waiting(planned) else first)
        else:
            self.activity.announce(None)
        self._clear_grants(first["metadata"]["uid"] if first else None, ops, members, grants)

    def _queue_behind(self, queued: dict[str, Any], first: dict[str, Any], now: datetime) -> None:
        """Say in `queued`'s status that it waits for `first` (written only when that changes)."""
        st = dict(queued.get("status") or {})
        msg = f"queued behind {first['metadata']['name']}"
        if st.get("message") == msg and st.get("phase") == planner.OP_PENDING:
            return
        self._write_status(queued, planner.queued(st, msg, int(queued["metadata"].get("generation", 1)), now))

    def _on_refused(self, obj: dict[str, Any], err: k8s.Invalid) -> None:
        """A status the API server refused as invalid: a defect of kupd, reported as an Event, a log
        line and a metric. The operation is set aside so it blocks no other, and marked Failed
        with a minimal status (the phase and a bounded message are valid by construction) if it can be."""
        md = obj["metadata"]
        if md["uid"] in self._refused:
            return
        self._refused[md["uid"]] = str(err)
        msg = f"the API server refused the status kupd wrote: {err}"[:1000]
        log.error("DirectUpdate %s: %s", md["name"], msg)
        self.on_refused(md["name"])
        self.events.queue(obj, [planner.PlanEvent(str(planner.Reason.STATUS_REFUSED), msg, warning=True)])
        stored = dict(obj.get("status") or {})
        stored.update(phase=planner.OP_FAILED, message=f"kupd could not record this operation: {msg}"[:1000])
        try:
            self.status.write(obj, stored)
        except KupdError as e:
            log.error("DirectUpdate %s: even the minimal status was not stored: %s", md["name"], e)

    def _evaluation_failed(self, obj: dict[str, Any], e: Exception, now: datetime) -> None:
        status = copy.deepcopy(obj.get("status") or {})
        msg = (f"kupd could not evaluate this operation ({type(e).__name__}: {str(e)[:300]}); no node is "
               "granted until it can, and it is tried again every round")
        conds: list[dict[str, Any]] = status.setdefault("conditions", [])
        if any(c.get("type") == "Progressing" and c.get("message") == msg for c in conds):
            return
        set_condition(conds, Condition("Progressing", "False", str(planner.Reason.EVALUATION_FAILED), msg), now,
                      int(obj["metadata"].get("generation", 1)))
        self.events.queue(obj, [planner.PlanEvent(str(planner.Reason.EVALUATION_FAILED), msg, warning=True)])
        try:
            self.status.write(obj, status)
        except k8s.Invalid as e2:
            self._on_refused(obj, e2)
        except Exception as e2:
            log.warning("writing the status of %s: %s", obj["metadata"]["name"], e2)

    def _reconcile_one(self, obj: dict[str, Any], nodes: list[planner.NodeView],
                       members: dict[str, planner.MemberView], now: datetime, grants: dict[str, str]) -> None:
        md = obj["metadata"]
        uid = md["uid"]
        planned = self.status.planned.get(uid)
        if planned is not None and planned.get("epoch") != self.elector.epoch:
            # Planned in an earlier term of this daemon: another coordinator may have written
            # since, so plan from what is stored.
            self.status.planned.pop(uid, None)
            planned = None
        status = planned or obj.get("status") or {}
        spec = self._spec(obj)
        op = planner.Operation(md["name"], uid, int(md.get("generation", 1)), spec,
                               status, md.get("annotations") or {})
        typed = spec if isinstance(spec, DirectUpdateSpec) else None
        resolved, hop_errors = self.inputs.hops(typed, status, members, md["name"])
        result = planner.plan(op, nodes, members, epoch=self.elector.epoch, coordinator=self.identity,
                              now=now, resolved_minors=resolved, hop_errors=hop_errors,
                              gate_failure=self.inputs.gates(typed.health_gates if typed else None),
                              delivered=self.grants.delivered(grants),
                              preflight_facts=self._preflight(status, members) if typed else None,
                              deprecated_apis=self.inputs.deprecated_apis(status) if typed else None)
        with logsetup.log_context(operation=md["name"]):
            if result.status != status:
                self.status.planned[uid] = result.status
                self.on_plan(md["name"], result.status)
                self.events.queue(obj, result.events)
            # Deliver before recording: a turn must not wait for the large status write.
            if typed is not None:
                self.grants.deliver(obj, typed, self.status.planned.get(uid) or status, grants)
            self.status.offer(obj)

    def _spec(self, obj: dict[str, Any]) -> DirectUpdateSpec | ValidationError:
        md = obj["metadata"]
        generation = int(md.get("generation", 1))
        cached = self._specs.get(md["uid"])
        if cached is None or cached[0] != generation:
            try:
                parsed: DirectUpdateSpec | ValidationError = parse_directupdate_spec(obj)
            except ValidationError as e:
                parsed = e
            cached = self._specs[md["uid"]] = (generation, parsed)
        return cached[1]

    def _planned(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The latest status of `obj`: as planned, or as stored while nothing newer is planned."""
        return self.status.planned.get(obj["metadata"]["uid"]) or obj.get("status") or {}

    def _preflight(self, status: dict[str, Any], members: dict[str, planner.MemberView]
                   ) -> preflight.ClusterFacts | None:
        return self.inputs.preflight(status, members, self.nodes.items(), self.liveness.kupd_version)

    def _clear_grants(self, active_uid: str | None, ops: list[dict[str, Any]],
                      members: dict[str, planner.MemberView], grants: dict[str, str]) -> None:
        self.grants.clear(active_uid, ops, self.status.planned, members, grants)
