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
from typing import Any

from kupd import __version__, hazards, preflight, selectors, skew, windows
from kupd.api.models import backup_policy
from kupd.errors import ValidationError
from kupd.protocol import ANN_RETRY_NODES, STEP_BACKUP, Grant, Report
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
    node: str
    alive: bool
    kubelet: Version | None
    report: Report | None = None
    facts: hazards.NodeFacts | None = None
    """The host facts of the upgrade-hazard checks, as the member reports them."""


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
    containerd: Version | None = None
    """spec.containerdVersion: installed with the kubelet, so the containerd hazard looks at it."""

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
            backup_required=backup_policy(backup.get("policy"), backup.get("required")) != "Disabled",
            paused=bool(spec.get("paused", False)),
            containerd=Version.parse(str(spec["containerdVersion"]), "spec.containerdVersion")
            if spec.get("containerdVersion") else None,
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
    return selectors.from_label_selector(selector).matches(labels)


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


def _condition(status: dict[str, Any], ctype: str, value: bool, reason: str, message: str,
               generation: int, now: datetime) -> None:
    conds: list[dict[str, Any]] = status.setdefault("conditions", [])
    want = "True" if value else "False"
    for c in conds:
        if c["type"] == ctype:
            if c["status"] != want:
                c["lastTransitionTime"] = _iso(now)
            c.update(status=want, reason=reason, message=message[:1000], observedGeneration=generation)
            return
    conds.append({"type": ctype, "status": want, "reason": reason, "message": message[:1000],
                  "observedGeneration": generation, "lastTransitionTime": _iso(now)})


def _fail(op: Operation, status: dict[str, Any], reason: str, message: str, now: datetime,
          events: list[PlanEvent]) -> Plan:
    if status.get("phase") != OP_FAILED:
        events.append(PlanEvent(reason, message, warning=True))
    status["phase"] = OP_FAILED
    status["message"] = message[:1000]
    status.setdefault("finishedAt", _iso(now))
    _condition(status, "Progressing", False, reason, message, op.generation, now)
    return Plan(status, events)


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
    hop_errors: Mapping[tuple[int, int], str] | None = None,
    preflight_facts: preflight.ClusterFacts | None = None,
    deprecated_apis: Sequence[hazards.DeprecatedApi] | None = None,
    delivered: Mapping[str, Grant] | None = None,
) -> Plan:
    """Compute the next status of one DirectUpdate.

    `validate_spec`, when given, is the daemon's re-validation of the spec (raises
    ValidationError naming the field); a failure ends the operation Failed with a Condition.
    `resolved_minors` maps each intermediate minor to its newest patch in the operation's package
    source (None: a dry run, hops shown at .0); `hop_errors` says why a minor could not be resolved.
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
        _condition(status, "Valid", False, "InvalidSpec", str(err), gen, now)
        return _fail(op, status, "InvalidSpec", str(err), now, events)
    _condition(status, "Valid", True, "SpecValid", "the spec passed the daemon's validation", gen, now)

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

    # Hops are fixed when the operation starts, from the oldest member among the selected nodes.
    if not status.get("hops"):
        versions = [m.kubelet for n in selected if (m := members.get(n.name)) and m.kubelet]
        if not versions:
            status.setdefault("phase", OP_PENDING)
            status["message"] = "waiting for kupd members on the selected nodes"
            return Plan(status, events)
        try:
            needed = hop_minors(min(versions), policy.target)[:-1]
        except SkewError as skew:
            _condition(status, "Valid", False, skew.rule, str(skew), gen, now)
            return _fail(op, status, "VersionSkew", str(skew), now, events)
        # The coordinator resolves each intermediate minor's newest patch from the operation's own
        # package source; one it could not resolve holds the operation (never a guessed .0). Only
        # the dry run, which has no package source, passes None and shows .0 placeholders.
        missing = [mk for mk in needed if resolved_minors is not None and mk not in resolved_minors]
        if missing:
            mk = missing[0]
            why = (hop_errors or {}).get(mk) or "not resolved yet"
            msg = (f"cannot resolve the newest v{mk[0]}.{mk[1]} patch from spec.packageSource: {why}; "
                   "retrying")
            status.setdefault("phase", OP_PENDING)
            status["message"] = msg
            _condition(status, "HopsResolved", False, "PackageSourceUnavailable", msg, gen, now)
            return Plan(status, events)
        status["hops"] = hops_for(min(versions), policy.target, resolved_minors or {})
        if needed:
            _condition(status, "HopsResolved", True, "Resolved",
                       f"hops {', '.join(status['hops'])} from spec.packageSource", gen, now)
    hops = [Version.parse(h) for h in status["hops"]]

    # The kubelet-never-newer rule: a worker-only selection cannot pass the control plane.
    if not any(n.control_plane for n in selected):
        cp_versions = [m.kubelet for n in nodes if n.control_plane
                       and (m := members.get(n.name)) and m.kubelet]
        if cp_versions and policy.target.minor_key > min(cp_versions).minor_key:
            msg = (f"target {policy.target} is newer than the control plane {min(cp_versions)}; "
                   "select the control-plane nodes too (rule: kubelet-not-newer-than-apiserver)")
            _condition(status, "Valid", False, "kubelet-not-newer-than-apiserver", msg, gen, now)
            return _fail(op, status, "VersionSkew", msg, now, events)

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
                _backup_conditions(status, m.report.backup, gen, now, events)

    # Bring every selected node's entry up to date with what its member reports.
    for n in selected:
        _observe(entries[n.name], members.get(n.name), op, policy, now, events, n.name)

    ordered = [entries[n.name] for n in selected]
    status["nodes"] = list(ordered)
    # Entries of nodes that left the selection or the cluster are kept for the record only.
    selected_names = {n.name for n in selected}
    for name, e in entries.items():
        if name not in selected_names:
            status["nodes"].append(e)

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
        _condition(status, "BackupSucceeded", False, "BackupFailed", msg, gen, now)
        return _fail(op, status, "BackupFailed", msg, now, events)

    if all(e["phase"] in DONE for e in ordered):
        if status.get("phase") != OP_SUCCEEDED:
            events.append(PlanEvent("Succeeded", f"all {len(ordered)} nodes at {policy.target}"))
        status["phase"] = OP_SUCCEEDED
        status["message"] = f"all {len(ordered)} selected nodes are at {policy.target}"
        status.setdefault("finishedAt", _iso(now))
        status["progress"] = f"{len(ordered)}/{len(ordered)}"
        _condition(status, "Progressing", False, "Completed", status["message"], gen, now)
        _condition(status, "RequiresAttention", False, "NoProblem", "", gen, now)
        return Plan(status, events)

    done_count = sum(1 for e in ordered if e["phase"] in DONE)
    status["progress"] = f"{done_count}/{len(ordered)}"

    attention = [e for e in ordered if e["phase"] in (FAILED, LOST)]
    no_member = [e for e in ordered if e["phase"] == PENDING and e["name"] not in members]
    if attention or no_member:
        e0 = (attention or no_member)[0]
        reason = {"Failed": str(e0.get("reason")) if e0.get("reason") in ATTENTION_REASONS else "NodeFailed",
                  "Lost": "NodeLost"}.get(e0["phase"], "NoMember")
        msg = (f"node {e0['name']}: {e0.get('message') or reason}" if attention
               else f"node {e0['name']} has no live kupd member; install or start kupd there")
        if status.get("phase") != OP_ATTENTION:
            events.append(PlanEvent(reason, msg, e0["name"], warning=True))
        status["phase"] = OP_ATTENTION
        status["message"] = msg
        _condition(status, "RequiresAttention", True, reason, msg, gen, now)
        if failed:
            # A failed step stops all further grants until an operator acts.
            return Plan(status, events)
    else:
        _condition(status, "RequiresAttention", False, "NoProblem", "", gen, now)

    if policy.paused:
        status["phase"] = OP_PAUSED
        status["message"] = "paused by spec.paused; nodes already granted finish their turn"
        _condition(status, "Progressing", False, "Paused", status["message"], gen, now)
        return Plan(status, events)

    window = _window_decision(op, ordered, policy, now)
    if window is not None and not window.allowed:
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = window.reason
        _condition(status, "Progressing", False, "OutsideWindow", window.reason, gen, now)
        return Plan(status, events)

    gate = _health_gate(op.spec.get("healthGates"), ordered, nodes, now, gate_failure)
    if gate is not None:
        if status.get("phase") != OP_PAUSED or status.get("message") != gate:
            events.append(PlanEvent("HealthGateFailed", gate, warning=True))
        _condition(status, "HealthGates", False, "GateFailed", gate, gen, now)
        if not attention:
            status["phase"] = OP_PAUSED
            status["message"] = f"health gate: {gate}"
        return Plan(status, events)
    if op.spec.get("healthGates"):
        _condition(status, "HealthGates", True, "GatesPassed", "every health gate passes", gen, now)

    held = _preflight(op, status, ordered, preflight_facts, now, events)
    if held is not None:
        if not attention:
            status["phase"], status["message"] = OP_PENDING, held
        return Plan(status, events)

    # Turns of another DirectUpdate that are not over yet (it was deleted or failed mid-turn while
    # its nodes still work) hold their slots too: a turn ends only when its node says so.
    elsewhere = {n: g for n, g in (delivered or {}).items()
                 if g.uid != op.uid and not turn_over(members.get(n), g)}
    refusals: list[hazards.Hazard] = []
    held = _grant(ordered, hops, policy, members, epoch, now, events, status, canaries, elsewhere, nodes,
                  refusals, deprecated_apis)
    _hazard_conditions(status, refusals, gen, now, events)
    if refusals and not attention and held is None:
        status["phase"] = OP_ATTENTION
        status["message"] = f"upgrade hazard on {refusals[0].subject}: {refusals[0].message}"[:1000]
        _condition(status, "RequiresAttention", True, "UpgradeHazard", status["message"], gen, now)
        return Plan(status, events)
    if held is not None:
        # A skew no turn of this operation can fix: say so and grant nothing more.
        if status.get("phase") != OP_ATTENTION or status.get("message") != held:
            events.append(PlanEvent("VersionSkew", held, warning=True))
        status["phase"], status["message"] = OP_ATTENTION, held
        _condition(status, "RequiresAttention", True, "VersionSkew", held, gen, now)
        return Plan(status, events)
    in_flight = [e for e in ordered if e["phase"] in IN_FLIGHT]
    if not attention:
        status["phase"] = OP_RUNNING
        status["message"] = (f"upgrading {', '.join(e['name'] for e in in_flight)}" if in_flight
                             else status.get("message", ""))
    status.setdefault("startedAt", _iso(now))
    _condition(status, "Progressing", True, "Upgrading", f"{done_count}/{len(ordered)} nodes done", gen, now)
    return Plan(status, events)


def _preflight(op: Operation, status: dict[str, Any], ordered: list[dict[str, Any]],
               facts: preflight.ClusterFacts | None, now: datetime, events: list[PlanEvent]) -> str | None:
    """The cluster preflight, until it has passed once: one Condition per failing check, and what
    holds the first grant (None: nothing). Checks in spec.preflight.warnOnly only warn."""
    gen = op.generation
    passed = any(c["type"] == "Preflight" and c["status"] == "True" for c in status.get("conditions") or [])
    if facts is None or passed:
        return None
    targeted = [e["name"] for e in ordered if e["phase"] not in DONE]
    warn_only = set(((op.spec.get("preflight") or {}).get("warnOnly")) or [])
    verdict = preflight.judge(preflight.evaluate(targeted, facts, __version__), warn_only)
    failing = verdict.by_check()
    for check in preflight.CHECKS:
        ctype = f"Preflight{check}"
        known = any(c["type"] == ctype for c in status.get("conditions") or [])
        if check in failing:
            msg = preflight.condition_message(failing[check])
            reason = "WarnOnly" if check in warn_only else "CheckFailed"
            if not any(c["type"] == ctype and c["status"] == "False" and c["message"] == msg
                       for c in status.get("conditions") or []):
                events.append(PlanEvent(f"Preflight{check}", msg, warning=True))
            _condition(status, ctype, False, reason, msg, gen, now)
        elif known:
            _condition(status, ctype, True, "CheckPassed", "", gen, now)
    if verdict.blocking:
        first = verdict.blocking[0]
        msg = (f"preflight {first.check}: {first.message}"
               + (f" (and {len(verdict.blocking) - 1} more findings)" if len(verdict.blocking) > 1 else ""))
        _condition(status, "Preflight", False, "ChecksFailed", msg, gen, now)
        return msg
    _condition(status, "Preflight", True, "ChecksPassed",
               "every preflight check passed" + (" (some only warn)" if verdict.warnings else ""), gen, now)
    return None


def _hazard_conditions(status: dict[str, Any], refusals: list[hazards.Hazard], gen: int, now: datetime,
                       events: list[PlanEvent]) -> None:
    """Condition UpgradeHazards: False naming each refused node and its fix; True once none is left."""
    known = any(c["type"] == "UpgradeHazards" for c in status.get("conditions") or [])
    if not refusals:
        if known:
            _condition(status, "UpgradeHazards", True, "NoHazard", "", gen, now)
        return
    msg = "; ".join(h.message for h in refusals)
    if not any(c["type"] == "UpgradeHazards" and c["status"] == "False" and c["message"] == msg[:1000]
               for c in status.get("conditions") or []):
        for h in refusals:
            events.append(PlanEvent(h.rule, h.message, h.subject, warning=True))
    _condition(status, "UpgradeHazards", False, refusals[0].rule, msg, gen, now)


def _backup_conditions(status: dict[str, Any], b: Mapping[str, Any], gen: int, now: datetime,
                       events: list[PlanEvent]) -> None:
    """Conditions for the backup record of the first control-plane node. A snapshot kept only on
    the node (no store, or a BestEffort upload that failed) and a BestEffort snapshot that failed
    let the operation go on, each with a Warning."""
    where = b.get("location") or "-"
    message = str(b.get("message") or "")
    if b.get("verified") and b.get("uploaded", True):
        msg = f"etcd snapshot {where} verified before any change"
        _condition(status, "BackupSucceeded", True, "BackupVerified", msg, gen, now)
        _condition(status, "BackupUploaded", True, "Uploaded", msg, gen, now)
        events.append(PlanEvent("BackupTaken", msg))
    elif b.get("verified"):
        msg = f"etcd snapshot verified before any change; not uploaded: {message}"
        reason = "NoStoreConfigured" if "no backup store" in message else "UploadFailed"
        _condition(status, "BackupSucceeded", True, "LocalSnapshotOnly", msg, gen, now)
        _condition(status, "BackupUploaded", False, reason, msg, gen, now)
        events.append(PlanEvent("BackupNotUploaded", msg, warning=True))
    else:
        msg = f"etcd snapshot failed (policy BestEffort, going on without one): {message}"
        _condition(status, "BackupSucceeded", False, "BestEffortBackupFailed", msg, gen, now)
        events.append(PlanEvent("BackupFailed", msg, warning=True))


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
            if r.reason:
                e["reason"] = r.reason[:63]
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


def _grant(ordered: list[dict[str, Any]], hops: list[Version], policy: Policy,
           members: Mapping[str, MemberView], epoch: int, now: datetime, events: list[PlanEvent],
           status: dict[str, Any], canaries: set[str], elsewhere: Mapping[str, Grant],
           nodes: Sequence[NodeView] = (), refusals: list[hazards.Hazard] | None = None,
           deprecated_apis: Sequence[hazards.DeprecatedApi] | None = None) -> str | None:
    """Give the next turns. Returns why the operation cannot go on without an operator (a version
    skew that no grant of this operation can fix), or None."""
    containerd = policy.containerd
    refusals = refusals if refusals is not None else []

    def refused(e: dict[str, Any], versions: list[Version]) -> bool:
        """Whether the node's host would break on the target of this turn: then it stays Pending
        with the fix in its message, and the operation says so."""
        m = members.get(e["name"])
        if not versions or m is None or m.facts is None:
            return False
        found = hazards.node_hazards(e["name"], m.facts, versions[-1], containerd)
        if found:
            e["message"] = f"refused: {found[0].message}"[:1000]
            refusals.extend(found)
        return bool(found)

    def give(e: dict[str, Any], versions: list[Version], first_cp: bool, backup: bool, why: str = "") -> None:
        if not versions:
            return
        e["phase"] = GRANTED
        e["grant"] = {"epoch": epoch, "versions": [str(v) for v in versions], "firstControlPlane": first_cp,
                      "backup": backup, "grantedAt": _iso(now)}
        e["message"] = f"granted {', '.join(str(v) for v in versions)}" + (f" ({why})" if why else "")
        # grant_reason reads `why` back out of this message.
        e.setdefault("startedAt", _iso(now))
        events.append(PlanEvent("NodeGranted", f"{e['name']} may upgrade to {versions[-1]}", e["name"]))

    def current(e: dict[str, Any]) -> Version | None:
        m = members.get(e["name"])
        return m.kubelet if m else None

    ready = {n.name: n.ready for n in nodes}

    def eligible(e: dict[str, Any]) -> bool:
        m = members.get(e["name"])
        return (e["phase"] == PENDING and m is not None and m.alive and m.kubelet is not None
                and e["name"] not in elsewhere and ready.get(e["name"], True))

    # Every in-flight grant is re-stamped with this coordinator's epoch: agents ignore older ones.
    for e in ordered:
        if e["phase"] in IN_FLIGHT and e.get("grant"):
            e["grant"]["epoch"] = epoch

    cps = [e for e in ordered if e["role"] == "ControlPlane"]
    workers = [e for e in ordered if e["role"] == "Worker"]
    workers_busy = any(e["phase"] in IN_FLIGHT for e in workers) or any(
        not g.control_plane for g in elsewhere.values())
    cp_busy = any(e["phase"] in IN_FLIGHT for e in cps) or any(g.control_plane for g in elsewhere.values())
    cp_left = [e for e in cps if e["phase"] not in DONE]
    versions = cluster_versions(nodes, members)
    # Workers move only as far as every API server has: a kubelet is never newer than one.
    ceiling = min(versions.apiservers.values(), default=hops[-1])
    interleave: dict[str, str] = {}  # worker -> the skew rule its turn now clears
    if cp_left:
        if cp_busy or workers_busy:
            return None
        # Hop-major: every control-plane node reaches hop i before any starts hop i+1, so the
        # API servers never drift more than one minor apart.
        for hop in hops:
            behind = [e for e in cp_left if (v := current(e)) is not None and v < hop]
            if not behind:
                continue
            nxt = behind[0]
            # Would this move break a skew rule for a kubelet (or kube-proxy) anywhere in the cluster?
            broken = skew.control_plane_move(versions, nxt["name"], hop)
            if broken:
                fixable = {e["name"] for e in workers if e["phase"] == PENDING}
                stuck = [rule for rule in broken if rule.subject not in fixable]
                if stuck:
                    return (f"the API servers cannot move to {hop}: {stuck[0]}; upgrade or select that node, "
                            "or leave it out of the cluster")
                # Interleave: the workers that would fall too far behind move up to the API servers' minor first.
                for rule in broken:
                    interleave.setdefault(rule.subject, f"before the API servers move to {hop}: {rule}")
                break
            removed = hazards.api_hazards(deprecated_apis or (), hop)
            if removed:
                # Clients still use API versions this hop removes: after it their requests fail.
                nxt["message"] = f"refused: {removed[0].message}"[:1000]
                refusals.extend(removed)
                return None
            first_cp = all((v := current(e)) is None or v < hop for e in cps)
            if eligible(nxt) and not refused(nxt, [hop]):
                need_backup = (policy.backup_required and not status.get("backup")
                               and hop == hops[0] and first_cp)
                give(nxt, [hop], first_cp, need_backup, f"control plane to {hop.minor_key[0]}.{hop.minor_key[1]}")
            return None
        if not interleave:
            return None

    in_flight = [e for e in workers if e["phase"] in IN_FLIGHT]
    slots = policy.concurrency - len(in_flight) - sum(1 for g in elsewhere.values() if not g.control_plane)
    if interleave:
        pool = [e for e in workers if e["name"] in interleave and e["phase"] == PENDING]
        candidates = [e for e in pool if e["name"] in canaries] or pool
    else:
        canary_entries = [e for e in workers if e["name"] in canaries]
        canaries_done = all(e["phase"] in DONE for e in canary_entries)
        candidates = [e for e in workers if e["name"] in canaries and e["phase"] == PENDING]
        if canaries_done:
            if canary_entries and policy.canary_bake_seconds:
                finished = [f for e in canary_entries if (f := parse_time(e.get("finishedAt")))]
                if finished and now < max(finished) + timedelta(seconds=policy.canary_bake_seconds):
                    status["message"] = "canaries upgraded; baking before the other workers"
                    return None
            candidates = [e for e in workers if e["phase"] == PENDING]
    for e in candidates:
        if slots <= 0:
            break
        if not eligible(e):
            continue
        v = current(e)
        assert v is not None
        steps = [h for h in hops if v < h and h.minor_key <= ceiling.minor_key]
        if not steps:
            continue
        if refused(e, steps):
            continue
        why = interleave.get(e["name"], "")
        give(e, steps, False, False, why)
        slots -= 1
    return None


def grant_reason(message: str) -> str:
    """The reason `_grant` put in a grant's message: "granted v1.28.15, v1.29.10 (<reason>)"."""
    if message.startswith("granted ") and message.endswith(")") and " (" in message:
        return message[message.index(" (") + 2:-1]
    return ""


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


@dataclass(frozen=True)
class Wave:
    """Nodes granted together in a dry run, with when they start and end."""

    nodes: list[str]
    versions: list[list[str]]
    start_seconds: float
    end_seconds: float
    backup_node: str | None = None
    """The node that takes the etcd snapshot at the start of its turn, if any in this wave."""
    reasons: list[str] = field(default_factory=list)
    """Why the wave sits where it does (a worker wave between control-plane hops names the skew rule)."""


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
            backup_node = next((e["name"] for e in new if e["grant"].get("backup")), None)
            reasons = [r for e in new if (r := grant_reason(e.get("message", "")))]
            if waves and waves[-1].start_seconds == clock:
                # Several slots freed at the same moment are one wave.
                last = waves.pop()
                new_names, new_versions = last.nodes, last.versions
                backup_node = backup_node or last.backup_node
                reasons = last.reasons + reasons
            else:
                new_names, new_versions = [], []
            waves.append(Wave(new_names + [e["name"] for e in new],
                              new_versions + [e["grant"]["versions"] for e in new], clock, clock + node_seconds,
                              backup_node, list(dict.fromkeys(reasons))))
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
