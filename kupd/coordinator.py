"""The coordinator's reconcile loop, run while this daemon holds the coordinator Lease
(kupd/election.py).

Informers keep DirectUpdates, Leases and Nodes in memory; any change (or a 1 s tick, for lease
expiry, bake times and windows) runs the pure planner on the oldest unfinished DirectUpdate. A
new grant is delivered at once in the node's own grant Lease (one small write, seen by that node
alone); the status is the record and is written coalesced by kupd/statuswriter.py. A grant Lease
is cleared only once the status that records the end of its turn is stored, so a successor finds
every turn either in the status or in a grant Lease (the planner adopts the latter).

The scheduler and the external health gates are handed in (daemon.py wires them); the Lease
bodies are protocol.py's pure codecs.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any, Protocol

from kupd import hazards, k8s, logsetup, planner, preflight, untrusted
from kupd import protocol as p
from kupd.api.models import DirectUpdateSpec, HealthGates, parse_directupdate_spec, to_wire
from kupd.conditions import Condition, set_condition
from kupd.election import Elector
from kupd.errors import KupdError, ValidationError
from kupd.statuswriter import ClearWriter, EventWriter, StatusWriter
from kupd.versions import Version

log = logging.getLogger(__name__)

PREFLIGHT_SECONDS = 5.0
RESOLVE_RETRY_SECONDS = 30.0
DEPRECATED_APIS_SECONDS = 60.0
# A member Lease's own duration, as its node wrote it, bounded: a node cannot make itself immortal.
MEMBER_DURATION_BOUNDS = (5, 600)
# Grant Leases written at once when a round gives several turns (a wave ends together): one after
# the other, the last of 50 waited 50 API calls (7 s at 0.15 s each on a loaded API server).
DELIVERY_WRITERS = 16
# Seconds an operation's announcement gives idle members to renew before the planner judges them:
# they renew within member.ACTIVATION_SPREAD of hearing it, through two watch deliveries.
ACTIVATION_GRACE = 5.0

__all__ = ["Coordinator", "Elector", "SchedulerLike"]


class SchedulerLike(Protocol):
    def reconcile(self) -> datetime | None:
        """One pass over the schedules; when the next one is due (None: on the next change only)."""


def _node_facts(node: dict[str, Any]) -> tuple[Any, ...]:
    md, spec = node.get("metadata") or {}, node.get("spec") or {}
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return (md.get("labels"), k8s.ready(node), spec.get("unschedulable"), info.get("kubeletVersion"))


def _node_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a Node's change can change a plan: its labels, readiness, cordon or kubelet version,
    not the heartbeat times the kubelet rewrites every few minutes."""
    return old is None or _node_facts(old) != _node_facts(new)


def _waiting(status: dict[str, Any]) -> bool:
    """Whether an operation waits for an operator or a window: paused by spec.paused or outside
    its maintenance window (not a health gate's pause between waves, nor a new one not planned yet)."""
    return status.get("phase") == planner.OP_PAUSED and any(
        c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") in ("Paused", "OutsideWindow")
        for c in status.get("conditions") or [])


def _in_flight(status: dict[str, Any]) -> set[str]:
    return {e["name"] for e in status.get("nodes") or [] if e.get("phase") in planner.IN_FLIGHT and e.get("grant")}


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
        self.namespace = namespace
        self.identity = identity
        self.member_duration = member_duration
        self.elector = elector
        self.newest_patch = newest_patch
        self.on_plan = on_plan or (lambda name, status: None)
        self.on_operations = on_operations or (lambda names: None)
        self.on_refused = on_refused or (lambda name: None)
        # DirectUpdates whose status the API server refused (uid -> why): they are no longer run,
        # and no longer hold up the operations queued behind them.
        self._refused: dict[str, str] = {}
        # Liveness without node clocks: when this coordinator saw each member Lease change, on its
        # own monotonic clock (name -> (resourceVersion, when first seen)). renewTime is never used.
        self._seen: dict[str, tuple[str, float]] = {}
        self.scheduler = scheduler
        self.evaluate_gates = gates
        self._dirty = threading.Event()
        self._stop = threading.Event()
        # (package source, minor) -> (newest patch, error, when asked)
        self._resolved: dict[tuple[str, tuple[int, int]], tuple[str, str | None, float]] = {}
        self._preflight_cache: tuple[float, preflight.ClusterFacts] | None = None
        self._apis_cache: tuple[float, list[hazards.DeprecatedApi] | None] | None = None
        self.grant_writes = 0
        # The parsed spec of each DirectUpdate, by uid and generation: parsed once, not every round.
        self._specs: dict[str, tuple[int, DirectUpdateSpec | ValidationError]] = {}
        # Decoded member Leases by resourceVersion: a round re-reads N Leases, most unchanged.
        self._decoded: dict[str, tuple[str, p.MemberLease]] = {}
        # The views themselves, by resourceVersion (and liveness): a round builds none for what did
        # not change (at 1000 nodes, parsing every kubelet version each round cost as much as the plan).
        self._node_views: dict[str, tuple[str, planner.NodeView]] = {}
        self._member_views: dict[str, tuple[tuple[str, bool, Version | None], planner.MemberView]] = {}
        self._grant_memo: dict[str, p.Grant | None] = {}
        # Whether the last round found nothing to do (no operation to run, no grant Lease to
        # clear): then only a change wakes a round, not the 1 s tick, so an idle coordinator's CPU
        # does not grow with N.
        self._idle = False
        # When the activity Lease last named an operation (monotonic), None while idle.
        self._activated_at: float | None = None
        self.ops = k8s.Informer("directupdates", api, k8s.kupd_path(k8s.DIRECTUPDATES), self._dirty.set,
                                watch_seconds=watch_seconds)
        # A renewal that changes nothing but renewTime needs no round: expiry is found by the
        # 1 s tick. Without this, every member's renewal (N every ~7 s) runs an O(N) round.
        self.leases = k8s.Informer("leases", api, k8s.lease_path(namespace), self._dirty.set,
                                   relevant=p.lease_changed, watch_seconds=watch_seconds)
        # The kubelet rewrites its Node's status every few minutes; only what the planner reads wakes a round.
        self.nodes = k8s.Informer("nodes", api, k8s.node_path(), self._dirty.set, relevant=_node_changed,
                                  watch_seconds=watch_seconds)
        self.status = StatusWriter(api, lambda: self.elector.leading, self.ops.put, self._dirty.set,
                                   refused=self._on_refused)
        self.events = EventWriter(api, identity)
        self.clears = ClearWriter(lambda node: self._write_grant(node, "", {}))
        self._writers = ThreadPoolExecutor(DELIVERY_WRITERS, thread_name_prefix="coordinator-grant")
        self._count_lock = threading.Lock()
        # Schedules: their own informers only wake the scheduler, which lists what it needs.
        self._sched_dirty = threading.Event()
        self._sched_dirty.set()
        self._sched_due: datetime | None = None
        self.schedules = [
            k8s.Informer(plural, api, k8s.kupd_path(plural), self._wake_scheduler, watch_seconds=watch_seconds)
            for plural in (k8s.SCHEDULEDUPDATES, k8s.UPDATESCHEDULES)
        ] if scheduler is not None else []

    @property
    def writes(self) -> int:
        return self.status.writes

    def _wake_scheduler(self) -> None:
        self._sched_dirty.set()
        self._dirty.set()

    def start(self) -> None:
        for inf in (self.ops, self.leases, self.nodes, *self.schedules):
            inf.start()
        threading.Thread(target=self._loop, name="coordinator", daemon=True).start()
        self.events.start()
        self.status.start()
        self.clears.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.status.stop()
        self.events.stop()
        self.clears.stop()
        self._writers.shutdown(wait=False)
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

    # -- one round -------------------------------------------------------------------------
    def _views(self, now: datetime) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
        """The planner's inputs. Facts the cluster knows (kubelet version, readiness) come from the
        Node, which the kubelet writes; a member Lease, which its node's kupd credential writes,
        only says whether kupd there is alive and where its agent is. Every member Lease is decoded
        (and checked: protocol.decode_member_lease) once per resourceVersion; an invalid one is a
        fact about its node, never an exception here."""
        nodes = []
        kubelets: dict[str, Version | None] = {}
        for n in self.nodes.items():
            name = n["metadata"]["name"]
            rv = str(n["metadata"].get("resourceVersion", ""))
            known = self._node_views.get(name)
            if known is None or known[0] != rv or not rv:
                labels = n["metadata"].get("labels") or {}
                view = planner.NodeView(name, labels, p.LABEL_CONTROL_PLANE in labels, k8s.ready(n),
                                        untrusted.node_kubelet(n))
                known = self._node_views[name] = (rv, view)
            kubelets[name] = known[1].kubelet
            nodes.append(known[1])
        if len(self._node_views) > 2 * len(nodes) + 16:
            self._node_views = {v.name: (r, v) for r, v in self._node_views.values() if v.name in kubelets}
        members: dict[str, planner.MemberView] = {}
        mono = time.monotonic()
        present = set()
        for lease in self.leases.items():
            name = lease["metadata"]["name"]
            if not name.startswith(p.MEMBER_LEASE_PREFIX):
                continue
            present.add(name)
            rv = str(lease["metadata"].get("resourceVersion", ""))
            seen = self._seen.get(name)
            if seen is None or seen[0] != rv or not rv:
                seen = self._seen[name] = (rv, mono)
            cached = self._decoded.get(name)
            if cached is None or cached[0] != rv or not rv:
                decoded = p.decode_member_lease(lease, self.member_duration)
                if decoded is None:
                    continue
                cached = self._decoded[name] = (rv, decoded)
            m = cached[1]
            # Alive while this coordinator saw the Lease change within its duration, on its own
            # monotonic clock: renewTime is the node's clock and is never compared with anything.
            # The informer records when it first saw each version, even while an idle coordinator
            # runs no rounds; an idle member declares a long lease (it renews hourly), so during an
            # operation it is judged by the active duration at most: only a renewal since the
            # operation began (or within the last active duration) makes it eligible for a turn.
            observed = self.leases.observed_at(k8s.Informer.key(lease))
            since = mono - (observed if observed is not None else seen[1])
            lo, hi = MEMBER_DURATION_BOUNDS
            alive = since < min(max(m.duration, lo), hi, max(self.member_duration, lo))
            key = (rv, alive, kubelets.get(m.node))
            made = self._member_views.get(name)
            if made is None or made[0] != key or not rv:
                made = self._member_views[name] = (key, planner.MemberView(
                    m.node, alive, kubelets.get(m.node), m.report, m.problem, facts=m.facts))
            members[m.node] = made[1]
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
            self._member_views.pop(name, None)
        return nodes, members

    def _resolve(self, hops_needed: list[tuple[int, int]], source: dict[str, Any] | None
                 ) -> tuple[dict[tuple[int, int], str], dict[tuple[int, int], str]]:
        """Each minor's newest patch in the operation's own package source, and why a minor could
        not be resolved. A failure is asked again after RESOLVE_RETRY_SECONDS, not every round."""
        key = json.dumps(source or {}, sort_keys=True)
        resolved: dict[tuple[int, int], str] = {}
        errors: dict[tuple[int, int], str] = {}
        for mk in hops_needed:
            cached = self._resolved.get((key, mk))
            if cached is None or (cached[1] is not None and time.monotonic() - cached[2] > RESOLVE_RETRY_SECONDS):
                try:
                    cached = (self.newest_patch(f"v{mk[0]}.{mk[1]}", source), None, time.monotonic())
                except KupdError as e:
                    log.warning("resolving v%d.%d: %s", mk[0], mk[1], e)
                    cached = ("", str(e)[:500], time.monotonic())
                self._resolved[(key, mk)] = cached
            if cached[1] is None:
                resolved[mk] = cached[0]
            else:
                errors[mk] = cached[1]
        return resolved, errors

    def _say_ended(self, obj: dict[str, Any], now: datetime) -> None:
        """An ended operation whose spec was edited afterwards says that it is not acted on."""
        md = obj["metadata"]
        op = planner.Operation(md["name"], md["uid"], int(md.get("generation", 1)), ValidationError("spec", "-"),
                               obj.get("status") or {})
        out = planner.edited_after_end(op, now)
        if out is None:
            return
        try:
            self.status.write(obj, out.status)
            self.events.queue(obj, out.events)
        except k8s.Invalid as e:
            self._on_refused(obj, e)
        except KupdError as e:
            log.warning("writing the status of %s: %s", md["name"], e)

    def reconcile(self) -> None:
        now = datetime.now(UTC)
        ops = sorted(self.ops.items(), key=lambda o: (o["metadata"].get("creationTimestamp", ""),
                                                      o["metadata"]["name"]))
        self.on_operations({o["metadata"]["name"] for o in ops})
        active = [o for o in ops if (o.get("status") or {}).get("phase") not in planner.TERMINAL_OP]
        for o in ops:
            self._say_ended(o, now)
        # The grant Leases, read once a round and kept current with this round's own writes.
        grants = p.grant_values(self.leases.items())
        self._idle = not active and not any(grants.values())
        if not active:
            self._announce(None)
            if any(grants.values()):
                self._clear_grants(None, ops, self._views(now)[1], grants)
            return
        # Liveness counts from when the informer first saw each Lease version (its own monotonic
        # clock), so an idle coordinator that ran no rounds still judges members rightly here.
        nodes, members = self._views(now)
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
                    self.status.write(queued, st)
                except k8s.Invalid as e:
                    self._on_refused(queued, e)
                except KupdError as e:
                    log.warning("writing the status of %s: %s", queued["metadata"]["name"], e)
        if first is not None and self._activating(first):
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
            planned = self.status.planned.get(first["metadata"]["uid"]) or first.get("status") or {}
            # Paused by spec.paused or outside its window, an operation may wait for days: members
            # stay idle meanwhile (turns in flight keep their own members active) and renew at once
            # when it resumes. A health gate's pause between waves is short: members stay active.
            self._announce(None if _waiting(planned) else first)
        else:
            self._announce(None)
        self._clear_grants(first["metadata"]["uid"] if first else None, ops, members, grants)

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
        resolved, hop_errors = self._hops(typed, status, members, md["name"])
        result = planner.plan(op, nodes, members, epoch=self.elector.epoch, coordinator=self.identity,
                              now=now, resolved_minors=resolved, hop_errors=hop_errors,
                              gate_failure=self._gates(typed.health_gates if typed else None),
                              delivered=self._delivered(grants),
                              preflight_facts=self._preflight(status, members) if typed else None,
                              deprecated_apis=self._deprecated_apis(status) if typed else None)
        with logsetup.log_context(operation=md["name"]):
            if result.status != status:
                self.status.planned[uid] = result.status
                self.on_plan(md["name"], result.status)
                self.events.queue(obj, result.events)
            # Deliver before recording: a turn must not wait for the large status write.
            if typed is not None:
                self._deliver(obj, typed, self.status.planned.get(uid) or status, grants)
            self.status.offer(obj)

    def _hops(self, spec: DirectUpdateSpec | None, status: dict[str, Any], members: dict[str, planner.MemberView],
              name: str) -> tuple[dict[tuple[int, int], str], dict[tuple[int, int], str]]:
        """The newest patch of each intermediate minor in the operation's own package source, and
        why a minor could not be resolved; asked when the operation's hops are planned: at its
        start, and when spec.version was raised past them."""
        if spec is None:
            return {}, {}
        try:
            target = Version.parse(spec.version)
            hops = status.get("hops") or []
            if hops and Version.parse(str(hops[-1])) >= target:
                return {}, {}
            versions = [m.kubelet for m in members.values() if m.kubelet]
            if versions and min(versions) < target:
                return self._resolve(planner.hop_minors(min(versions), target)[:-1],
                                     to_wire(spec.package_source))
        except KupdError as e:
            # An invalid version or a downgrade: the planner's validation says so in a Condition.
            log.info("not resolving hops for %s: %s", name, e)
        return {}, {}

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

    def _activating(self, first: dict[str, Any]) -> bool:
        """Whether `first` has just been announced to idle members (announcing it now if it was
        not, unless it waits for an operator or a window) and they are still within the grace to
        renew. While it holds, the operation is not planned."""
        planned = self.status.planned.get(first["metadata"]["uid"]) or first.get("status") or {}
        current = self.leases.get(f"{self.namespace}/{p.ACTIVITY_LEASE}")
        value = f"{first['metadata']['name']}/{first['metadata']['uid']}"
        if (current is None or p.activity_value(current) != value) and not _waiting(planned):
            self._announce(first)
        if self._activated_at is None:
            return False
        grace = min(ACTIVATION_GRACE, self.member_duration / 2)
        return time.monotonic() - self._activated_at < grace

    def _announce(self, running: dict[str, Any] | None) -> None:
        """Keep the activity Lease naming the operation being run ("" when none): written only
        when that changes, so its watchers (every member) hear of operations starting and ending
        and of nothing else."""
        value = f"{running['metadata']['name']}/{running['metadata']['uid']}" if running else ""
        current = self.leases.get(f"{self.namespace}/{p.ACTIVITY_LEASE}")
        if current is not None and p.activity_value(current) == value:
            return
        if current is None and not value:
            return  # never written: members start idle
        if not self.elector.leading:
            return
        body = p.activity_lease_body(self.namespace, value, self.elector.epoch)
        new = k8s.patch_or_create(self.api, k8s.lease_path(self.namespace, p.ACTIVITY_LEASE),
                                  k8s.lease_path(self.namespace), body, "announce activity")
        self.leases.put(new)
        self._activated_at = time.monotonic() if value else None
        log.info("activity: %s", value or "idle")

    # -- grant Leases ------------------------------------------------------------------------
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

    def _deliver(self, obj: dict[str, Any], spec: DirectUpdateSpec, status: dict[str, Any],
                 grants: dict[str, str]) -> None:
        """Write every in-flight grant of `status` that its node's grant Lease does not carry yet."""
        md = obj["metadata"]
        todo: list[tuple[str, str]] = []
        for e in status.get("nodes") or []:
            if e.get("phase") not in planner.IN_FLIGHT or not e.get("grant"):
                continue
            grant = p.Grant.from_record(md["name"], md["uid"], e, spec)
            if self.clears.settle(e["name"]):
                grants[e["name"]] = ""  # a clear landed meanwhile: the Lease carries nothing now
            have = grants.get(e["name"])
            if not have or self._decode_grant(have) != grant:
                todo.append((e["name"], grant.encode()))
        if len(todo) == 1:
            self._write_grant(*todo[0], grants)
        elif todo:
            # Each node's Lease is its own object: the writes are independent. All are waited for,
            # then the first failure (if any) is the round's, as it was one after the other.
            done, _ = wait([self._writers.submit(self._write_grant, node, value, grants) for node, value in todo])
            errors = [err for f in done if (err := f.exception()) is not None]
            if errors:
                raise errors[0]

    def _clear_grants(self, active_uid: str | None, ops: list[dict[str, Any]],
                      members: dict[str, planner.MemberView], grants: dict[str, str]) -> None:
        """Clear the grant Leases of turns that are over.

        A turn of the operation being run is over once the stored status records it so (until
        then a successor needs the Lease to adopt it). A turn of any other operation (finished,
        failed or deleted while the node still worked) is over when its node reports so.
        """
        by_uid = {o["metadata"]["uid"]: o for o in ops}
        # The active operation's turns, stored or planned: found once, not once per grant Lease.
        held: set[str] | None = None
        for node, value in list(grants.items()):
            if not value:
                continue
            g = self._decode_grant(value)
            if g is not None and g.uid == active_uid and g.uid in by_uid:
                if held is None:
                    held = (_in_flight(by_uid[g.uid].get("status") or {})
                            | _in_flight(self.status.planned.get(g.uid) or {}))
                keep = node in held
            else:
                keep = g is not None and not planner.turn_over(members.get(node), g)
            if not keep:
                self.clears.clear(node)

    def _write_grant(self, node: str, value: str, grants: dict[str, str]) -> None:
        if not self.elector.leading:
            return
        body = p.grant_lease_body(self.namespace, node, value, self.elector.epoch)
        what = f"{'clear' if not value else 'deliver'} grant of {node}"
        new = k8s.patch_or_create(self.api, k8s.lease_path(self.namespace, p.grant_lease_name(node)),
                                  k8s.lease_path(self.namespace), body, what)
        with self._count_lock:
            self.grant_writes += 1
        self.leases.put(new)
        grants[node] = value
        if value:
            log.info("delivered grant to %s", node)

    def _preflight(self, status: dict[str, Any], members: dict[str, planner.MemberView]
                   ) -> preflight.ClusterFacts | None:
        """The cluster preflight's facts, until the operation has passed it; read at most every
        PREFLIGHT_SECONDS (it lists pods and budgets)."""
        if any(c.get("type") == "Preflight" and c.get("status") == "True" for c in status.get("conditions") or []):
            return None
        now = time.monotonic()
        if self._preflight_cache is not None and now - self._preflight_cache[0] < PREFLIGHT_SECONDS:
            return self._preflight_cache[1]
        from kupd import clusterfacts

        health = {n: preflight.MemberHealth(n, m.alive, d[1].kupd_version if (d := self._decoded.get(
            p.member_lease_name(n))) else "") for n, m in members.items()}
        targeted = [e["name"] for e in status.get("nodes") or [] if e.get("phase") not in planner.DONE] or [
            str(n["metadata"]["name"]) for n in self.nodes.items()]
        facts = clusterfacts.gather(self.api, self.nodes.items(), health, targeted)
        self._preflight_cache = (now, facts)
        return facts

    def _deprecated_apis(self, status: dict[str, Any]) -> list[hazards.DeprecatedApi] | None:
        """The removed API versions clients still request, from the API server's
        apiserver_requested_deprecated_apis, while a control-plane hop may still come; read at most
        every DEPRECATED_APIS_SECONDS (the metrics are large). None: unknown, nothing refused."""
        entries = status.get("nodes") or []
        if entries and all(e.get("role") != "ControlPlane" or e.get("phase") in planner.DONE for e in entries):
            return None
        now = time.monotonic()
        if self._apis_cache is None or now - self._apis_cache[0] >= DEPRECATED_APIS_SECONDS:
            try:
                apis: list[hazards.DeprecatedApi] | None = hazards.parse_deprecated_apis(
                    self.api.get_text("/metrics"))
            except k8s.TRANSPORT_ERRORS as e:
                log.warning("reading the API server's metrics for removed APIs still in use: %s", e)
                apis = None
            self._apis_cache = (now, apis)
        return self._apis_cache[1]

    def _gates(self, gates: HealthGates | None) -> str | None:
        """External health gates' latest verdict. `evaluate_gates` (health.GateRunner, wired by the
        daemon) answers at once and evaluates off this thread: a gate that does not answer must not
        delay grants and status."""
        if gates is None or self.evaluate_gates is None:
            return None
        return self.evaluate_gates(gates)
