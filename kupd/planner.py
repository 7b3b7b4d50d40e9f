"""The planner: a pure function from observed state to the DirectUpdate status the coordinator
should write, and the Events to emit with it.

Nothing here does I/O or reads the clock; the coordinator gathers the inputs (the CR, Nodes,
member Leases, the epoch, `now`) and applies the output. That keeps every rollout rule —
control plane first, one control-plane node at a time, canaries, waves bounded by
concurrency, lost nodes holding their slot — testable as a table.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from kupd import __version__, hazards, preflight, selectors, skew, windows
from kupd.api.models import DirectUpdateSpec, HealthGates, to_wire
from kupd.conditions import Condition, set_condition
from kupd.errors import ValidationError
from kupd.protocol import (
    ANN_RETRY_NODES,
    GRANT_LEASE_PREFIX,
    Grant,
    GrantRecord,
    NodePhase,
    OpPhase,
    Report,
    Step,
    TurnPhase,
)
from kupd.rfc3339 import format_time, parse_or_none
from kupd.untrusted import Invalid
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


class Reason(StrEnum):
    """Every reason a DirectUpdate Condition may carry. CamelCase only: the CRD's pattern
    (`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`) refuses anything else, and a refused status
    write would leave the operation unrecorded (a unit test checks each against the CRD)."""

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
    OPERATION_ENDED = "OperationEnded"
    NOTHING_SELECTED = "NothingSelected"
    PAUSED = "Paused"
    OUTSIDE_WINDOW = "OutsideWindow"
    INVALID_WINDOW = "InvalidWindow"
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
    EVALUATION_FAILED = "EvaluationFailed"
    # A status record of a turn that cannot be a grant (written by hand, say): that node waits.
    INVALID_GRANT = "InvalidGrant"
    # A drain an operator must see to (kupd.io/attention): the node's own reason is the operation's.
    DRAIN_REFUSED = "DrainRefused"
    DRAIN_TIMED_OUT = "DrainTimedOut"
    UPLOADED = "Uploaded"
    NO_STORE_CONFIGURED = "NoStoreConfigured"
    UPLOAD_FAILED = "UploadFailed"
    LOCAL_SNAPSHOT_ONLY = "LocalSnapshotOnly"
    BEST_EFFORT_BACKUP_FAILED = "BestEffortBackupFailed"
    PACKAGE_SOURCE_UNAVAILABLE = "PackageSourceUnavailable"
    RESOLVED = "Resolved"
    UPGRADE_HAZARD = "UpgradeHazard"
    NO_HAZARD = "NoHazard"
    WARN_ONLY = "WarnOnly"
    CHECK_FAILED = "CheckFailed"
    CHECK_PASSED = "CheckPassed"
    CHECKS_FAILED = "ChecksFailed"
    CHECKS_PASSED = "ChecksPassed"
    # kupd.hazards' rules, each a Condition reason of UpgradeHazards.
    CGROUP_V1 = hazards.CGROUP_V1
    CONTAINERD_TOO_OLD = hazards.CONTAINERD_TOO_OLD
    REMOVED_KUBELET_FLAG = hazards.REMOVED_KUBELET_FLAG
    SWAP_ON = hazards.SWAP_ON
    DEPRECATED_API_IN_USE = hazards.DEPRECATED_API_IN_USE


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
    clean: Container[str] = frozenset()
    """Nodes whose per-node rules (adopt, retry, backup record, observe) are known to leave their
    entry as it is and say nothing this round (kupd/incremental.py proves it): they are skipped."""
    _by_name: dict[str, NodeView] | None = None

    def node(self, name: str) -> NodeView | None:
        """The Node named `name` (the first one, as a scan of `nodes` would find it)."""
        if self._by_name is None:
            self._by_name = {n.name: n for n in reversed(self.nodes)}
        return self._by_name.get(name)

    def condition(self, ctype: str, value: bool, reason: Reason, message: str) -> None:
        conds: list[dict[str, Any]] = self.status.setdefault("conditions", [])
        set_condition(conds, Condition(ctype, "True" if value else "False", str(reason), message), self.now,
                      self.op.generation)

    def event(self, reason: str, message: str, node: str | None = None, warning: bool = False) -> None:
        self.events.append(PlanEvent(reason, message, node, warning))

    def fail(self, reason: Reason, message: str) -> None:
        if self.status.get("phase") != OP_FAILED:
            self.event(str(reason), message, warning=True)
        self.status["phase"] = OP_FAILED
        self.status["message"] = message[:1000]
        self.status.setdefault("finishedAt", format_time(self.now))
        self.condition("Progressing", False, reason, message)

    def plan(self) -> Plan:
        return Plan(self.status, self.events)

    def elsewhere(self) -> dict[str, Grant]:
        """Turns of another DirectUpdate that are not over yet (it was deleted or failed mid-turn
        while its nodes still work): they hold their slots too, a turn ends only when its node says so."""
        return {n: g for n, g in self.delivered.items()
                if g.uid != self.op.uid and not turn_over(self.members.get(n), g)}

    def departed(self, selection: Selection) -> list[dict[str, Any]]:
        """Entries of nodes that left the selection or the cluster with a turn out: they keep their
        slot until the turn is reported over (or is lost, which the operation then says)."""
        names = {n.name for n in selection.nodes}
        return [e for e in self.status.get("nodes") or [] if e["name"] not in names and e["phase"] in IN_FLIGHT]


@dataclass(frozen=True)
class Selection:
    """The selected nodes in turn order (control plane, canaries, the rest; by name) and the canaries."""

    nodes: list[NodeView]
    canaries: frozenset[str]


class Memo(Protocol):
    """What a round may reuse from earlier rounds (kupd/incremental.py): the selection, and which
    nodes' per-node rules need not run. It must never change what `plan` returns."""

    def select(self, r: Round, policy: Policy) -> Selection:
        """`select(r, policy)`, or its earlier result when its inputs are the same."""

    def clean(self, r: Round, policy: Policy, selection: Selection) -> Container[str]:
        """The nodes whose per-node rules would leave their entry as it is and say nothing."""

    def record(self, r: Round, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """The entries after the per-node rules (before the grants), to judge the next round by."""


_SCALARS = frozenset({str, int, float, bool, type(None)})


def copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, scalars), as `copy.deepcopy` makes it but
    several times faster: the status holds an entry per node and each round copies it."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _SCALARS else copy_json(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SCALARS else copy_json(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value  # a StrEnum (a phase), say: immutable
    return copy.deepcopy(value)


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
    memo: Memo | None = None,
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
    `memo` (kupd/incremental.py) lets a round skip the per-node rules of nodes where nothing
    changed; the result is the same with or without it.
    """
    r = Round(op, nodes, members, epoch, now, copy_json(dict(op.status)), delivered=delivered or {})
    edited = r.status.get("observedGeneration") not in (None, op.generation)
    r.status.update(observedGeneration=op.generation, coordinator=coordinator, epoch=epoch)
    if r.status.get("phase") in TERMINAL_OP:
        ended(r, edited)
        return r.plan()
    policy = validate(r)
    if policy is None:
        return r.plan()
    selection = select(r, policy) if memo is None else memo.select(r, policy)
    if not selection.nodes:
        # Nothing selected (any more): turns still out are followed until their nodes report them over.
        observe(r, policy, selection, adopt(r, policy, selection))
        return r.plan()
    hops = fix_hops(r, policy, selection, resolved_minors, hop_errors or {})
    if hops is None:
        return r.plan()
    if memo is not None:
        r.clean = memo.clean(r, policy, selection)
    entries = adopt(r, policy, selection)
    retry(r, entries, selection)
    record_backup(r, entries)
    ordered = observe(r, policy, selection, entries)
    if memo is not None:
        memo.record(r, entries)
    departed = r.departed(selection)
    attention = conclude(r, policy, ordered, departed)
    if attention is None or not gates(r, policy, ordered, attention, gate_failure):
        return r.plan()
    if not check_preflight(r, policy, ordered, attention, preflight_facts):
        return r.plan()
    refusals: list[hazards.Hazard] = []
    stuck, held = grant(r, policy, ordered, departed, hops, selection.canaries, refusals, deprecated_apis)
    hazard_conditions(r, refusals)
    if stuck is not None:
        # A skew no turn of this operation can fix: say so and grant nothing more.
        if r.status.get("phase") != OP_ATTENTION or r.status.get("message") != stuck:
            r.event("VersionSkew", stuck, warning=True)
        r.status["phase"], r.status["message"] = OP_ATTENTION, stuck
        r.condition("RequiresAttention", True, Reason.VERSION_SKEW, stuck)
        return r.plan()
    if refusals and not attention:
        r.status["phase"] = OP_ATTENTION
        r.status["message"] = f"upgrade hazard on {refusals[0].subject}: {refusals[0].message}"[:1000]
        r.condition("RequiresAttention", True, Reason.UPGRADE_HAZARD, r.status["message"])
        return r.plan()
    progress(r, ordered, departed, held, bool(attention))
    return r.plan()


def progress(r: Round, ordered: list[dict[str, Any]], departed: list[dict[str, Any]], held: str | None,
             attention: bool) -> None:
    """The message and the Progressing condition after the grants. Every stall says what it waits
    for: with nothing in flight, or only nodes waiting inside a step, Progressing is False with
    reason Waiting and the wait in the message."""
    done = sum(1 for e in ordered if e["phase"] in DONE)
    in_flight = [e for e in [*ordered, *departed] if e["phase"] in IN_FLIGHT]
    waiting = [e for e in in_flight if (rep := _report(r, e)) is not None and rep.reason in WAITING_REASONS]
    wait: str | None = None
    if in_flight and len(waiting) == len(in_flight):
        wait = "; ".join(f"{e['name']}: {e.get('message', '')}" for e in waiting)
    elif not in_flight:
        wait = held or "waiting for a node to become eligible"
    if not attention:
        r.status["phase"] = OP_RUNNING
        msg = wait or f"upgrading {', '.join(e['name'] for e in in_flight)}" + (f"; {held}" if held else "")
        r.status["message"] = msg[:1000]
    r.status.setdefault("startedAt", format_time(r.now))
    if wait:
        r.condition("Progressing", False, Reason.WAITING, wait)
    else:
        r.condition("Progressing", True, Reason.UPGRADING, f"{done}/{len(ordered)} nodes done")


def _report(r: Round, e: dict[str, Any]) -> Report | None:
    """The member's report on the turn the entry records, if that is what it reports."""
    m = r.members.get(e["name"])
    report = m.report if m is not None else None
    g = e.get("grant") or {}
    if report is None or report.uid != r.op.uid or report.granted_at not in ("", g.get("grantedAt")):
        return None
    return report


def invalid_grant(e: Mapping[str, Any]) -> str | None:
    """Why the entry's grant record cannot be delivered (the status was written by hand or by an
    older kupd: the CRD leaves grantedAt optional, say); None when it can. That node alone waits."""
    try:
        GrantRecord.from_wire(e.get("grant"))
    except Invalid as err:
        return f"its turn cannot be delivered: the status records an invalid grant, field {err}"
    return None


def queued(status: Mapping[str, Any], message: str, generation: int, now: datetime) -> dict[str, Any]:
    """The status of an operation waiting for an older one to finish."""
    out = copy.deepcopy(dict(status))
    out.update(phase=OP_PENDING, message=message[:1000])
    set_condition(out.setdefault("conditions", []), Condition("Progressing", "False", str(Reason.QUEUED), message),
                  now, generation)
    return out


def validate(r: Round) -> Policy | None:
    """The policy of a valid spec; None when the spec failed validation (the operation fails)."""
    if isinstance(r.op.spec, ValidationError):
        r.condition("Valid", False, Reason.INVALID_SPEC, str(r.op.spec))
        r.fail(Reason.INVALID_SPEC, str(r.op.spec))
        return None
    r.condition("Valid", True, Reason.SPEC_VALID, "the spec passed the daemon's validation")
    return Policy.of(r.op.spec)


def ended(r: Round, edited: bool) -> None:
    """An ended operation (Succeeded, Failed) is not acted on again: a spec edited afterwards is
    said to be ignored, so the status never reads as if the new spec had been carried out."""
    if not edited:
        return
    msg = (f"spec changed (generation {r.op.generation}) after the operation ended {r.status.get('phase')}; "
           "an ended operation is not acted on: apply a new DirectUpdate")
    conds = r.status.get("conditions") or []
    if not any(c["type"] == "SpecApplied" and c.get("message") == msg for c in conds):
        r.event(str(Reason.OPERATION_ENDED), msg, warning=True)
    r.condition("SpecApplied", False, Reason.OPERATION_ENDED, msg)


def edited_after_end(op: Operation, now: datetime) -> Plan | None:
    """The status of an ended operation whose spec was edited since its status was written (the
    coordinator plans only running operations): None when there is nothing to say."""
    if op.status.get("phase") not in TERMINAL_OP or op.status.get("observedGeneration") in (None, op.generation):
        return None
    r = Round(op, (), {}, int(op.status.get("epoch") or 0), now, copy.deepcopy(dict(op.status)))
    ended(r, True)
    r.status["observedGeneration"] = op.generation
    return r.plan()


def select(r: Round, policy: Policy) -> Selection:
    """Which nodes, in which order: control plane first, then canaries, then the rest, by name.
    With none, the operation is Pending and says so."""
    selected = sorted((n for n in r.nodes if selectors.matches(policy.node_selector, n.labels)),
                      key=lambda n: (not n.control_plane, n.name))
    if not selected:
        r.status["phase"] = OP_PENDING
        r.status["message"] = "no node matches spec.nodeSelector"
        r.condition("Progressing", False, Reason.NOTHING_SELECTED, r.status["message"])
        return Selection([], frozenset())
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
    """The hops, planned when the operation starts from the oldest member among the selected nodes,
    and again when spec.version is raised mid-rollout: the hops already begun are kept (a minor is
    never passed through at two patches), the new minors added. None when they cannot be planned
    yet (a minor not resolved from the package source), break a version-skew rule, or the target
    was lowered (the operation fails)."""
    status = r.status
    old_hops = [Version.parse(h) for h in status.get("hops") or []]
    if old_hops and policy.target < old_hops[-1]:
        msg = (f"spec.version was lowered to {policy.target} while the rollout went to {old_hops[-1]}; "
               "kupd never downgrades: create a new DirectUpdate")
        r.condition("Valid", False, Reason.VERSION_LOWERED, msg)
        r.fail(Reason.VERSION_LOWERED, msg)
        return None
    if not old_hops or policy.target > old_hops[-1]:
        versions = [m.kubelet for n in selection.nodes if (m := r.members.get(n.name)) and m.kubelet]
        if not versions:
            status.setdefault("phase", OP_PENDING)
            status["message"] = "waiting for kupd members on the selected nodes"
            return None
        kept = {h.minor_key: str(h) for h in old_hops}
        try:
            needed = hop_minors(min(versions), policy.target)[:-1]
        except SkewError as skew:
            r.condition("Valid", False, SKEW_REASONS.get(skew.rule, Reason.VERSION_SKEW), str(skew))
            r.fail(Reason.VERSION_SKEW, str(skew))
            return None
        # The coordinator resolves each intermediate minor's newest patch from the operation's own
        # package source; one it could not resolve holds the operation (never a guessed .0). Only
        # the dry run, which has no package source, passes None and shows .0 placeholders. A minor
        # already begun keeps its patch (a raised spec.version adds only the new minors).
        missing = [mk for mk in needed if resolved_minors is not None and mk not in resolved_minors
                   and mk not in kept]
        if missing:
            mk = missing[0]
            why = (hop_errors or {}).get(mk) or "not resolved yet"
            msg = f"cannot resolve the newest v{mk[0]}.{mk[1]} patch from spec.packageSource: {why}; retrying"
            status.setdefault("phase", OP_PENDING)
            status["message"] = msg
            r.condition("HopsResolved", False, Reason.PACKAGE_SOURCE_UNAVAILABLE, msg)
            return None
        planned = hops_for(min(versions), policy.target, {**(resolved_minors or {}), **kept})
        if old_hops:
            r.event("Replanned", f"spec.version raised to {policy.target}: hops {', '.join(planned)}")
        status["hops"] = planned
        if needed:
            r.condition("HopsResolved", True, Reason.RESOLVED, f"hops {', '.join(planned)} from spec.packageSource")
    # The kubelet-never-newer rule: a worker-only selection cannot pass the control plane.
    if not any(n.control_plane for n in selection.nodes):
        cp_versions = [m.kubelet for n in r.nodes if n.control_plane
                       and (m := r.members.get(n.name)) and m.kubelet]
        if cp_versions and policy.target.minor_key > min(cp_versions).minor_key:
            msg = (f"target {policy.target} is newer than the control plane {min(cp_versions)}; "
                   "select the control-plane nodes too (rule: kubelet-not-newer-than-apiserver)")
            r.condition("Valid", False, Reason.KUBELET_NOT_NEWER, msg)
            r.fail(Reason.VERSION_SKEW, msg)
            return None
    return [Version.parse(h) for h in status["hops"]]


def adopt(r: Round, policy: Policy, selection: Selection) -> dict[str, dict[str, Any]]:
    """Every node's entry, by name: one for each selected node, and a grant delivered but not yet
    recorded adopted first, so that the retry, the backup record and the observation all see it."""
    entries: dict[str, dict[str, Any]] = {e["name"]: e for e in r.status.get("nodes") or []}
    for n in selection.nodes:
        if n.name in r.clean:
            continue
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
        elif e["phase"] in DONE and m is not None and m.kubelet is not None and m.kubelet < policy.target:
            # spec.version was raised: a node done with the old target has more to do.
            e.update(phase=PENDING, toVersion=str(policy.target), message=f"target raised to {policy.target}")
            e.pop("finishedAt", None)
        if e["phase"] not in DONE:
            e["toVersion"] = str(policy.target)
        _adopt(e, r.delivered.get(n.name), r.op, r.epoch)
    _release_departed(r, entries, selection)
    return entries


def _release_departed(r: Round, entries: dict[str, dict[str, Any]], selection: Selection) -> None:
    """A turn whose node left the selection or the cluster holds its slot until it is reported over,
    or until an operator deletes the node's grant Lease (runbook: a lost node). With its member
    silent and its grant Lease deleted, nothing can report the turn over any more: the entry is
    dropped and the slot freed."""
    selected = {n.name for n in selection.nodes}
    for name, e in list(entries.items()):
        m = r.members.get(name)
        if e["phase"] in IN_FLIGHT and name not in selected and name not in r.delivered \
                and (m is None or not m.alive):
            del entries[name]
            r.event("TurnReleased", f"{name} left the selection or the cluster mid-turn and its grant Lease "
                    "was deleted; its turn is released", name, warning=True)


def _adopt(e: dict[str, Any], g: Grant | None, op: Operation, epoch: int) -> None:
    """Record a delivered grant of this operation that the status does not (yet) know."""
    if g is None or g.uid != op.uid or e["phase"] in (SUCCEEDED, SKIPPED):
        return
    # Only a grant newer than the one recorded: an old one still in its Lease (not cleared yet)
    # must not undo a retry or a later hop. grantedAt values share one format, so they sort.
    if g.granted_at <= str((e.get("grant") or {}).get("grantedAt") or ""):
        return
    e["grant"] = replace(g.record(), epoch=epoch).wire()
    e["phase"] = GRANTED
    e["message"] = f"granted {', '.join(g.versions)}"
    e.pop("finishedAt", None)


def retry_names(op: Operation) -> set[str]:
    """The nodes an operator's retry request (annotation kupd.io/retry-nodes) names."""
    token = op.annotations.get(ANN_RETRY_NODES, "")
    return {x.strip() for x in token.split("#", 1)[0].split(",")} if token else set()


def retry(r: Round, entries: dict[str, dict[str, Any]], selection: Selection) -> None:
    """An operator's retry request puts Failed nodes of the selection back in line, once per
    annotation value. They are Pending again, and the grant stage gives each its turn within the
    limits like any other node: while a node was Failed its slot may have been given to another
    (it left the selection and came back, or other turns were still out), so a retry is never
    granted on the spot."""
    token = r.op.annotations.get(ANN_RETRY_NODES, "")
    if not token:
        return
    wanted = retry_names(r.op)
    selected = {n.name for n in selection.nodes}
    for name in sorted(wanted & selected):
        e = entries.get(name)
        if e is not None and e["phase"] == FAILED and e.get("retryToken") != token:
            e.update(phase=PENDING, attempts=0, retryToken=token, message="retry requested")
            if e.get("grant"):
                # Stamped now, so the failed grant still in the node's Lease is older and never
                # adopted again; the grant stage replaces it with the turn it gives.
                e["grant"].update(epoch=r.epoch, grantedAt=format_time(r.now))
            for key in ("finishedAt", "reason", "step"):
                e.pop(key, None)
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
        r.condition("BackupSucceeded", True, Reason.BACKUP_VERIFIED, msg)
        r.condition("BackupUploaded", True, Reason.UPLOADED, msg)
        r.event("BackupTaken", msg)
    elif b.get("verified"):
        msg = f"etcd snapshot verified before any change; not uploaded: {message}"
        reason = Reason.NO_STORE_CONFIGURED if "no backup store" in message else Reason.UPLOAD_FAILED
        r.condition("BackupSucceeded", True, Reason.LOCAL_SNAPSHOT_ONLY, msg)
        r.condition("BackupUploaded", False, reason, msg)
        r.event("BackupNotUploaded", msg, warning=True)
    else:
        msg = f"etcd snapshot failed (policy BestEffort, going on without one): {message}"
        r.condition("BackupSucceeded", False, Reason.BEST_EFFORT_BACKUP_FAILED, msg)
        r.event("BackupFailed", msg, warning=True)


def observe(r: Round, policy: Policy, selection: Selection, entries: dict[str, dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Bring every node's entry up to date with what its member reports: the selected ones, and those
    that left the selection or the cluster with a turn out, which keep their slot until they report
    it over. Returns the selected entries in turn order and puts them (then the others) in the
    status, with the summary counts."""
    for name, e in entries.items():
        if name in r.clean:
            continue
        _observe(r, e, r.members.get(name), policy, name)
        compact(e)
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


def conclude(r: Round, policy: Policy, ordered: list[dict[str, Any]], departed: list[dict[str, Any]]
             ) -> list[tuple[Reason, str, str]] | None:
    """The operation's outcome so far: None when it ended (a required backup failed, every node is
    done and no turn is out) or a failed node stops all grants; else what needs attention (empty
    when nothing does), with RequiresAttention said for it."""
    failed = [e for e in ordered if e["phase"] == FAILED]
    backup_failed = [e for e in failed if e.get("step") == Step.BACKUP]
    if backup_failed:
        msg = f"backup failed on {backup_failed[0]['name']}: {backup_failed[0].get('message', '')}"
        r.condition("BackupSucceeded", False, Reason.BACKUP_FAILED, msg)
        r.fail(Reason.BACKUP_FAILED, msg)
        return None
    if all(e["phase"] in DONE for e in ordered) and not departed:
        if r.status.get("phase") != OP_SUCCEEDED:
            r.event("Succeeded", f"all {len(ordered)} nodes at {policy.target}")
        r.status["phase"] = OP_SUCCEEDED
        r.status["message"] = f"all {len(ordered)} selected nodes are at {policy.target}"
        r.status.setdefault("finishedAt", format_time(r.now))
        r.status["progress"] = f"{len(ordered)}/{len(ordered)}"
        r.condition("Progressing", False, Reason.COMPLETED, r.status["message"])
        r.condition("RequiresAttention", False, Reason.NO_PROBLEM, "")
        return None
    done = sum(1 for e in ordered if e["phase"] in DONE)
    r.status["progress"] = f"{done}/{len(ordered)}"
    attention = _attention(r, ordered, departed)
    if attention is None:
        r.condition("RequiresAttention", False, Reason.NO_PROBLEM, "")
        return []
    reason, node, msg = attention
    if r.status.get("phase") != OP_ATTENTION or r.status.get("message") != msg:
        r.event(str(reason), msg, node, warning=True)
    r.status["phase"] = OP_ATTENTION
    r.status["message"] = msg
    r.condition("RequiresAttention", True, reason, msg)
    if failed:
        # A failed step stops all further grants until an operator acts.
        r.condition("Progressing", False, Reason.NODE_FAILED, msg)
        return None
    return [attention]


def _attention(r: Round, ordered: list[dict[str, Any]], departed: list[dict[str, Any]]
               ) -> tuple[Reason, str, str] | None:
    """What needs an operator, most pressing first: (reason, node, message), or None."""
    for e in ordered:
        if e["phase"] == FAILED:
            reason = Reason(e["reason"]) if e.get("reason") in ATTENTION_REASONS else Reason.NODE_FAILED
            return reason, e["name"], f"node {e['name']}: {e.get('message') or 'failed'}"
    for e in [*ordered, *departed]:
        if e["phase"] == LOST:
            where = "" if e in ordered else " (it left the selection or the cluster mid-turn)"
            return Reason.NODE_LOST, e["name"], f"node {e['name']}{where}: {e.get('message') or 'lost'}"
    for e in ordered:
        report = _report(r, e) if e["phase"] in IN_FLIGHT else None
        if report is not None and report.reason == "DeadlineExceeded" and report.phase == TurnPhase.UPGRADING:
            return Reason.STEP_PAST_DEADLINE, e["name"], f"node {e['name']}: {report.message}"
        if e["phase"] in IN_FLIGHT and e.get("grant") and (why := invalid_grant(e)):
            return Reason.INVALID_GRANT, e["name"], f"node {e['name']}: {why}"
    for node, g in sorted(r.elsewhere().items()):
        m = r.members.get(node)
        if m is None or not m.alive:
            return (Reason.NODE_LOST, node,
                    f"node {node} holds a turn of DirectUpdate {g.operation} and its kupd member is lost; "
                    "the turn keeps its slot until it is reported over or its grant Lease "
                    f"{GRANT_LEASE_PREFIX}{node} is deleted (runbook: a lost node)")
    for e in ordered:
        if e["phase"] != PENDING:
            continue
        m = r.members.get(e["name"])
        if m is None:
            return Reason.NO_MEMBER, e["name"], f"node {e['name']} has no kupd member; install or start kupd there"
        if not m.alive:
            return (Reason.MEMBER_LOST, e["name"],
                    f"node {e['name']}: its kupd member stopped renewing its Lease; start kupd there")
    return None


def gates(r: Round, policy: Policy, ordered: list[dict[str, Any]], attention: list[tuple[Reason, str, str]],
          gate_failure: str | None) -> bool:
    """Whether a new turn may be given now: not paused, inside the maintenance window (if any),
    and every health gate passing. When not, the operation says why."""
    status = r.status
    if policy.paused:
        status["phase"] = OP_PAUSED
        status["message"] = "paused by spec.paused; nodes already granted finish their turn"
        r.condition("Progressing", False, Reason.PAUSED, status["message"])
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
        r.condition("Progressing", False, Reason.INVALID_WINDOW, msg)
        return False
    if window is not None and not window.allowed:
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = window.reason
        r.condition("Progressing", False, Reason.OUTSIDE_WINDOW, window.reason)
        return False
    gate = _health_gate(policy.health_gates, ordered, r.nodes, r.now, gate_failure)
    if gate is not None:
        if status.get("phase") != OP_PAUSED or status.get("message") != gate:
            r.event("HealthGateFailed", gate, warning=True)
        r.condition("HealthGates", False, Reason.GATE_FAILED, gate)
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = f"health gate: {gate}"
        return False
    if policy.health_gates is not None:
        r.condition("HealthGates", True, Reason.GATES_PASSED, "every health gate passes")
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
def check_preflight(r: Round, policy: Policy, ordered: list[dict[str, Any]], attention: list[tuple[Reason, str, str]],
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
            r.condition(ctype, False, Reason.WARN_ONLY if check in policy.warn_only else Reason.CHECK_FAILED, msg)
        elif any(c["type"] == ctype for c in conds):
            r.condition(ctype, True, Reason.CHECK_PASSED, "")
    if verdict.blocking:
        first = verdict.blocking[0]
        msg = (f"preflight {first.check}: {first.message}"
               + (f" (and {len(verdict.blocking) - 1} more findings)" if len(verdict.blocking) > 1 else ""))
        r.condition("Preflight", False, Reason.CHECKS_FAILED, msg)
        if not attention:
            r.status["phase"], r.status["message"] = OP_PENDING, msg
        return False
    r.condition("Preflight", True, Reason.CHECKS_PASSED,
                "every preflight check passed" + (" (some only warn)" if verdict.warnings else ""))
    return True


def hazard_conditions(r: Round, refusals: list[hazards.Hazard]) -> None:
    """Condition UpgradeHazards: False naming each refused turn and its fix; True once none is left."""
    conds = r.status.get("conditions") or []
    if not refusals:
        if any(c["type"] == "UpgradeHazards" for c in conds):
            r.condition("UpgradeHazards", True, Reason.NO_HAZARD, "")
        return
    msg = "; ".join(h.message for h in refusals)
    if not any(c["type"] == "UpgradeHazards" and c["status"] == "False" and c["message"] == msg[:1000]
               for c in conds):
        for h in refusals:
            r.event(h.rule, h.message, h.subject, warning=True)
    r.condition("UpgradeHazards", False, Reason(refusals[0].rule), msg)


# -- grant ------------------------------------------------------------------------------------
@dataclass
class Turns:
    """One grant stage's view: who may have a turn, what a turn would break, the turns out, and
    what holds the next turn back (`held`, said in the operation's message)."""

    r: Round
    policy: Policy
    elsewhere: Mapping[str, Grant]
    refusals: list[hazards.Hazard]
    deprecated_apis: Sequence[hazards.DeprecatedApi]
    out: _Out
    held: str | None = None

    def current(self, e: dict[str, Any]) -> Version | None:
        m = self.r.members.get(e["name"])
        return m.kubelet if m else None

    def eligible(self, e: dict[str, Any]) -> bool:
        """Pending, with a live member, not in another operation's turn, and its Node Ready."""
        m = self.r.members.get(e["name"])
        n = self.r.node(e["name"])
        ready = n.ready if n is not None else True
        return (e["phase"] == PENDING and m is not None and m.alive and m.kubelet is not None
                and m.problem is None and e["name"] not in self.elsewhere and ready)

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


@dataclass(frozen=True)
class _Out:
    """The turns out, by role: this operation's (selected or not) and other operations'."""

    own_cps: list[str]
    own_workers: list[str]
    other_cps: list[str]
    other_workers: list[str]

    @property
    def workers(self) -> list[str]:
        return self.own_workers + self.other_workers


def grant(r: Round, policy: Policy, ordered: list[dict[str, Any]], departed: list[dict[str, Any]],
          hops: list[Version], canaries: frozenset[str], refusals: list[hazards.Hazard] | None = None,
          deprecated_apis: Sequence[hazards.DeprecatedApi] | None = None) -> tuple[str | None, str | None]:
    """Give the next turns within the limits: every in-flight grant re-stamped with this
    coordinator's epoch (agents ignore older ones), then the control plane one node at a time,
    hop-major, with worker waves between its hops wherever the next hop would leave a kubelet too
    far behind; then canaries, their bake, and the other workers up to `concurrency`. A turn whose
    host would break on its target is refused (`refusals`).

    The limits count every turn out: this operation's, selected or not (a node that left the
    selection or the cluster keeps its slot until its turn is over), and other operations' turns
    not over yet. Returns (why the operation cannot go on without an operator — a version skew no
    turn of it can fix —, what holds the next turn back), each None when nothing does."""
    elsewhere = r.elsewhere()
    for e in [*ordered, *departed]:
        if e["phase"] in IN_FLIGHT and e.get("grant"):
            e["grant"]["epoch"] = r.epoch
    versions = cluster_versions(r.nodes, r.members)
    t = Turns(r, policy, elsewhere, refusals if refusals is not None else [], deprecated_apis or (),
              _turns_out(ordered, departed, elsewhere))
    if _regrant_retried(t, ordered, versions):
        t.out = _turns_out(ordered, departed, elsewhere)
    limits = t.out
    cps = [e for e in ordered if e.get("role") == CONTROL_PLANE]
    workers = [e for e in ordered if e.get("role", WORKER) == WORKER]
    interleave: dict[str, str] = {}
    if any(e["phase"] not in DONE for e in cps):
        stuck = _grant_control_plane(t, cps, workers, hops, versions, interleave)
        if stuck is not None or not interleave:
            return stuck, t.held
    elif limits.own_cps or limits.other_cps:
        # A control-plane turn is out though no selected control-plane node is left (it left the
        # selection mid-turn, or another operation's): no worker moves while an API server does.
        t.held = f"workers wait for the control-plane turn of {', '.join(limits.own_cps + limits.other_cps)} to end"
        return None, t.held
    # Workers move only as far as every API server has: a kubelet is never newer than one.
    ceiling = min(versions.apiservers.values(), default=hops[-1])
    capped = _grant_workers(t, workers, hops, canaries, ceiling, interleave)
    if capped and not interleave:
        # Every control-plane node of this operation is done, yet an API server holds workers
        # back: one this operation does not select, which no turn of it will move.
        low = min(versions.apiservers, key=lambda n: versions.apiservers[n])
        return (f"workers {', '.join(capped[:5])} cannot pass the API server of {low} at {ceiling}, which this "
                f"operation does not upgrade (rule: kubelet-not-newer-than-apiserver); select {low}, upgrade it, "
                "or leave it out of the cluster"), t.held
    return None, t.held


def _turns_out(ordered: list[dict[str, Any]], departed: list[dict[str, Any]], elsewhere: Mapping[str, Grant]) -> _Out:
    out = [e for e in [*ordered, *departed] if e["phase"] in IN_FLIGHT]
    return _Out([e["name"] for e in out if e.get("role") == CONTROL_PLANE],
                [e["name"] for e in out if e.get("role", WORKER) == WORKER],
                sorted(n for n, g in elsewhere.items() if g.control_plane),
                sorted(n for n, g in elsewhere.items() if not g.control_plane))


def _regrant_retried(t: Turns, ordered: list[dict[str, Any]], versions: skew.ClusterVersions) -> bool:
    """Give each eligible node an operator asked to retry (Pending, its failed grant kept by
    `retry`) the same work again, as soon as the limits allow: a control-plane node when no other
    turn is out, a worker when no control-plane turn is out and a worker slot is free; never past
    the oldest API server. The agent then resumes at the step that failed. Whether any was given."""
    cps_out, workers_out = bool(t.out.own_cps or t.out.other_cps), len(t.out.workers)
    given = False
    for e in ordered:
        g = e.get("grant")
        if not (e.get("retryToken") and g and t.eligible(e)):
            continue
        control_plane = e.get("role") == CONTROL_PLANE
        if cps_out or (workers_out if control_plane else workers_out >= t.policy.concurrency):
            continue
        work = [Version.parse(str(v)) for v in g.get("versions") or []]
        if not control_plane and versions.apiservers:
            ceiling = min(versions.apiservers.values())
            work = [v for v in work if v.minor_key <= ceiling.minor_key]
        if _give(t.r, e, work, bool(g.get("firstControlPlane")), bool(g.get("backup")), "retry"):
            given = True
            cps_out = cps_out or control_plane
            workers_out += 0 if control_plane else 1
    return given


def _give(r: Round, e: dict[str, Any], versions: list[Version], first_cp: bool, backup: bool,
          why: str = "") -> bool:
    if not versions:
        return False  # never an empty turn, and never a slot spent on one
    e["phase"] = GRANTED
    e["grant"] = GrantRecord(r.epoch, tuple(str(v) for v in versions), first_cp, backup, format_time(r.now)).wire()
    # grant_reason reads `why` back out of this message.
    e["message"] = f"granted {', '.join(str(v) for v in versions)}" + (f" ({why})" if why else "")
    e.setdefault("startedAt", format_time(r.now))
    r.event("NodeGranted", f"{e['name']} may upgrade to {versions[-1]}", e["name"])
    return True


def grant_reason(message: str) -> str:
    """The reason `_give` put in a grant's message: "granted v1.28.15, v1.29.10 (<reason>)"."""
    if message.startswith("granted ") and message.endswith(")") and " (" in message:
        return message[message.index(" (") + 2:-1]
    return ""


def _grant_control_plane(t: Turns, cps: list[dict[str, Any]], workers: list[dict[str, Any]], hops: list[Version],
                         versions: skew.ClusterVersions, interleave: dict[str, str]) -> str | None:
    """One control-plane node at a time, hop-major: every control-plane node reaches hop i before
    any starts hop i+1, so the API servers never drift more than one minor apart. Never while a
    worker is in its turn (one of a wave, one that joined mid-rollout, or one of another
    operation: a worker's new kubelet must never meet an older API server), and never to a hop
    that would leave a kubelet (or kube-proxy) anywhere in the cluster too far behind: the workers
    that would fall behind are put in `interleave` to move first. Returns why nothing can move when
    no turn of this operation can fix it; what merely holds it back goes in `t.held`."""
    r, out = t.r, t.out
    if out.own_cps:
        return None
    if out.other_cps:
        t.held = f"waiting for the control-plane turn of {', '.join(out.other_cps)} (another operation) to end"
        return None
    cp_left = [e for e in cps if e["phase"] not in DONE]
    if out.workers:
        t.held = (f"control-plane node {cp_left[0]['name']} waits for the workers in flight "
                  f"({', '.join(out.workers)}) to finish")
        return None
    unknown = [e["name"] for e in cp_left if t.current(e) is None]
    if unknown:
        # Which control-plane node goes first (kubeadm upgrade apply), and whether the API servers
        # stay within one minor, depend on every one's version: wait to know them.
        t.held = f"waiting for the kupd members of control-plane nodes {', '.join(unknown)} to report their versions"
        return None
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
        if t.eligible(nxt):
            if not t.refused(nxt, [hop]):
                need_backup = t.policy.backup_required and not r.status.get("backup") and hop == hops[0] and first_cp
                _give(r, nxt, [hop], first_cp, need_backup, f"control plane to v{hop.major}.{hop.minor}")
            return None
        t.held = f"control-plane node {nxt['name']} is next and not eligible ({nxt.get('message') or 'no live member'})"
        return None
    t.held = f"control-plane nodes {', '.join(e['name'] for e in cp_left)} have no hop left to take"
    return None


def _grant_workers(t: Turns, workers: list[dict[str, Any]], hops: list[Version], canaries: frozenset[str],
                   ceiling: Version, interleave: Mapping[str, str]) -> list[str]:
    """Canaries first, then (after their bake) the other workers, never more than `concurrency`
    turns out, counting those of nodes that left the selection and of other operations; each up
    to `ceiling`, the oldest API server. Between control-plane hops (`interleave`): only the
    workers that would fall too far behind, canaries among them first. Returns the eligible
    workers that the ceiling alone keeps from their target."""
    r, policy, out = t.r, t.policy, t.out
    slots = policy.concurrency - len(out.workers)
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
                    t.held = "canaries upgraded; baking before the other workers"
                    return []
            candidates = [e for e in workers if e["phase"] == PENDING]
    capped: list[str] = []
    for e in candidates:
        if not t.eligible(e):
            continue
        v = t.current(e)
        assert v is not None
        steps = [h for h in hops if v < h and h.minor_key <= ceiling.minor_key]
        if not steps and v < hops[-1]:
            capped.append(e["name"])
        if slots <= 0 or not steps or t.refused(e, steps):
            continue
        if _give(r, e, steps, False, False, interleave.get(e["name"], "")):
            slots -= 1
    if candidates and slots <= 0 and out.workers and not out.own_workers:
        t.held = f"every worker slot is held by a turn out ({', '.join(out.workers)})"
    return capped


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
