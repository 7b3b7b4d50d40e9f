"""The planner: a pure function from observed state to the DirectUpdate status the coordinator
should write, and the Events to emit with it.

Nothing here does I/O or reads the clock; the coordinator gathers the inputs (the CR, Nodes,
member Leases, the epoch, `now`) and applies the output. That keeps every rollout rule —
control plane first, one control-plane node at a time, canaries, waves bounded by
concurrency, lost nodes holding their slot — testable as a table.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from kupd import windows
from kupd.errors import ValidationError
from kupd.protocol import ANN_RETRY_NODES, GRANT_LEASE_PREFIX, STEP_BACKUP, Grant, Report
from kupd.versions import SkewError, Version, check_target

# Node phases.
PENDING, GRANTED, UPGRADING, SUCCEEDED, FAILED, SKIPPED, LOST = (
    "Pending", "Granted", "Upgrading", "Succeeded", "Failed", "Skipped", "Lost",
)
IN_FLIGHT = (GRANTED, UPGRADING, LOST)
DONE = (SUCCEEDED, SKIPPED)
# Operation phases.
OP_PENDING, OP_RUNNING, OP_PAUSED, OP_SUCCEEDED, OP_FAILED, OP_ATTENTION = (
    "Pending", "Running", "Paused", "Succeeded", "Failed", "RequiresAttention",
)
TERMINAL_OP = (OP_SUCCEEDED, OP_FAILED)


class Reason(StrEnum):
    """Every reason a DirectUpdate Condition may carry. CamelCase only: the CRD's pattern
    (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`) refuses anything else, and a refused status
    write would leave the operation unrecorded (tests/unit/test_condition_reasons.py checks each)."""

    SPEC_VALID = "SpecValid"
    INVALID_SPEC = "InvalidSpec"
    VERSION_SKEW = "VersionSkew"
    NO_DOWNGRADE = "NoDowngrade"
    SAME_MAJOR = "SameMajor"
    KUBELET_NOT_NEWER = "KubeletNotNewerThanApiserver"
    ONE_MINOR_AT_A_TIME = "OneMinorAtATime"
    VERSION_LOWERED = "VersionLowered"
    BACKUP_VERIFIED = "BackupVerified"
    BACKUP_FAILED = "BackupFailed"
    COMPLETED = "Completed"
    UPGRADING = "Upgrading"
    WAITING = "Waiting"
    PAUSED = "Paused"
    OUTSIDE_WINDOW = "OutsideWindow"
    GATE_FAILED = "GateFailed"
    GATES_PASSED = "GatesPassed"
    NO_PROBLEM = "NoProblem"
    NODE_FAILED = "NodeFailed"
    NODE_LOST = "NodeLost"
    NO_MEMBER = "NoMember"
    MEMBER_LOST = "MemberLost"
    STEP_PAST_DEADLINE = "StepPastDeadline"
    QUEUED = "Queued"
    STATUS_REFUSED = "StatusRefused"


# Kubernetes' skew rules (kupd.versions.SkewError.rule) as Condition reasons.
SKEW_REASONS: Mapping[str, Reason] = {
    "no-downgrade": Reason.NO_DOWNGRADE,
    "same-major": Reason.SAME_MAJOR,
    "kubelet-not-newer-than-apiserver": Reason.KUBELET_NOT_NEWER,
    "one-minor-at-a-time": Reason.ONE_MINOR_AT_A_TIME,
}
# What a node reports while it waits inside a step (kupd/agent.py): the operation says so.
WAITING_REASONS = ("DrainBlocked", "Waiting", "DeadlineExceeded")


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    control_plane: bool
    ready: bool = True


@dataclass(frozen=True)
class MemberView:
    node: str
    alive: bool
    kubelet: Version | None
    report: Report | None = None


@dataclass(frozen=True)
class Policy:
    """The parts of a DirectUpdate spec the planner acts on, with defaults applied."""

    target: Version
    concurrency: int = 1
    node_selector: Mapping[str, Any] | None = None
    canary_count: int = 0
    canary_selector: Mapping[str, Any] | None = None
    canary_bake_seconds: int = 0
    backup_required: bool = True
    paused: bool = False
    default_node_seconds: float = 600.0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Policy:
        canary = spec.get("canary") or {}
        backup = spec.get("backup") or {}
        return cls(
            target=Version.parse(str(spec.get("version", "")), "spec.version"),
            concurrency=int(spec.get("concurrency", 1)),
            node_selector=spec.get("nodeSelector"),
            canary_count=int(canary.get("count", 0)),
            canary_selector=canary.get("selector"),
            canary_bake_seconds=int(canary.get("bakeSeconds", 0)),
            backup_required=bool(backup.get("required", True)),
            paused=bool(spec.get("paused", False)),
        )


@dataclass(frozen=True)
class Operation:
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanEvent:
    reason: str
    message: str
    node: str | None = None
    warning: bool = False


@dataclass(frozen=True)
class Plan:
    status: dict[str, Any]
    events: list[PlanEvent]


# -- label selectors ------------------------------------------------------------------------
def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty or missing selector matches everything."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# -- hops -----------------------------------------------------------------------------------
def hop_minors(current: Version, target: Version) -> list[tuple[int, int]]:
    """Minors the upgrade passes through; the last is the target's. Same minor: one patch hop."""
    check_target(current, target)
    if current.minor_key == target.minor_key:
        return [target.minor_key]
    return [(current.major, m) for m in range(current.minor + 1, target.minor + 1)]


def hops_for(current: Version, target: Version, resolved: Mapping[tuple[int, int], str]) -> list[str]:
    """Hop versions: each intermediate minor at its resolved newest patch, the last at the target."""
    minors = hop_minors(current, target)
    out: list[str] = []
    for mk in minors[:-1]:
        out.append(resolved.get(mk) or f"v{mk[0]}.{mk[1]}.0")
    out.append(str(target))
    return out


# -- the planner ----------------------------------------------------------------------------
def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _condition(status: dict[str, Any], ctype: str, value: bool, reason: Reason, message: str,
               generation: int, now: datetime) -> None:
    conds: list[dict[str, Any]] = status.setdefault("conditions", [])
    want = "True" if value else "False"
    for c in conds:
        if c["type"] == ctype:
            if c["status"] != want:
                c["lastTransitionTime"] = _iso(now)
            c.update(status=want, reason=str(reason), message=message[:1000], observedGeneration=generation)
            return
    conds.append({"type": ctype, "status": want, "reason": str(reason), "message": message[:1000],
                  "observedGeneration": generation, "lastTransitionTime": _iso(now)})


def _fail(op: Operation, status: dict[str, Any], reason: Reason, message: str, now: datetime,
          events: list[PlanEvent]) -> Plan:
    if status.get("phase") != OP_FAILED:
        events.append(PlanEvent(reason, message, warning=True))
    status["phase"] = OP_FAILED
    status["message"] = message[:1000]
    status.setdefault("finishedAt", _iso(now))
    _condition(status, "Progressing", False, reason, message, op.generation, now)
    return Plan(status, events)


def queued(status: Mapping[str, Any], message: str, generation: int, now: datetime) -> dict[str, Any]:
    """The status of an operation waiting for an older one to finish."""
    out = copy.deepcopy(dict(status))
    out.update(phase=OP_PENDING, message=message[:1000])
    _condition(out, "Progressing", False, Reason.QUEUED, message, generation, now)
    return out


def plan(
    op: Operation,
    nodes: Sequence[NodeView],
    members: Mapping[str, MemberView],
    *,
    epoch: int,
    coordinator: str,
    now: datetime,
    resolved_minors: Mapping[tuple[int, int], str] | None = None,
    validate_spec: Any = None,
    gate_failure: str | None = None,
    delivered: Mapping[str, Grant] | None = None,
) -> Plan:
    """Compute the next status of one DirectUpdate.

    `validate_spec`, when given, is the daemon's re-validation of the spec (raises
    ValidationError naming the field); a failure ends the operation Failed with a Condition.
    `gate_failure` is the coordinator's latest evaluation of the external health gates
    (control-plane pods, Prometheus): None when they pass or are not configured.
    `delivered` holds the grants found in the nodes' grant Leases. A grant is delivered before
    the status recording it is written, so after a coordinator change the status may lag: a
    delivered grant the status does not know is adopted, and its slot is never given twice.
    """
    status: dict[str, Any] = copy.deepcopy(dict(op.status))
    events: list[PlanEvent] = []
    gen = op.generation
    status["observedGeneration"] = gen
    status["coordinator"] = coordinator
    status["epoch"] = epoch
    if status.get("phase") in TERMINAL_OP:
        return Plan(status, events)

    try:
        if validate_spec is not None:
            validate_spec(op.spec)
        policy = Policy.from_spec(op.spec)
    except ValidationError as err:
        _condition(status, "Valid", False, Reason.INVALID_SPEC, str(err), gen, now)
        return _fail(op, status, Reason.INVALID_SPEC, str(err), now, events)
    _condition(status, "Valid", True, Reason.SPEC_VALID, "the spec passed the daemon's validation", gen, now)

    # Which nodes, in which order: control plane first, then canaries, then the rest, by name.
    selected = sorted((n for n in nodes if selector_matches(policy.node_selector, n.labels)),
                      key=lambda n: (not n.control_plane, n.name))
    workers = [n for n in selected if not n.control_plane]
    canaries: set[str] = set()
    if policy.canary_selector:
        canaries = {n.name for n in workers if selector_matches(policy.canary_selector, n.labels)}
    elif policy.canary_count:
        canaries = {n.name for n in workers[: policy.canary_count]}
    selected.sort(key=lambda n: (not n.control_plane, n.name not in canaries, n.name))

    entries: dict[str, dict[str, Any]] = {e["name"]: e for e in status.get("nodes") or []}

    if not selected:
        status["phase"] = OP_PENDING
        status["message"] = "no node matches spec.nodeSelector"
        return Plan(status, events)

    # Hops are planned when the operation starts, from the oldest member among the selected nodes,
    # and planned again when spec.version is raised mid-rollout: the hops already begun are kept
    # (a minor is never passed through at two patches), the new minors are added.
    old_hops = [Version.parse(h) for h in status.get("hops") or []]
    if old_hops and policy.target < old_hops[-1]:
        msg = (f"spec.version was lowered to {policy.target} while the rollout went to {old_hops[-1]}; "
               "kupd never downgrades: create a new DirectUpdate")
        _condition(status, "Valid", False, Reason.VERSION_LOWERED, msg, gen, now)
        return _fail(op, status, Reason.VERSION_LOWERED, msg, now, events)
    if not old_hops or policy.target > old_hops[-1]:
        versions = [m.kubelet for n in selected if (m := members.get(n.name)) and m.kubelet]
        if not versions:
            status.setdefault("phase", OP_PENDING)
            status["message"] = "waiting for kupd members on the selected nodes"
            return Plan(status, events)
        kept = {h.minor_key: str(h) for h in old_hops}
        try:
            planned = hops_for(min(versions), policy.target, {**(resolved_minors or {}), **kept})
        except SkewError as skew:
            reason = SKEW_REASONS.get(skew.rule, Reason.VERSION_SKEW)
            _condition(status, "Valid", False, reason, str(skew), gen, now)
            return _fail(op, status, Reason.VERSION_SKEW, str(skew), now, events)
        if old_hops:
            events.append(PlanEvent("Replanned", f"spec.version raised to {policy.target}: hops {', '.join(planned)}"))
        status["hops"] = planned
    hops = [Version.parse(h) for h in status["hops"]]

    # The kubelet-never-newer rule: a worker-only selection cannot pass the control plane.
    if not any(n.control_plane for n in selected):
        cp_versions = [m.kubelet for n in nodes if n.control_plane
                       and (m := members.get(n.name)) and m.kubelet]
        if cp_versions and policy.target.minor_key > min(cp_versions).minor_key:
            msg = (f"target {policy.target} is newer than the control plane {min(cp_versions)}; "
                   "select the control-plane nodes too (rule: kubelet-not-newer-than-apiserver)")
            _condition(status, "Valid", False, Reason.KUBELET_NOT_NEWER, msg, gen, now)
            return _fail(op, status, Reason.VERSION_SKEW, msg, now, events)

    # Every selected node has an entry; a grant delivered but not yet recorded is adopted first, so
    # that the retry, the backup record and the observation below all see it.
    for n in selected:
        m = members.get(n.name)
        e = entries.get(n.name)
        if e is None:
            e = {"name": n.name, "role": "ControlPlane" if n.control_plane else "Worker",
                 "canary": n.name in canaries, "phase": PENDING, "attempts": 0,
                 "toVersion": str(policy.target)}
            if m and m.kubelet:
                e["fromVersion"] = str(m.kubelet)
                if m.kubelet >= policy.target:
                    e["phase"] = SKIPPED
                    e["message"] = f"already at {m.kubelet}"
            entries[n.name] = e
        elif e["phase"] in DONE and m is not None and m.kubelet is not None and m.kubelet < policy.target:
            # spec.version was raised: a node done with the old target has more to do.
            e.update(phase=PENDING, toVersion=str(policy.target), message=f"target raised to {policy.target}")
            e.pop("finishedAt", None)
        if e["phase"] not in DONE:
            e["toVersion"] = str(policy.target)
        _adopt(e, (delivered or {}).get(n.name), op, epoch)

    # An operator's retry request puts Failed nodes back in line, once per annotation value.
    retry = op.annotations.get(ANN_RETRY_NODES, "")
    if retry:
        wanted = {x.strip() for x in retry.split("#", 1)[0].split(",")}
        for name in wanted:
            e = entries.get(name)
            if e is not None and e["phase"] == FAILED and e.get("retryToken") != retry and e.get("grant"):
                # The same work again under a fresh grant. The node's slot was never given to anyone
                # else (a failure stops all grants), so this stays within the limits.
                e.update(phase=GRANTED, attempts=0, retryToken=retry, message="retry requested")
                e["grant"].update(epoch=epoch, grantedAt=_iso(now))
                e.pop("finishedAt", None)
                events.append(PlanEvent("RetryRequested", f"{name}: retry requested by {ANN_RETRY_NODES}", name))

    # The verified backup is taken only from the node granted the backup (the first control-plane
    # node), for that very grant: any other member's report could be forged by a worker's credential.
    if not status.get("backup"):
        for e in entries.values():
            g = e.get("grant") or {}
            m = members.get(e["name"])
            if not (g.get("backup") and g.get("firstControlPlane") and e.get("role") == "ControlPlane"):
                continue
            if m and m.report and m.report.uid == op.uid and m.report.versions == g.get("versions") \
                    and m.report.backup and m.report.granted_at in ("", g.get("grantedAt")):
                status["backup"] = dict(m.report.backup)
                msg = f"etcd snapshot {m.report.backup.get('location')} verified before any change"
                _condition(status, "BackupSucceeded", True, Reason.BACKUP_VERIFIED, msg, gen, now)
                events.append(PlanEvent("BackupTaken", msg))

    # Bring every node's entry up to date with what its member reports: the selected ones, and
    # those that left the selection or the cluster with a turn out, which keep their slot until
    # they report it over (or are lost, which the operation then says).
    for name, e in entries.items():
        _observe(e, members.get(name), op, policy, now, events, name)

    ordered = [entries[n.name] for n in selected]
    status["nodes"] = list(ordered)
    selected_names = {n.name for n in selected}
    departed = [e for name, e in entries.items() if name not in selected_names]
    status["nodes"].extend(departed)
    departed_in_flight = [e for e in departed if e["phase"] in IN_FLIGHT]

    summary = {k: 0 for k in ("total", "pending", "upgrading", "succeeded", "failed", "skipped")}
    for e in ordered:
        summary["total"] += 1
        key = {PENDING: "pending", SUCCEEDED: "succeeded", FAILED: "failed", SKIPPED: "skipped"}.get(
            e["phase"], "upgrading")
        summary[key] += 1
    status["summary"] = summary

    failed = [e for e in ordered if e["phase"] == FAILED]
    backup_failed = [e for e in failed if e.get("step") == STEP_BACKUP]
    if backup_failed:
        msg = f"backup failed on {backup_failed[0]['name']}: {backup_failed[0].get('message', '')}"
        _condition(status, "BackupSucceeded", False, Reason.BACKUP_FAILED, msg, gen, now)
        return _fail(op, status, Reason.BACKUP_FAILED, msg, now, events)

    if all(e["phase"] in DONE for e in ordered) and not departed_in_flight:
        if status.get("phase") != OP_SUCCEEDED:
            events.append(PlanEvent("Succeeded", f"all {len(ordered)} nodes at {policy.target}"))
        status["phase"] = OP_SUCCEEDED
        status["message"] = f"all {len(ordered)} selected nodes are at {policy.target}"
        status.setdefault("finishedAt", _iso(now))
        status["progress"] = f"{len(ordered)}/{len(ordered)}"
        _condition(status, "Progressing", False, Reason.COMPLETED, status["message"], gen, now)
        _condition(status, "RequiresAttention", False, Reason.NO_PROBLEM, "", gen, now)
        return Plan(status, events)

    done_count = sum(1 for e in ordered if e["phase"] in DONE)
    status["progress"] = f"{done_count}/{len(ordered)}"

    # Turns of another DirectUpdate that are not over yet (it was deleted or failed mid-turn while
    # its nodes still work) hold their slots too: a turn ends only when its node says so.
    elsewhere = {n: g for n, g in (delivered or {}).items()
                 if g.uid != op.uid and not turn_over(members.get(n), g)}

    attention = _attention(ordered, departed_in_flight, members, elsewhere)
    if attention:
        reason, name, msg = attention
        if status.get("phase") != OP_ATTENTION or status.get("message") != msg:
            events.append(PlanEvent(str(reason), msg, name, warning=True))
        status["phase"] = OP_ATTENTION
        status["message"] = msg
        _condition(status, "RequiresAttention", True, reason, msg, gen, now)
        if failed:
            # A failed step stops all further grants until an operator acts.
            _condition(status, "Progressing", False, Reason.NODE_FAILED, msg, gen, now)
            return Plan(status, events)
    else:
        _condition(status, "RequiresAttention", False, Reason.NO_PROBLEM, "", gen, now)

    if policy.paused:
        status["phase"] = OP_PAUSED
        status["message"] = "paused by spec.paused; nodes already granted finish their turn"
        _condition(status, "Progressing", False, Reason.PAUSED, status["message"], gen, now)
        return Plan(status, events)

    window = _window_decision(op, ordered, policy, now)
    if window is not None and not window.allowed:
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = window.reason
        _condition(status, "Progressing", False, Reason.OUTSIDE_WINDOW, window.reason, gen, now)
        return Plan(status, events)

    gate = _health_gate(op.spec.get("healthGates"), ordered, nodes, now, gate_failure)
    if gate is not None:
        if status.get("phase") != OP_PAUSED or status.get("message") != gate:
            events.append(PlanEvent("HealthGateFailed", gate, warning=True))
        _condition(status, "HealthGates", False, Reason.GATE_FAILED, gate, gen, now)
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = f"health gate: {gate}"
        return Plan(status, events)
    if op.spec.get("healthGates"):
        _condition(status, "HealthGates", True, Reason.GATES_PASSED, "every health gate passes", gen, now)

    held = _grant(ordered, departed_in_flight, hops, policy, members, epoch, now, events, status, canaries,
                  elsewhere)
    in_flight = [e for e in [*ordered, *departed_in_flight] if e["phase"] in IN_FLIGHT]
    # Every stall says what it waits for: nothing in flight, or only nodes waiting inside a step.
    waiting = [e for e in in_flight if (r := _report(members.get(e["name"]), op, e)) is not None
               and r.reason in WAITING_REASONS]
    wait: str | None = None
    if in_flight and len(waiting) == len(in_flight):
        wait = "; ".join(f"{e['name']}: {e.get('message', '')}" for e in waiting)
    elif not in_flight:
        wait = held or "waiting for a node to become eligible"
    if not attention:
        status["phase"] = OP_RUNNING
        msg = wait or f"upgrading {', '.join(e['name'] for e in in_flight)}" + (f"; {held}" if held else "")
        status["message"] = msg[:1000]
    status.setdefault("startedAt", _iso(now))
    if wait:
        _condition(status, "Progressing", False, Reason.WAITING, wait, gen, now)
    else:
        _condition(status, "Progressing", True, Reason.UPGRADING, f"{done_count}/{len(ordered)} nodes done",
                   gen, now)
    return Plan(status, events)


def _report(m: MemberView | None, op: Operation, e: dict[str, Any]) -> Report | None:
    """The member's report on the turn the entry records, if that is what it reports."""
    r = m.report if m is not None else None
    g = e.get("grant") or {}
    if r is None or r.uid != op.uid or r.granted_at not in ("", g.get("grantedAt")):
        return None
    return r


def _attention(ordered: list[dict[str, Any]], departed: list[dict[str, Any]], members: Mapping[str, MemberView],
               elsewhere: Mapping[str, Grant]) -> tuple[Reason, str, str] | None:
    """What needs an operator, most pressing first: (reason, node, message), or None."""
    for e in [*ordered, *departed]:
        if e["phase"] == FAILED and e in ordered:
            return Reason.NODE_FAILED, e["name"], f"node {e['name']}: {e.get('message') or 'failed'}"
    for e in [*ordered, *departed]:
        if e["phase"] == LOST:
            where = "" if e in ordered else " (it left the selection or the cluster mid-turn)"
            return Reason.NODE_LOST, e["name"], f"node {e['name']}{where}: {e.get('message') or 'lost'}"
    for e in ordered:
        if e["phase"] in IN_FLIGHT and (m := members.get(e["name"])) is not None and m.report is not None \
                and m.report.reason == "DeadlineExceeded" and m.report.phase == "Upgrading":
            return Reason.STEP_PAST_DEADLINE, e["name"], f"node {e['name']}: {m.report.message}"
    for node, g in sorted(elsewhere.items()):
        m = members.get(node)
        if m is None or not m.alive:
            return (Reason.NODE_LOST, node,
                    f"node {node} holds a turn of DirectUpdate {g.operation} and its kupd member is lost; "
                    "the turn keeps its slot until it is reported over or its grant Lease "
                    f"{GRANT_LEASE_PREFIX}{node} is deleted (runbook: a lost node)")
    for e in ordered:
        if e["phase"] != PENDING:
            continue
        m = members.get(e["name"])
        if m is None:
            return (Reason.NO_MEMBER, e["name"],
                    f"node {e['name']} has no kupd member; install or start kupd there")
        if not m.alive:
            return (Reason.MEMBER_LOST, e["name"],
                    f"node {e['name']}: its kupd member stopped renewing its Lease; start kupd there")
    return None


def turn_over(m: MemberView | None, g: Grant) -> bool:
    """Whether the node has reported the end (Succeeded or Failed) of the turn `g` gave it."""
    r = m.report if m is not None else None
    return (r is not None and r.uid == g.uid and r.granted_at == g.granted_at
            and r.phase in ("Succeeded", "Failed"))


def _adopt(e: dict[str, Any], g: Grant | None, op: Operation, epoch: int) -> None:
    """Record a delivered grant of this operation that the status does not (yet) know."""
    if g is None or g.uid != op.uid or e["phase"] in (SUCCEEDED, SKIPPED):
        return
    # Only a grant newer than the one recorded: an old one still in its Lease (not cleared yet)
    # must not undo a retry or a later hop. grantedAt values share one format, so they sort.
    if g.granted_at <= str((e.get("grant") or {}).get("grantedAt") or ""):
        return
    e["grant"] = {**g.record(), "epoch": epoch}
    e["phase"] = GRANTED
    e["message"] = f"granted {', '.join(g.versions)}"
    e.pop("finishedAt", None)


def _observe(e: dict[str, Any], m: MemberView | None, op: Operation, policy: Policy, now: datetime,
             events: list[PlanEvent], name: str) -> None:
    """Fold the member's report and liveness into the node's entry."""
    if e["phase"] in (SUCCEEDED, SKIPPED, FAILED):
        return
    grant = e.get("grant")
    if e["phase"] == PENDING and not grant and m is not None and m.kubelet is not None \
            and m.kubelet >= policy.target:
        # At the target without a turn on record: the record lagged behind this node's upgrade
        # (or someone upgraded it by hand). Never grant an empty list of hops.
        r = m.report
        if r is not None and r.uid == op.uid and r.phase == "Succeeded":
            e["phase"], e["message"] = SUCCEEDED, f"upgraded to {policy.target}"
            e.setdefault("finishedAt", r.finished_at or _iso(now))
        else:
            e["phase"], e["message"] = SKIPPED, f"already at {m.kubelet}"
        return
    if e["phase"] in IN_FLIGHT and grant:
        if m is None or not m.alive:
            if e["phase"] != LOST:
                events.append(PlanEvent("NodeLost", f"kupd on {name} stopped renewing its lease mid-upgrade; "
                                        "its turn is held, no other node replaces it", name, warning=True))
            e["phase"] = LOST
            e["message"] = "member lease expired; waiting for kupd on this node to come back"
            return
        r = m.report
        stale = bool(r and r.granted_at and r.granted_at != grant.get("grantedAt"))
        if r is None or stale or r.uid != op.uid or r.versions != grant.get("versions"):
            if e["phase"] == LOST:
                e["phase"] = GRANTED
                e["message"] = "member is back"
            return
        if e["phase"] == LOST:
            events.append(PlanEvent("NodeBack", f"kupd on {name} is back", name))
        prev_step, prev_msg = e.get("step"), e.get("message")
        e["step"], e["attempts"] = r.step, r.attempts
        e["message"] = r.message[:1000]
        if r.started_at:
            e.setdefault("startedAt", r.started_at)
        if r.phase == "Upgrading":
            e["phase"] = UPGRADING
            if r.step != prev_step:
                events.append(PlanEvent("StepStarted", f"{name}: {r.step}", name))
            if r.reason == "DrainBlocked" and r.message != prev_msg:
                events.append(PlanEvent("DrainBlocked", f"{name}: {r.message}", name, warning=True))
        elif r.phase == "Succeeded":
            final = m.kubelet is not None and m.kubelet >= policy.target
            if final:
                e["phase"] = SUCCEEDED
                e["finishedAt"] = r.finished_at or _iso(now)
                e["message"] = f"upgraded to {policy.target}"
                events.append(PlanEvent("NodeUpgraded", f"{name} upgraded to {policy.target}", name))
            else:
                # A control-plane node between hops: done with this hop, waits for the next.
                e["phase"] = PENDING
                e["message"] = f"at {m.kubelet}, waiting for the next hop"
            e.pop("grant", None)
        elif r.phase == "Failed":
            e["phase"] = FAILED
            e["finishedAt"] = r.finished_at or _iso(now)
            events.append(PlanEvent("NodeFailed", f"{name} failed at step {r.step}: {r.message}", name,
                                    warning=True))


def _health_gate(gates: Mapping[str, Any] | None, ordered: list[dict[str, Any]], nodes: Sequence[NodeView],
                 now: datetime, external: str | None) -> str | None:
    """The failing gate, if any. Gates hold only once a node has finished in this operation: they
    guard the next grant after the control plane, after the canaries and between waves."""
    if not gates:
        return None
    finished = [e for e in ordered if e["phase"] == SUCCEEDED]
    if not finished:
        return None
    if gates.get("nodesReady", True):
        ready = {n.name: n.ready for n in nodes}
        for e in finished:
            if not ready.get(e["name"], False):
                return f"node {e['name']} is not Ready after its upgrade"
    if external:
        return external
    bake = int(gates.get("bakeSeconds", 0))
    if bake:
        last = max((f for e in finished if (f := parse_time(e.get("finishedAt")))), default=None)
        if last is not None and now < last + timedelta(seconds=bake):
            return f"baking {bake}s after {max(finished, key=lambda e: e.get('finishedAt', ''))['name']} finished"
    return None


def _window_decision(op: Operation, ordered: list[dict[str, Any]], policy: Policy,
                     now: datetime) -> windows.WindowDecision | None:
    start = parse_time(op.annotations.get("kupd.io/window-start"))
    end = parse_time(op.annotations.get("kupd.io/window-end"))
    if start is None and end is None:
        return None
    measured = []
    for e in ordered:
        s, f = parse_time(e.get("startedAt")), parse_time(e.get("finishedAt"))
        if e["phase"] == SUCCEEDED and s and f:
            measured.append((f - s).total_seconds())
    expected = windows.expected_node_seconds(measured, policy.default_node_seconds)
    return windows.can_start_node(now, start, end, expected)


def _grant(ordered: list[dict[str, Any]], departed: list[dict[str, Any]], hops: list[Version], policy: Policy,
           members: Mapping[str, MemberView], epoch: int, now: datetime, events: list[PlanEvent],
           status: dict[str, Any], canaries: set[str], elsewhere: Mapping[str, Grant]) -> str | None:
    """Grant what the limits allow. Returns what the operation waits for when nothing can be
    granted and nothing of its own is in flight, else None.

    The limits count every turn out: this operation's, selected or not (a node that left the
    selection or the cluster keeps its slot until its turn is over), and other operations'.
    """
    def give(e: dict[str, Any], versions: list[Version], first_cp: bool, backup: bool) -> bool:
        if not versions:
            return False  # never an empty turn, and never a slot spent on one
        e["phase"] = GRANTED
        e["grant"] = {"epoch": epoch, "versions": [str(v) for v in versions], "firstControlPlane": first_cp,
                      "backup": backup, "grantedAt": _iso(now)}
        e["message"] = f"granted {', '.join(str(v) for v in versions)}"
        e.setdefault("startedAt", _iso(now))
        events.append(PlanEvent("NodeGranted", f"{e['name']} may upgrade to {versions[-1]}", e["name"]))
        return True

    def current(e: dict[str, Any]) -> Version | None:
        m = members.get(e["name"])
        return m.kubelet if m else None

    def eligible(e: dict[str, Any]) -> bool:
        m = members.get(e["name"])
        return (e["phase"] == PENDING and m is not None and m.alive and m.kubelet is not None
                and e["name"] not in elsewhere)

    # Every in-flight grant is re-stamped with this coordinator's epoch: agents ignore older ones.
    for e in [*ordered, *departed]:
        if e["phase"] in IN_FLIGHT and e.get("grant"):
            e["grant"]["epoch"] = epoch

    out = [e for e in [*ordered, *departed] if e["phase"] in IN_FLIGHT]
    cps_out = [e["name"] for e in out if e["role"] == "ControlPlane"] + sorted(
        n for n, g in elsewhere.items() if g.control_plane)
    workers_out = [e["name"] for e in out if e["role"] == "Worker"] + sorted(
        n for n, g in elsewhere.items() if not g.control_plane)

    cps = [e for e in ordered if e["role"] == "ControlPlane"]
    cp_left = [e for e in cps if e["phase"] not in DONE]
    if cp_left:
        if cps_out:
            return None if any(e["role"] == "ControlPlane" for e in out) else (
                f"waiting for the control-plane turn of {', '.join(cps_out)} to end")
        if workers_out:
            # A control-plane node that joined mid-rollout waits for the workers in flight: a
            # worker's new kubelet must never meet an older API server.
            return (f"control-plane node {cp_left[0]['name']} waits for the workers in flight "
                    f"({', '.join(workers_out)}) to finish")
        unknown = [e["name"] for e in cp_left if current(e) is None]
        if unknown:
            # Which control-plane node goes first (kubeadm upgrade apply) and whether the API
            # servers stay within one minor depend on every one's version: wait to know them.
            return f"waiting for the kupd members of control-plane nodes {', '.join(unknown)} to report their versions"
        # Hop-major: every control-plane node reaches hop i before any starts hop i+1, so the
        # API servers never drift more than one minor apart.
        for hop in hops:
            behind = [e for e in cp_left if (v := current(e)) is not None and v < hop]
            if not behind:
                continue
            first_cp = all((v := current(e)) is None or v < hop for e in cps)
            nxt = behind[0]
            if eligible(nxt):
                need_backup = (policy.backup_required and not status.get("backup")
                               and hop == hops[0] and first_cp)
                give(nxt, [hop], first_cp, need_backup)
                return None
            why = nxt.get("message") or "no live member"
            return f"control-plane node {nxt['name']} is next and not eligible ({why})"
        return f"control-plane nodes {', '.join(e['name'] for e in cp_left)} have no hop left to take"

    workers = [e for e in ordered if e["role"] == "Worker"]
    slots = policy.concurrency - len(workers_out)
    canary_entries = [e for e in workers if e["name"] in canaries]
    canaries_done = all(e["phase"] in DONE for e in canary_entries)
    candidates = [e for e in workers if e["name"] in canaries and e["phase"] == PENDING]
    if canaries_done:
        if canary_entries and policy.canary_bake_seconds:
            finished = [f for e in canary_entries if (f := parse_time(e.get("finishedAt")))]
            if finished and now < max(finished) + timedelta(seconds=policy.canary_bake_seconds):
                return "canaries upgraded; baking before the other workers"
        candidates = [e for e in workers if e["phase"] == PENDING]
    given = False
    for e in candidates:
        if slots <= 0:
            break
        if not eligible(e):
            continue
        v = current(e)
        assert v is not None
        if give(e, [h for h in hops if h > v], False, False):
            slots -= 1
            given = True
    if given or any(e["phase"] in IN_FLIGHT for e in ordered):
        return None
    if candidates and slots <= 0 and workers_out:
        return f"every worker slot is held by a turn out ({', '.join(workers_out)})"
    return None


@dataclass(frozen=True)
class Wave:
    """Nodes granted together in a dry run, with when they start and end."""

    nodes: list[str]
    versions: list[list[str]]
    start_seconds: float
    end_seconds: float


def simulate(spec: Mapping[str, Any], nodes: Sequence[NodeView], members: Mapping[str, MemberView],
             node_seconds: float, resolved_minors: Mapping[tuple[int, int], str] | None = None,
             now: datetime | None = None) -> tuple[dict[str, Any], list[Wave]]:
    """Dry-run the planner to the end: every granted node finishes after `node_seconds`.

    Returns the final status and the waves in order; what `kupd plan` prints. Pure.
    """
    t0 = now or datetime(2000, 1, 1, tzinfo=UTC)
    members = dict(members)
    op = Operation("plan", "plan", 1, spec, {})
    clock = 0.0
    waves: list[Wave] = []
    running: dict[str, float] = {}
    for _ in range(100 * (len(nodes) + 10)):
        result = plan(op, nodes, members, epoch=0, coordinator="plan", now=t0 + timedelta(seconds=clock),
                      resolved_minors=resolved_minors)
        status = result.status
        new = [e for e in status.get("nodes", []) if e["phase"] == GRANTED and e["name"] not in running]
        if new:
            if waves and waves[-1].start_seconds == clock:
                # Several slots freed at the same moment are one wave.
                last = waves.pop()
                new_names, new_versions = last.nodes, last.versions
            else:
                new_names, new_versions = [], []
            waves.append(Wave(new_names + [e["name"] for e in new],
                              new_versions + [e["grant"]["versions"] for e in new], clock, clock + node_seconds))
            for e in new:
                running[e["name"]] = clock + node_seconds
        stuck = status.get("phase") == OP_PENDING and not status.get("nodes")
        if (stuck or status.get("phase") in (OP_SUCCEEDED, OP_FAILED, OP_ATTENTION)) and not running:
            return status, waves
        if not running:
            # Nothing in flight and nothing granted: waiting on time (a canary bake) — step the clock.
            clock += 15.0
            op = Operation("plan", "plan", 1, spec, status)
            continue
        name = min(running, key=lambda n: running[n])
        clock = running.pop(name)
        entry = next(e for e in status["nodes"] if e["name"] == name)
        versions = entry["grant"]["versions"]
        members[name] = MemberView(name, True, Version.parse(versions[-1]),
                                   Report("plan", "plan", 0, versions, "Succeeded", "uncordon",
                                          finished_at=_iso(t0 + timedelta(seconds=clock))))
        op = Operation("plan", "plan", 1, spec, status)
    raise RuntimeError("dry run did not converge")
