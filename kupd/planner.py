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
from datetime import datetime, timedelta
from typing import Any

from kupd import __version__, hazards, preflight, selectors, skew, windows
from kupd.api.models import DirectUpdateSpec, HealthGates, to_wire
from kupd.conditions import Condition, set_condition
from kupd.errors import ValidationError
from kupd.protocol import (
    ANN_RETRY_NODES,
    Grant,
    NodePhase,
    OpPhase,
    Report,
    Step,
    TurnPhase,
    grant_record,
)
from kupd.rfc3339 import format_time, parse_or_none
from kupd.versions import SkewError, Version, check_target

PENDING, GRANTED, UPGRADING, SUCCEEDED, FAILED, SKIPPED, LOST = (
    NodePhase.PENDING, NodePhase.GRANTED, NodePhase.UPGRADING, NodePhase.SUCCEEDED, NodePhase.FAILED,
    NodePhase.SKIPPED, NodePhase.LOST,
)
IN_FLIGHT = (GRANTED, UPGRADING, LOST)
DONE = (SUCCEEDED, SKIPPED)
CONTROL_PLANE, WORKER = "ControlPlane", "Worker"  # status.nodes[].role; absent means Worker
OP_PENDING, OP_RUNNING, OP_PAUSED, OP_SUCCEEDED, OP_FAILED, OP_ATTENTION = (
    OpPhase.PENDING, OpPhase.RUNNING, OpPhase.PAUSED, OpPhase.SUCCEEDED, OpPhase.FAILED, OpPhase.REQUIRES_ATTENTION,
)
TERMINAL_OP = (OP_SUCCEEDED, OP_FAILED)
MAX_NODE_MESSAGE = 2048  # status.nodes[].message
VERIFY_GRACE_SECONDS = 10.0
"""How long a reported success may wait for the Node to show the new kubelet version."""
# Reasons a node gives for stopping that name what the operator must do; others read NodeFailed.
ATTENTION_REASONS = ("DrainRefused", "DrainTimedOut")


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    control_plane: bool
    ready: bool = True
    kubelet: Version | None = None
    """The Node's status.nodeInfo.kubeletVersion: for skew, where no kupd member reports one."""


@dataclass(frozen=True)
class MemberView:
    """A node's kupd member as the planner sees it. `kubelet` is the version its Node reports (the
    kubelet writes it, not kupd); `report` is where its agent is; `problem` says what in its member
    Lease was invalid (protocol.decode_member_lease), a fact about this node only."""

    node: str
    alive: bool
    kubelet: Version | None
    report: Report | None = None
    problem: str | None = None
    facts: hazards.NodeFacts | None = None
    """The host facts of the upgrade-hazard checks, as the member reports them."""


@dataclass(frozen=True)
class Policy:
    """The parts of a DirectUpdate spec the planner acts on, derived from the parsed spec (whose
    model holds the defaults)."""

    target: Version
    concurrency: int = 1
    node_selector: Mapping[str, Any] | None = None
    canary_count: int = 0
    canary_selector: Mapping[str, Any] | None = None
    canary_bake_seconds: int = 0
    backup_required: bool = True
    paused: bool = False
    health_gates: HealthGates | None = None
    default_node_seconds: float = 600.0
    containerd: Version | None = None
    """spec.containerdVersion: installed with the kubelet, so the containerd hazard looks at it."""
    warn_only: frozenset[str] = frozenset()
    """spec.preflight.warnOnly: preflight checks that only warn."""

    @classmethod
    def of(cls, spec: DirectUpdateSpec) -> Policy:
        canary = spec.canary
        return cls(
            target=Version.parse(spec.version, "spec.version"),
            concurrency=spec.concurrency,
            node_selector=to_wire(spec.node_selector) if spec.node_selector is not None else None,
            canary_count=(canary.count or 0) if canary is not None else 0,
            canary_selector=to_wire(canary.selector) if canary is not None and canary.selector is not None else None,
            canary_bake_seconds=canary.bake_seconds if canary is not None else 0,
            backup_required=spec.backup.effective_policy != "Disabled",
            paused=spec.paused,
            health_gates=spec.health_gates,
            containerd=Version.parse(spec.containerd_version, "spec.containerdVersion")
            if spec.containerd_version else None,
            warn_only=frozenset(spec.preflight.warn_only or ()) if spec.preflight is not None else frozenset(),
        )


@dataclass(frozen=True)
class Operation:
    """One DirectUpdate as the planner sees it. `spec` is kupd.api.models' parse of its spec, or
    the ValidationError that parse raised (the operation then fails, naming the field)."""

    name: str
    uid: str
    generation: int
    spec: DirectUpdateSpec | ValidationError
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


# -- one round's working state -------------------------------------------------------------
@dataclass
class Round:
    """The inputs of one `plan` call and the status it builds: `status` is a fresh copy of the
    operation's, so the stages below change nothing but it and `events`."""

    op: Operation
    nodes: Sequence[NodeView]
    members: Mapping[str, MemberView]
    epoch: int
    now: datetime
    status: dict[str, Any]
    events: list[PlanEvent] = field(default_factory=list)
    delivered: Mapping[str, Grant] = field(default_factory=dict)

    def condition(self, ctype: str, value: bool, reason: str, message: str) -> None:
        conds: list[dict[str, Any]] = self.status.setdefault("conditions", [])
        set_condition(conds, Condition(ctype, "True" if value else "False", reason, message), self.now,
                      self.op.generation)

    def event(self, reason: str, message: str, node: str | None = None, warning: bool = False) -> None:
        self.events.append(PlanEvent(reason, message, node, warning))

    def fail(self, reason: str, message: str) -> None:
        if self.status.get("phase") != OP_FAILED:
            self.event(reason, message, warning=True)
        self.status["phase"] = OP_FAILED
        self.status["message"] = message[:1000]
        self.status.setdefault("finishedAt", format_time(self.now))
        self.condition("Progressing", False, reason, message)

    def plan(self) -> Plan:
        return Plan(self.status, self.events)


@dataclass(frozen=True)
class Selection:
    """The selected nodes in turn order (control plane, canaries, the rest; by name) and the canaries."""

    nodes: list[NodeView]
    canaries: frozenset[str]


# -- the planner: named stages ----------------------------------------------------------------
def plan(
    op: Operation,
    nodes: Sequence[NodeView],
    members: Mapping[str, MemberView],
    *,
    epoch: int,
    coordinator: str,
    now: datetime,
    resolved_minors: Mapping[tuple[int, int], str] | None = None,
    gate_failure: str | None = None,
    delivered: Mapping[str, Grant] | None = None,
    hop_errors: Mapping[tuple[int, int], str] | None = None,
    preflight_facts: preflight.ClusterFacts | None = None,
    deprecated_apis: Sequence[hazards.DeprecatedApi] | None = None,
) -> Plan:
    """Compute the next status of one DirectUpdate: validate → select → hops → adopt/retry →
    backup → observe → conclude → gates → grant, each a pure function below.

    A spec that failed validation ends the operation Failed with a Condition naming the field.
    `resolved_minors` maps each intermediate minor to its newest patch in the operation's package
    source (None: a dry run, hops shown at .0); `hop_errors` says why a minor could not be resolved.
    `preflight_facts` are the cluster's facts for the preflight before the first grant (None: not
    checked); `deprecated_apis` the removed API versions clients still request (None: unknown).
    `gate_failure` is the coordinator's latest evaluation of the external health gates
    (control-plane pods, Prometheus): None when they pass or are not configured.
    `delivered` holds the grants found in the nodes' grant Leases. A grant is delivered before
    the status recording it is written, so after a coordinator change the status may lag: a
    delivered grant the status does not know is adopted, and its slot is never given twice.
    """
    r = Round(op, nodes, members, epoch, now, copy.deepcopy(dict(op.status)), delivered=delivered or {})
    r.status.update(observedGeneration=op.generation, coordinator=coordinator, epoch=epoch)
    if r.status.get("phase") in TERMINAL_OP:
        return r.plan()
    policy = validate(r)
    if policy is None:
        return r.plan()
    selection = select(r, policy)
    if selection is None:
        return r.plan()
    hops = fix_hops(r, policy, selection, resolved_minors, hop_errors or {})
    if hops is None:
        return r.plan()
    entries = adopt(r, policy, selection)
    retry(r, entries)
    record_backup(r, entries)
    ordered = observe(r, policy, selection, entries)
    attention = conclude(r, policy, ordered)
    if attention is None or not gates(r, policy, ordered, attention, gate_failure):
        return r.plan()
    if not check_preflight(r, policy, ordered, attention, preflight_facts):
        return r.plan()
    refusals: list[hazards.Hazard] = []
    held = grant(r, policy, ordered, hops, selection.canaries, refusals, deprecated_apis)
    hazard_conditions(r, refusals)
    if held is not None:
        # A skew no turn of this operation can fix: say so and grant nothing more.
        if r.status.get("phase") != OP_ATTENTION or r.status.get("message") != held:
            r.event("VersionSkew", held, warning=True)
        r.status["phase"], r.status["message"] = OP_ATTENTION, held
        r.condition("RequiresAttention", True, "VersionSkew", held)
        return r.plan()
    if refusals and not attention:
        r.status["phase"] = OP_ATTENTION
        r.status["message"] = f"upgrade hazard on {refusals[0].subject}: {refusals[0].message}"[:1000]
        r.condition("RequiresAttention", True, "UpgradeHazard", r.status["message"])
        return r.plan()
    done = sum(1 for e in ordered if e["phase"] in DONE)
    in_flight = [e for e in ordered if e["phase"] in IN_FLIGHT]
    if not attention:
        r.status["phase"] = OP_RUNNING
        r.status["message"] = (f"upgrading {', '.join(e['name'] for e in in_flight)}" if in_flight
                               else r.status.get("message", ""))
    r.status.setdefault("startedAt", format_time(now))
    r.condition("Progressing", True, "Upgrading", f"{done}/{len(ordered)} nodes done")
    return r.plan()


def validate(r: Round) -> Policy | None:
    """The policy of a valid spec; None when the spec failed validation (the operation fails)."""
    if isinstance(r.op.spec, ValidationError):
        r.condition("Valid", False, "InvalidSpec", str(r.op.spec))
        r.fail("InvalidSpec", str(r.op.spec))
        return None
    r.condition("Valid", True, "SpecValid", "the spec passed the daemon's validation")
    return Policy.of(r.op.spec)


def select(r: Round, policy: Policy) -> Selection | None:
    """Which nodes, in which order: control plane first, then canaries, then the rest, by name."""
    selected = sorted((n for n in r.nodes if selectors.matches(policy.node_selector, n.labels)),
                      key=lambda n: (not n.control_plane, n.name))
    if not selected:
        r.status["phase"] = OP_PENDING
        r.status["message"] = "no node matches spec.nodeSelector"
        return None
    workers = [n for n in selected if not n.control_plane]
    canaries: set[str] = set()
    if policy.canary_selector:
        canaries = {n.name for n in workers if selectors.matches(policy.canary_selector, n.labels)}
    elif policy.canary_count:
        canaries = {n.name for n in workers[: policy.canary_count]}
    selected.sort(key=lambda n: (not n.control_plane, n.name not in canaries, n.name))
    return Selection(selected, frozenset(canaries))


def fix_hops(r: Round, policy: Policy, selection: Selection, resolved_minors: Mapping[tuple[int, int], str] | None,
             hop_errors: Mapping[tuple[int, int], str] | None = None) -> list[Version] | None:
    """The hops, fixed when the operation starts from the oldest member among the selected nodes;
    None when they cannot be fixed yet or break a version-skew rule (the operation fails)."""
    status = r.status
    if not status.get("hops"):
        versions = [m.kubelet for n in selection.nodes if (m := r.members.get(n.name)) and m.kubelet]
        if not versions:
            status.setdefault("phase", OP_PENDING)
            status["message"] = "waiting for kupd members on the selected nodes"
            return None
        try:
            needed = hop_minors(min(versions), policy.target)[:-1]
        except SkewError as skew:
            r.condition("Valid", False, skew.rule, str(skew))
            r.fail("VersionSkew", str(skew))
            return None
        # The coordinator resolves each intermediate minor's newest patch from the operation's own
        # package source; one it could not resolve holds the operation (never a guessed .0). Only
        # the dry run, which has no package source, passes None and shows .0 placeholders.
        missing = [mk for mk in needed if resolved_minors is not None and mk not in resolved_minors]
        if missing:
            mk = missing[0]
            why = (hop_errors or {}).get(mk) or "not resolved yet"
            msg = f"cannot resolve the newest v{mk[0]}.{mk[1]} patch from spec.packageSource: {why}; retrying"
            status.setdefault("phase", OP_PENDING)
            status["message"] = msg
            r.condition("HopsResolved", False, "PackageSourceUnavailable", msg)
            return None
        status["hops"] = hops_for(min(versions), policy.target, resolved_minors or {})
        if needed:
            r.condition("HopsResolved", True, "Resolved", f"hops {', '.join(status['hops'])} from spec.packageSource")
    # The kubelet-never-newer rule: a worker-only selection cannot pass the control plane.
    if not any(n.control_plane for n in selection.nodes):
        cp_versions = [m.kubelet for n in r.nodes if n.control_plane
                       and (m := r.members.get(n.name)) and m.kubelet]
        if cp_versions and policy.target.minor_key > min(cp_versions).minor_key:
            msg = (f"target {policy.target} is newer than the control plane {min(cp_versions)}; "
                   "select the control-plane nodes too (rule: kubelet-not-newer-than-apiserver)")
            r.condition("Valid", False, "kubelet-not-newer-than-apiserver", msg)
            r.fail("VersionSkew", msg)
            return None
    return [Version.parse(h) for h in status["hops"]]


def adopt(r: Round, policy: Policy, selection: Selection) -> dict[str, dict[str, Any]]:
    """Every node's entry, by name: one for each selected node, and a grant delivered but not yet
    recorded adopted first, so that the retry, the backup record and the observation all see it."""
    entries: dict[str, dict[str, Any]] = {e["name"]: e for e in r.status.get("nodes") or []}
    for n in selection.nodes:
        m = r.members.get(n.name)
        e = entries.get(n.name)
        if e is None:
            # Compact (docs/development/protocol.md, "The size of the status"): role only for the
            # control plane, canary only when true, toVersion only when it is not spec.version.
            e = {"name": n.name, "phase": PENDING}
            if n.control_plane:
                e["role"] = CONTROL_PLANE
            if n.name in selection.canaries:
                e["canary"] = True
            if m and m.kubelet:
                e["fromVersion"] = str(m.kubelet)
                if m.kubelet >= policy.target:
                    e["phase"] = SKIPPED
                    e["message"] = f"already at {m.kubelet}"
            entries[n.name] = e
        _adopt(e, r.delivered.get(n.name), r.op, r.epoch)
    return entries


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


def retry(r: Round, entries: dict[str, dict[str, Any]]) -> None:
    """An operator's retry request puts Failed nodes back in line, once per annotation value."""
    token = r.op.annotations.get(ANN_RETRY_NODES, "")
    if not token:
        return
    wanted = {x.strip() for x in token.split("#", 1)[0].split(",")}
    for name in wanted:
        e = entries.get(name)
        if e is not None and e["phase"] == FAILED and e.get("retryToken") != token and e.get("grant"):
            # The same work again under a fresh grant. The node's slot was never given to anyone
            # else (a failure stops all grants), so this stays within the limits.
            e.update(phase=GRANTED, attempts=0, retryToken=token, message="retry requested")
            e["grant"].update(epoch=r.epoch, grantedAt=format_time(r.now))
            e.pop("finishedAt", None)
            r.event("RetryRequested", f"{name}: retry requested by {ANN_RETRY_NODES}", name)


def record_backup(r: Round, entries: dict[str, dict[str, Any]]) -> None:
    """The verified backup is taken only from the node granted the backup (the first control-plane
    node), for that very grant: any other member's report could be forged by a worker's credential."""
    if r.status.get("backup"):
        return
    for e in entries.values():
        g = e.get("grant") or {}
        m = r.members.get(e["name"])
        if not (g.get("backup") and g.get("firstControlPlane") and e.get("role") == "ControlPlane"):
            continue
        if m and m.report and m.report.uid == r.op.uid and m.report.versions == g.get("versions") \
                and m.report.backup and m.report.granted_at in ("", g.get("grantedAt")):
            r.status["backup"] = dict(m.report.backup)
            _backup_conditions(r, m.report.backup)


def _backup_conditions(r: Round, b: Mapping[str, Any]) -> None:
    """Conditions for the backup record of the first control-plane node. A snapshot kept only on
    the node (no store, or a BestEffort upload that failed) and a BestEffort snapshot that failed
    let the operation go on, each with a Warning."""
    where = b.get("location") or "-"
    message = str(b.get("message") or "")
    if b.get("verified") and b.get("uploaded", True):
        msg = f"etcd snapshot {where} verified before any change"
        r.condition("BackupSucceeded", True, "BackupVerified", msg)
        r.condition("BackupUploaded", True, "Uploaded", msg)
        r.event("BackupTaken", msg)
    elif b.get("verified"):
        msg = f"etcd snapshot verified before any change; not uploaded: {message}"
        reason = "NoStoreConfigured" if "no backup store" in message else "UploadFailed"
        r.condition("BackupSucceeded", True, "LocalSnapshotOnly", msg)
        r.condition("BackupUploaded", False, reason, msg)
        r.event("BackupNotUploaded", msg, warning=True)
    else:
        msg = f"etcd snapshot failed (policy BestEffort, going on without one): {message}"
        r.condition("BackupSucceeded", False, "BestEffortBackupFailed", msg)
        r.event("BackupFailed", msg, warning=True)


def observe(r: Round, policy: Policy, selection: Selection, entries: dict[str, dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Bring every selected node's entry up to date with what its member reports; returns the
    selected entries in turn order and puts them (then the others, kept for the record) in the
    status, with the summary counts."""
    for n in selection.nodes:
        _observe(r, entries[n.name], r.members.get(n.name), policy, n.name)
        compact(entries[n.name])
    ordered = [entries[n.name] for n in selection.nodes]
    selected_names = {n.name for n in selection.nodes}
    r.status["nodes"] = ordered + [e for name, e in entries.items() if name not in selected_names]
    summary = {k: 0 for k in ("total", "pending", "upgrading", "succeeded", "failed", "skipped")}
    for e in ordered:
        summary["total"] += 1
        key = {PENDING: "pending", SUCCEEDED: "succeeded", FAILED: "failed", SKIPPED: "skipped"}.get(
            e["phase"], "upgrading")
        summary[key] += 1
    r.status["summary"] = summary
    return ordered


def _observe(r: Round, e: dict[str, Any], m: MemberView | None, policy: Policy, name: str) -> None:
    """Fold the member's report and liveness into the node's entry; an invalid member Lease is
    said in the entry and in a Warning Event (its report reads as none: the node keeps its slot)."""
    before = e.get("message")
    _observe_member(r, e, m, policy, name)
    if m is not None and m.problem and e["phase"] not in (SUCCEEDED, SKIPPED, FAILED):
        note = f"node {name}: {m.problem}"[:MAX_NODE_MESSAGE]
        if before != note:
            r.event("InvalidReport", note, name, warning=True)
        e["message"] = note


def _observe_member(r: Round, e: dict[str, Any], m: MemberView | None, policy: Policy, name: str) -> None:
    if e["phase"] in (SUCCEEDED, SKIPPED, FAILED):
        return
    grant = e.get("grant")
    if e["phase"] == PENDING and not grant and m is not None and m.kubelet is not None \
            and m.kubelet >= policy.target:
        _at_target(r, e, m, policy)
    elif e["phase"] in IN_FLIGHT and grant:
        if m is None or not m.alive:
            if e["phase"] != LOST:
                r.event("NodeLost", f"kupd on {name} stopped renewing its lease mid-upgrade; "
                        "its turn is held, no other node replaces it", name, warning=True)
            e["phase"] = LOST
            e["message"] = "member lease expired; waiting for kupd on this node to come back"
            return
        _fold_report(r, e, m, grant, policy, name)


# What a finished node's entry keeps: who (and whether a canary), the outcome, when and how long (the bake and the
# maintenance window read those), retries beyond the first attempt and an operator's retry token.
_DONE_KEEP = ("name", "role", "canary", "phase", "finishedAt", "seconds", "retryToken")


def compact(e: dict[str, Any]) -> None:
    """Shrink an entry to what it must say (pure, idempotent): at 10,000 nodes the status must
    stay well under etcd's request limit. A finished node (Succeeded, Skipped) keeps `_DONE_KEEP`,
    its turn's duration in `seconds` instead of startedAt, and `attempts` only above 1; any entry
    drops `role: Worker`, `canary: false`, `attempts: 0` (the absent values' meaning)."""
    if e.get("role") == WORKER:
        del e["role"]
    if e.get("canary") is False:
        del e["canary"]
    if e.get("attempts") == 0:
        del e["attempts"]
    if e["phase"] not in DONE:
        return
    started, finished = parse_or_none(e.get("startedAt")), parse_or_none(e.get("finishedAt"))
    if started is not None and finished is not None:
        e["seconds"] = max(0, round((finished - started).total_seconds()))
    attempts = e.get("attempts")
    for key in [k for k in e if k not in _DONE_KEEP]:
        del e[key]
    if isinstance(attempts, int) and attempts > 1:
        e["attempts"] = attempts


def node_seconds(e: Mapping[str, Any]) -> float | None:
    """How long a finished node's turn took: `seconds` of a compact entry, else from its times."""
    if isinstance(e.get("seconds"), int):
        return float(e["seconds"])
    s, f = parse_or_none(e.get("startedAt")), parse_or_none(e.get("finishedAt"))
    return (f - s).total_seconds() if s and f else None


def _at_target(r: Round, e: dict[str, Any], m: MemberView, policy: Policy) -> None:
    """At the target without a turn on record: the record lagged behind this node's upgrade (or
    someone upgraded it by hand). Never grant an empty list of hops."""
    report = m.report
    if report is not None and report.uid == r.op.uid and report.phase == TurnPhase.SUCCEEDED:
        e["phase"], e["message"] = SUCCEEDED, f"upgraded to {policy.target}"
        e.setdefault("finishedAt", report.finished_at or format_time(r.now))
    else:
        e["phase"], e["message"] = SKIPPED, f"already at {m.kubelet}"


def _fold_report(r: Round, e: dict[str, Any], m: MemberView, grant: dict[str, Any], policy: Policy,
                 name: str) -> None:
    """A live member's report on the turn its entry records."""
    report = m.report
    stale = bool(report and report.granted_at and report.granted_at != grant.get("grantedAt"))
    if report is None or stale or report.uid != r.op.uid or report.versions != grant.get("versions"):
        if e["phase"] == LOST:
            e["phase"] = GRANTED
            e["message"] = "member is back"
        return
    if e["phase"] == LOST:
        r.event("NodeBack", f"kupd on {name} is back", name)
    prev_step, prev_msg = e.get("step"), e.get("message")
    e["step"], e["attempts"] = report.step, report.attempts
    e["message"] = report.message[:1000]
    if report.started_at:
        e.setdefault("startedAt", report.started_at)
    if report.phase == TurnPhase.UPGRADING:
        e["phase"] = UPGRADING
        if report.step != prev_step:
            r.event("StepStarted", f"{name}: {report.step}", name)
        if report.reason == "DrainBlocked" and report.message != prev_msg:
            r.event("DrainBlocked", f"{name}: {report.message}", name, warning=True)
    elif report.phase == TurnPhase.SUCCEEDED:
        # The member only claims it; the Node (written by the kubelet) must agree.
        hop = Version.parse(str(grant["versions"][-1]))
        if m.kubelet is not None and m.kubelet >= policy.target:
            e["phase"] = SUCCEEDED
            e["finishedAt"] = report.finished_at or format_time(r.now)
            e["message"] = f"upgraded to {policy.target}"
            r.event("NodeUpgraded", f"{name} upgraded to {policy.target}", name)
        elif m.kubelet is not None and m.kubelet >= hop:
            # A control-plane node between hops: done with this hop, waits for the next.
            e["phase"] = PENDING
            e["message"] = f"at {m.kubelet}, waiting for the next hop"
        else:
            _unverified(r, e, m, report, hop, name)
            return
        e.pop("grant", None)
    elif report.phase == TurnPhase.FAILED:
        e["phase"] = FAILED
        if report.reason:
            e["reason"] = report.reason[:63]
        e["finishedAt"] = report.finished_at or format_time(r.now)
        r.event("NodeFailed", f"{name} failed at step {report.step}: {report.message}", name, warning=True)


def _unverified(r: Round, e: dict[str, Any], m: MemberView, report: Report, hop: Version, name: str) -> None:
    """A success its Node does not show: after a short grace (the agent reports success only once
    the Node showed the version, but this coordinator's watch of the Node may lag its watch of the
    Lease) it is a failed verify, naming both versions."""
    node_says = str(m.kubelet) if m.kubelet is not None else "no kubelet version"
    claimed = parse_or_none(report.finished_at)
    if claimed is not None and abs((r.now - claimed).total_seconds()) < VERIFY_GRACE_SECONDS:
        e["message"] = f"reported {hop}; waiting for its Node to show it (the Node reports {node_says})"
        return
    e["phase"] = FAILED
    e["step"] = Step.VERIFY
    e["finishedAt"] = format_time(r.now)
    e["message"] = f"verify: kupd on {name} reported kubelet {hop}, but its Node reports {node_says}"
    r.event("NodeFailed", f"{name} failed at step {Step.VERIFY}: {e['message']}", name, warning=True)


def conclude(r: Round, policy: Policy, ordered: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The operation's outcome so far: None when it ended (a required backup failed, every node is
    done) or a failed node stops all grants; else the entries that need attention (Failed, Lost),
    with RequiresAttention said for them or for a node without a member."""
    failed = [e for e in ordered if e["phase"] == FAILED]
    backup_failed = [e for e in failed if e.get("step") == Step.BACKUP]
    if backup_failed:
        msg = f"backup failed on {backup_failed[0]['name']}: {backup_failed[0].get('message', '')}"
        r.condition("BackupSucceeded", False, "BackupFailed", msg)
        r.fail("BackupFailed", msg)
        return None
    if all(e["phase"] in DONE for e in ordered):
        if r.status.get("phase") != OP_SUCCEEDED:
            r.event("Succeeded", f"all {len(ordered)} nodes at {policy.target}")
        r.status["phase"] = OP_SUCCEEDED
        r.status["message"] = f"all {len(ordered)} selected nodes are at {policy.target}"
        r.status.setdefault("finishedAt", format_time(r.now))
        r.status["progress"] = f"{len(ordered)}/{len(ordered)}"
        r.condition("Progressing", False, "Completed", r.status["message"])
        r.condition("RequiresAttention", False, "NoProblem", "")
        return None
    done = sum(1 for e in ordered if e["phase"] in DONE)
    r.status["progress"] = f"{done}/{len(ordered)}"
    attention = [e for e in ordered if e["phase"] in (FAILED, LOST)]
    no_member = [e for e in ordered if e["phase"] == PENDING and e["name"] not in r.members]
    if not (attention or no_member):
        r.condition("RequiresAttention", False, "NoProblem", "")
        return attention
    e0 = (attention or no_member)[0]
    reason = {"Failed": str(e0.get("reason")) if e0.get("reason") in ATTENTION_REASONS else "NodeFailed",
              "Lost": "NodeLost"}.get(e0["phase"], "NoMember")
    msg = (f"node {e0['name']}: {e0.get('message') or reason}" if attention
           else f"node {e0['name']} has no live kupd member; install or start kupd there")
    if r.status.get("phase") != OP_ATTENTION:
        r.event(reason, msg, e0["name"], warning=True)
    r.status["phase"] = OP_ATTENTION
    r.status["message"] = msg
    r.condition("RequiresAttention", True, reason, msg)
    # A failed step stops all further grants until an operator acts.
    return None if failed else attention


def gates(r: Round, policy: Policy, ordered: list[dict[str, Any]], attention: list[dict[str, Any]],
          gate_failure: str | None) -> bool:
    """Whether a new turn may be given now: not paused, inside the maintenance window (if any),
    and every health gate passing. When not, the operation says why."""
    status = r.status
    if policy.paused:
        status["phase"] = OP_PAUSED
        status["message"] = "paused by spec.paused; nodes already granted finish their turn"
        r.condition("Progressing", False, "Paused", status["message"])
        return False
    try:
        window = _window_decision(r.op, ordered, policy, r.now)
    except ValidationError as err:
        # The annotations are written by the scheduler, or by anyone allowed to patch the object's
        # metadata: a bad one holds this operation's next grants (when may they start?) and says so.
        msg = f"invalid maintenance window, no node starts until it is fixed: {err}"
        if status.get("message") != msg and not attention:
            r.event("InvalidWindow", msg, warning=True)
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = msg
        r.condition("Progressing", False, "InvalidWindow", msg)
        return False
    if window is not None and not window.allowed:
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = window.reason
        r.condition("Progressing", False, "OutsideWindow", window.reason)
        return False
    gate = _health_gate(policy.health_gates, ordered, r.nodes, r.now, gate_failure)
    if gate is not None:
        if status.get("phase") != OP_PAUSED or status.get("message") != gate:
            r.event("HealthGateFailed", gate, warning=True)
        r.condition("HealthGates", False, "GateFailed", gate)
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = f"health gate: {gate}"
        return False
    if policy.health_gates is not None:
        r.condition("HealthGates", True, "GatesPassed", "every health gate passes")
    return True


def turn_over(m: MemberView | None, g: Grant) -> bool:
    """Whether the node has reported the end (Succeeded or Failed) of the turn `g` gave it."""
    report = m.report if m is not None else None
    return (report is not None and report.uid == g.uid and report.granted_at == g.granted_at
            and report.phase in (TurnPhase.SUCCEEDED, TurnPhase.FAILED))


def _health_gate(gates: HealthGates | None, ordered: list[dict[str, Any]], nodes: Sequence[NodeView],
                 now: datetime, external: str | None) -> str | None:
    """The failing gate, if any. Gates hold only once a node has finished in this operation: they
    guard the next grant after the control plane, after the canaries and between waves."""
    if gates is None:
        return None
    finished = [e for e in ordered if e["phase"] == SUCCEEDED]
    if not finished:
        return None
    if gates.nodes_ready:
        ready = {n.name: n.ready for n in nodes}
        for e in finished:
            if not ready.get(e["name"], False):
                return f"node {e['name']} is not Ready after its upgrade"
    if external:
        return external
    bake = gates.bake_seconds
    if bake:
        last = max((f for e in finished if (f := parse_or_none(e.get("finishedAt")))), default=None)
        if last is not None and now < last + timedelta(seconds=bake):
            return f"baking {bake}s after {max(finished, key=lambda e: e.get('finishedAt', ''))['name']} finished"
    return None


def _window_decision(op: Operation, ordered: list[dict[str, Any]], policy: Policy,
                     now: datetime) -> windows.WindowDecision | None:
    start, end = windows.window_from_annotations(op.annotations)
    if start is None and end is None:
        return None
    measured = []
    for e in ordered:
        seconds = node_seconds(e) if e["phase"] == SUCCEEDED else None
        if seconds is not None:
            measured.append(seconds)
    expected = windows.expected_node_seconds(measured, policy.default_node_seconds)
    return windows.can_start_node(now, start, end, expected)


# -- preflight and hazards ----------------------------------------------------------------------
def check_preflight(r: Round, policy: Policy, ordered: list[dict[str, Any]], attention: list[dict[str, Any]],
                    facts: preflight.ClusterFacts | None) -> bool:
    """The cluster preflight, until it has passed once: one Condition per failing check, and whether
    a turn may be given. Checks in spec.preflight.warnOnly only warn."""
    passed = any(c["type"] == "Preflight" and c["status"] == "True" for c in r.status.get("conditions") or [])
    if facts is None or passed:
        return True
    targeted = [e["name"] for e in ordered if e["phase"] not in DONE]
    verdict = preflight.judge(preflight.evaluate(targeted, facts, __version__), policy.warn_only)
    failing = verdict.by_check()
    conds = r.status.get("conditions") or []
    for check in preflight.CHECKS:
        ctype = f"Preflight{check}"
        if check in failing:
            msg = preflight.condition_message(failing[check])
            if not any(c["type"] == ctype and c["status"] == "False" and c["message"] == msg for c in conds):
                r.event(ctype, msg, warning=True)
            r.condition(ctype, False, "WarnOnly" if check in policy.warn_only else "CheckFailed", msg)
        elif any(c["type"] == ctype for c in conds):
            r.condition(ctype, True, "CheckPassed", "")
    if verdict.blocking:
        first = verdict.blocking[0]
        msg = (f"preflight {first.check}: {first.message}"
               + (f" (and {len(verdict.blocking) - 1} more findings)" if len(verdict.blocking) > 1 else ""))
        r.condition("Preflight", False, "ChecksFailed", msg)
        if not attention:
            r.status["phase"], r.status["message"] = OP_PENDING, msg
        return False
    r.condition("Preflight", True, "ChecksPassed",
                "every preflight check passed" + (" (some only warn)" if verdict.warnings else ""))
    return True


def hazard_conditions(r: Round, refusals: list[hazards.Hazard]) -> None:
    """Condition UpgradeHazards: False naming each refused turn and its fix; True once none is left."""
    conds = r.status.get("conditions") or []
    if not refusals:
        if any(c["type"] == "UpgradeHazards" for c in conds):
            r.condition("UpgradeHazards", True, "NoHazard", "")
        return
    msg = "; ".join(h.message for h in refusals)
    if not any(c["type"] == "UpgradeHazards" and c["status"] == "False" and c["message"] == msg[:1000]
               for c in conds):
        for h in refusals:
            r.event(h.rule, h.message, h.subject, warning=True)
    r.condition("UpgradeHazards", False, refusals[0].rule, msg)


# -- grant ------------------------------------------------------------------------------------
@dataclass
class Turns:
    """One grant stage's view: who may have a turn, and what a turn would break."""

    r: Round
    policy: Policy
    elsewhere: Mapping[str, Grant]
    refusals: list[hazards.Hazard]
    deprecated_apis: Sequence[hazards.DeprecatedApi]

    def current(self, e: dict[str, Any]) -> Version | None:
        m = self.r.members.get(e["name"])
        return m.kubelet if m else None

    def eligible(self, e: dict[str, Any]) -> bool:
        """Pending, with a live member, not in another operation's turn, and its Node Ready."""
        m = self.r.members.get(e["name"])
        ready = next((n.ready for n in self.r.nodes if n.name == e["name"]), True)
        return (e["phase"] == PENDING and m is not None and m.alive and m.kubelet is not None
                and e["name"] not in self.elsewhere and ready)

    def refused(self, e: dict[str, Any], versions: list[Version]) -> bool:
        """Whether the node's host would break on this turn's target: it then stays Pending with the
        fix in its message, and the operation says so."""
        m = self.r.members.get(e["name"])
        if not versions or m is None or m.facts is None:
            return False
        found = hazards.node_hazards(e["name"], m.facts, versions[-1], self.policy.containerd)
        if found:
            e["message"] = f"refused: {found[0].message}"[:1000]
            self.refusals.extend(found)
        return bool(found)


def grant(r: Round, policy: Policy, ordered: list[dict[str, Any]], hops: list[Version],
          canaries: frozenset[str], refusals: list[hazards.Hazard] | None = None,
          deprecated_apis: Sequence[hazards.DeprecatedApi] | None = None) -> str | None:
    """Give the next turns within the limits: every in-flight grant re-stamped with this
    coordinator's epoch (agents ignore older ones), then the control plane one node at a time,
    hop-major, with worker waves between its hops wherever the next hop would leave a kubelet too
    far behind; then canaries, their bake, and the other workers up to `concurrency`. A turn whose
    host would break on its target is refused (`refusals`). Returns why the operation cannot go on
    without an operator (a version skew no turn of it can fix), or None.

    Turns of another DirectUpdate that are not over yet (it was deleted or failed mid-turn while
    its nodes still work) hold their slots too: a turn ends only when its node says so."""
    elsewhere = {n: g for n, g in r.delivered.items()
                 if g.uid != r.op.uid and not turn_over(r.members.get(n), g)}
    for e in ordered:
        if e["phase"] in IN_FLIGHT and e.get("grant"):
            e["grant"]["epoch"] = r.epoch
    t = Turns(r, policy, elsewhere, refusals if refusals is not None else [], deprecated_apis or ())
    cps = [e for e in ordered if e.get("role") == CONTROL_PLANE]
    workers = [e for e in ordered if e.get("role", WORKER) == WORKER]
    versions = cluster_versions(r.nodes, r.members)
    interleave: dict[str, str] = {}
    if any(e["phase"] not in DONE for e in cps):
        held = _grant_control_plane(t, cps, workers, hops, versions, interleave)
        if held is not None or not interleave:
            return held
    # Workers move only as far as every API server has: a kubelet is never newer than one.
    ceiling = min(versions.apiservers.values(), default=hops[-1])
    _grant_workers(t, workers, hops, canaries, ceiling, interleave)
    return None


def _give(r: Round, e: dict[str, Any], versions: list[Version], first_cp: bool, backup: bool, why: str = "") -> None:
    if not versions:
        return
    e["phase"] = GRANTED
    e["grant"] = grant_record(r.epoch, [str(v) for v in versions], first_cp, backup, format_time(r.now))
    # grant_reason reads `why` back out of this message.
    e["message"] = f"granted {', '.join(str(v) for v in versions)}" + (f" ({why})" if why else "")
    e.setdefault("startedAt", format_time(r.now))
    r.event("NodeGranted", f"{e['name']} may upgrade to {versions[-1]}", e["name"])


def grant_reason(message: str) -> str:
    """The reason `_give` put in a grant's message: "granted v1.28.15, v1.29.10 (<reason>)"."""
    if message.startswith("granted ") and message.endswith(")") and " (" in message:
        return message[message.index(" (") + 2:-1]
    return ""


def _grant_control_plane(t: Turns, cps: list[dict[str, Any]], workers: list[dict[str, Any]], hops: list[Version],
                         versions: skew.ClusterVersions, interleave: dict[str, str]) -> str | None:
    """One control-plane node at a time, hop-major: every control-plane node reaches hop i before
    any starts hop i+1, so the API servers never drift more than one minor apart. Never while a
    worker is in its turn, and never to a hop that would leave a kubelet (or kube-proxy) anywhere in
    the cluster too far behind: the workers that would fall behind are put in `interleave` to move
    first. Returns why nothing can move when no turn of this operation can fix it."""
    r = t.r
    if any(e["phase"] in IN_FLIGHT for e in cps + workers) or any(True for _ in t.elsewhere.values()):
        return None
    cp_left = [e for e in cps if e["phase"] not in DONE]
    for hop in hops:
        behind = [e for e in cp_left if (v := t.current(e)) is not None and v < hop]
        if not behind:
            continue
        nxt = behind[0]
        broken = skew.control_plane_move(versions, nxt["name"], hop)
        if broken:
            fixable = {e["name"] for e in workers if e["phase"] == PENDING}
            stuck = [rule for rule in broken if rule.subject not in fixable]
            if stuck:
                return (f"the API servers cannot move to {hop}: {stuck[0]}; upgrade or select that node, "
                        "or leave it out of the cluster")
            for rule in broken:
                interleave.setdefault(rule.subject, f"before the API servers move to {hop}: {rule}")
            return None
        removed = hazards.api_hazards(t.deprecated_apis, hop)
        if removed:
            # Clients still use API versions this hop removes: after it their requests fail.
            nxt["message"] = f"refused: {removed[0].message}"[:1000]
            t.refusals.extend(removed)
            return None
        first_cp = all((v := t.current(e)) is None or v < hop for e in cps)
        if t.eligible(nxt) and not t.refused(nxt, [hop]):
            need_backup = t.policy.backup_required and not r.status.get("backup") and hop == hops[0] and first_cp
            _give(r, nxt, [hop], first_cp, need_backup, f"control plane to v{hop.major}.{hop.minor}")
        return None
    return None


def _grant_workers(t: Turns, workers: list[dict[str, Any]], hops: list[Version], canaries: frozenset[str],
                   ceiling: Version, interleave: Mapping[str, str]) -> None:
    """Canaries first, then (after their bake) the other workers, never more than `concurrency`
    in flight, counting the turns of other operations still out; each up to `ceiling`, the oldest
    API server. Between control-plane hops (`interleave`): only the workers that would fall too far
    behind, canaries among them first."""
    r, policy = t.r, t.policy
    in_flight = [e for e in workers if e["phase"] in IN_FLIGHT]
    slots = policy.concurrency - len(in_flight) - sum(1 for g in t.elsewhere.values() if not g.control_plane)
    if interleave:
        pool = [e for e in workers if e["name"] in interleave and e["phase"] == PENDING]
        candidates = [e for e in pool if e["name"] in canaries] or pool
    else:
        canary_entries = [e for e in workers if e["name"] in canaries]
        candidates = [e for e in workers if e["name"] in canaries and e["phase"] == PENDING]
        if all(e["phase"] in DONE for e in canary_entries):
            if canary_entries and policy.canary_bake_seconds:
                finished = [f for e in canary_entries if (f := parse_or_none(e.get("finishedAt")))]
                if finished and r.now < max(finished) + timedelta(seconds=policy.canary_bake_seconds):
                    r.status["message"] = "canaries upgraded; baking before the other workers"
                    return
            candidates = [e for e in workers if e["phase"] == PENDING]
    for e in candidates:
        if slots <= 0:
            break
        if not t.eligible(e):
            continue
        v = t.current(e)
        assert v is not None
        steps = [h for h in hops if v < h and h.minor_key <= ceiling.minor_key]
        if not steps or t.refused(e, steps):
            continue
        _give(r, e, steps, False, False, interleave.get(e["name"], ""))
        slots -= 1


def cluster_versions(nodes: Sequence[NodeView], members: Mapping[str, MemberView]) -> skew.ClusterVersions:
    """The versions skew rules are checked on: each control-plane node's API server at its kubelet's
    version (kubeadm moves both in one turn) and every node's kubelet, from its kupd member or else
    from the Node itself. kube-proxy is at the newest API server: `kubeadm upgrade apply` moves it."""
    apiservers: dict[str, Version] = {}
    kubelets: dict[str, Version] = {}
    for n in nodes:
        m = members.get(n.name)
        v = (m.kubelet if m is not None else None) or n.kubelet
        if v is None:
            continue
        kubelets[n.name] = v
        if n.control_plane:
            apiservers[n.name] = v
    return skew.ClusterVersions(apiservers, kubelets, max(apiservers.values(), default=None))
