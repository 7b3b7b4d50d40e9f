"""The coordination protocol's wire format: object names, annotation keys, the phases and steps,
the grant (planner -> agent) and the report (agent -> status), with their codecs.

docs/development/protocol.md explains who writes what and why. In short:
- each daemon renews its own member Lease `kupd-node-<node>` and writes its progress report
  into that Lease's annotations (one write per step change, piggybacked on renewals);
- the coordinator (holder of Lease `kupd-coordinator`, whose leaseTransitions is the epoch)
  is the only writer of DirectUpdate status and of the grant Leases `kupd-grant-<node>`;
- a grant is delivered in its node's own grant Lease (annotation `kupd.io/grant`), which only
  that node's agent watches, by name: a turn costs one small write seen by one watcher, whatever
  the cluster's size. `status.nodes[].grant` records it; the record is written coalesced.
- agents ignore grants older than the newest epoch they have seen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from kupd import untrusted as u
from kupd.api.models import DirectUpdateSpec, NodeWork, parse_node_work, to_wire
from kupd.errors import ValidationError
from kupd.hazards import NodeFacts
from kupd.hazards import decode as decode_node_facts
from kupd.rfc3339 import format_micro
from kupd.versions import Version

COORDINATOR_LEASE = "kupd-coordinator"
# Written by the coordinator only when an operation starts or ends; every member watches it by
# name to renew rarely while it is "" and often while it names an operation.
ACTIVITY_LEASE = "kupd-activity"
ANN_ACTIVE = "kupd.io/active"
MEMBER_LEASE_PREFIX = "kupd-node-"
GRANT_LEASE_PREFIX = "kupd-grant-"

# Member lease annotations.
ANN_BOOT_ID = "kupd.io/boot-id"
ANN_KUPD_VERSION = "kupd.io/version"
ANN_PACKAGE_MANAGER = "kupd.io/package-manager"
ANN_KUBEADM = "kupd.io/kubeadm-version"
ANN_KUBELET = "kupd.io/kubelet-version"
ANN_KUBECTL = "kupd.io/kubectl-version"
ANN_CONTAINERD = "kupd.io/containerd-version"
ANN_CONTROL_PLANE = "kupd.io/control-plane"
ANN_REPORT = "kupd.io/report"
ANN_NODE_FACTS = "kupd.io/node-facts"  # the host facts of the upgrade-hazard checks (kupd/hazards.py)

# Label telling grant Leases from member Leases (both carry kupd.io/node).
LABEL_LEASE_KIND = "kupd.io/lease"
LEASE_KIND_GRANT = "grant"
LEASE_KIND_MEMBER = "member"
LEASE_KIND_ACTIVITY = "activity"

# Grant lease annotations: the Grant (JSON), or "" when the node holds no turn; and the epoch of
# the coordinator that wrote it (checked at admission against the coordinator Lease).
ANN_GRANT = "kupd.io/grant"
ANN_EPOCH = "kupd.io/epoch"

# Node annotation: set when kupd cordoned the node, so it uncordons only what it cordoned.
ANN_CORDONED_BY = "kupd.io/cordoned-by"
# Node annotation: why kupd stopped on this node and needs an operator (a drain refused or timed
# out). Removed when the node's drain next succeeds.
ANN_ATTENTION = "kupd.io/attention"

# DirectUpdate annotation an operator sets to retry Failed nodes: "w-1,w-2". Each distinct value
# retries once; to retry again, change the value (e.g. "w-1,w-2#2").
ANN_RETRY_NODES = "kupd.io/retry-nodes"

# DirectUpdate annotations written by the scheduler to bound when nodes may start.
ANN_WINDOW_START = "kupd.io/window-start"
ANN_WINDOW_END = "kupd.io/window-end"

LABEL_CONTROL_PLANE = "node-role.kubernetes.io/control-plane"

class Step(StrEnum):
    """A node's steps, in order. A reboot, where required, is a step like the others."""

    PREFLIGHT = "preflight"
    BACKUP = "backup"
    REPOSITORY = "repository"
    KUBEADM_PACKAGE = "kubeadm-package"
    KUBEADM_UPGRADE = "kubeadm-upgrade"
    DRAIN = "drain"
    KUBELET_PACKAGE = "kubelet-package"
    RESTART = "restart"
    REBOOT = "reboot"
    VERIFY = "verify"
    UNCORDON = "uncordon"


STEPS = tuple(Step)


class NodePhase(StrEnum):
    """A node's phase in `status.nodes[]`, as the coordinator records it (docs/development/protocol.md)."""

    PENDING = "Pending"
    GRANTED = "Granted"
    UPGRADING = "Upgrading"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    LOST = "Lost"


class OpPhase(StrEnum):
    """A DirectUpdate's `status.phase`."""

    PENDING = "Pending"
    RUNNING = "Running"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    REQUIRES_ATTENTION = "RequiresAttention"


class TurnPhase(StrEnum):
    """A turn as its agent reports it."""

    UPGRADING = "Upgrading"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


def member_lease_name(node: str) -> str:
    return MEMBER_LEASE_PREFIX + node


def grant_lease_name(node: str) -> str:
    return GRANT_LEASE_PREFIX + node


# The fields of a NodeWork that a grant's wire form carries at its top level (as it did before
# NodeWork): the rest travels under "work".
_GRANT_TOP = {"versions": "versions", "controlPlane": "control_plane", "firstControlPlane": "first_control_plane",
              "backup": "backup"}


@dataclass(frozen=True)
class Grant:
    """A node's turn, from the planner to the agent: which operation, the coordinator's epoch,
    when, and the work (`NodeWork`: versions, role and the parts of the spec the steps need), so
    the agent never reads the DirectUpdate, whose status grows with the cluster."""

    operation: str
    uid: str
    epoch: int
    granted_at: str
    work: NodeWork

    @property
    def versions(self) -> list[str]:
        return list(self.work.versions)

    @property
    def control_plane(self) -> bool:
        return self.work.control_plane

    @property
    def first_control_plane(self) -> bool:
        return self.work.first_control_plane

    @property
    def backup(self) -> bool:
        return self.work.backup

    def with_epoch(self, epoch: int) -> Grant:
        return replace(self, epoch=epoch)

    def wire(self) -> dict[str, Any]:
        """The JSON object of the grant Lease's annotation (and of the agent's checkpoint)."""
        work = to_wire(self.work)
        out: dict[str, Any] = {"operation": self.operation, "uid": self.uid, "epoch": self.epoch,
                               "granted_at": self.granted_at}
        for key, name in _GRANT_TOP.items():
            out[name] = work.pop(key)
        out["work"] = work
        return out

    def encode(self) -> str:
        return json.dumps(self.wire(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_wire(cls, data: Any) -> Grant | None:
        """A grant from its JSON object; None when it is not a complete, valid one."""
        if not isinstance(data, dict):
            return None
        operation, uid, epoch, granted_at = (data.get(k) for k in ("operation", "uid", "epoch", "granted_at"))
        if not (isinstance(operation, str) and operation and isinstance(uid, str) and uid
                and isinstance(granted_at, str) and granted_at and type(epoch) is int):
            return None
        work = data.get("work")
        if not isinstance(work, dict):
            return None
        try:
            parsed = parse_node_work({**work, **{key: data.get(name) for key, name in _GRANT_TOP.items()}})
        except ValidationError:
            return None
        return cls(operation=operation, uid=uid, epoch=epoch, granted_at=granted_at, work=parsed)

    @classmethod
    def decode(cls, text: str | None) -> Grant | None:
        if not text:
            return None
        try:
            return cls.from_wire(json.loads(text))
        except ValueError:
            return None

    @classmethod
    def from_record(cls, operation: str, uid: str, entry: dict[str, Any], spec: DirectUpdateSpec) -> Grant:
        """The grant of a `status.nodes[]` entry, as its node's grant Lease carries it. The status
        may have been written by hand or by another kupd: raises `untrusted.Invalid` naming the
        field when the entry's record is not a complete grant."""
        rec = GrantRecord.from_wire(entry.get("grant"))
        work = spec.node_work(list(rec.versions), control_plane=entry.get("role") == "ControlPlane",
                              first_control_plane=rec.first_control_plane, backup=rec.backup)
        return cls(operation=operation, uid=uid, epoch=rec.epoch, granted_at=rec.granted_at, work=work)

    def record(self) -> GrantRecord:
        """The grant as `status.nodes[].grant` records it."""
        return GrantRecord(self.epoch, tuple(self.versions), self.first_control_plane, self.backup, self.granted_at)


@dataclass(frozen=True)
class GrantRecord:
    """`status.nodes[].grant`: the record of a turn, stamped with the epoch of the coordinator that
    granted it. `wire()` and `from_wire` are its one camelCase conversion (the CRD's field names)."""

    epoch: int
    versions: tuple[str, ...]
    first_control_plane: bool = False
    backup: bool = False
    granted_at: str = ""

    def wire(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "versions": list(self.versions), "firstControlPlane": self.first_control_plane,
                "backup": self.backup, "grantedAt": self.granted_at}

    @classmethod
    def from_wire(cls, data: object, field: str = "grant") -> GrantRecord:
        """A record as the status holds it, every field checked; raises `untrusted.Invalid` naming
        the field (`grant.grantedAt`, say) when it is not a complete one."""
        if not isinstance(data, dict):
            raise u.Invalid(field, f"must be an object, got {type(data).__name__}")
        versions = data.get("versions")
        if not isinstance(versions, list) or not 1 <= len(versions) <= 64:
            raise u.Invalid(f"{field}.versions", "must be a list of 1 to 64 versions")
        for i, v in enumerate(versions):
            u.version(v, f"{field}.versions[{i}]")
        if "epoch" not in data:
            raise u.Invalid(f"{field}.epoch", "is required")
        granted_at = u.time_text(data, "grantedAt", f"{field}.grantedAt")
        if not granted_at:
            raise u.Invalid(f"{field}.grantedAt", "is required")
        flags = {}
        for key in ("firstControlPlane", "backup"):
            value = data.get(key, False)
            if not isinstance(value, bool):
                raise u.Invalid(f"{field}.{key}", f"must be a boolean, got {type(value).__name__}")
            flags[key] = value
        return cls(u.integer(data, "epoch", f"{field}.epoch"), tuple(versions), flags["firstControlPlane"],
                   flags["backup"], granted_at)


@dataclass(frozen=True)
class Report:
    """What an agent says about the grant it works on; lives in its member Lease."""

    operation: str
    uid: str
    epoch: int
    versions: list[str]
    phase: str  # a TurnPhase
    step: str = ""
    attempts: int = 0
    started_at: str = ""
    finished_at: str = ""
    message: str = ""
    reason: str = ""  # machine-readable cause of the message, e.g. DrainBlocked, StepFailed
    backup: dict[str, Any] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    granted_at: str = ""  # which grant this reports on: a retry is a new grant for the same work

    def encode(self) -> str:
        return _encode(self)

    @classmethod
    def decode(cls, text: str | None) -> Report | None:
        """The report in `text`, or None when there is none or it is invalid (`decode_report` says why)."""
        try:
            return decode_report(text)
        except u.Invalid:
            return None


def decode_report(raw: object) -> Report | None:
    """The progress report of a member Lease's `kupd.io/report` annotation, checked field by field
    (kupd.untrusted: bounded size and depth, types, the CRD's bounds); None when there is none.
    Unknown keys are ignored (a newer kupd may add some). Raises `untrusted.Invalid` naming the field."""
    if raw is None or raw == "":
        return None
    data = u.bounded_json(raw, "report")
    if not isinstance(data, dict):
        raise u.Invalid("report", f"must be a JSON object, got {type(data).__name__}")
    versions = data.get("versions")
    if not isinstance(versions, list) or not 1 <= len(versions) <= 64:
        raise u.Invalid("report.versions", "must be a list of 1 to 64 versions")
    for i, v in enumerate(versions):
        u.version(v, f"report.versions[{i}]")
    phase = u.text(data, "phase", "report.phase", 16)
    if phase not in tuple(TurnPhase):
        raise u.Invalid("report.phase", f"{phase[:20]!r} is not one of {', '.join(TurnPhase)}")
    operation = u.text(data, "operation", "report.operation", 253, u.DNS_SUBDOMAIN)
    uid = u.text(data, "uid", "report.uid", 64, u.UID)
    if not operation or not uid:
        raise u.Invalid("report.operation" if not operation else "report.uid", "is required")
    return Report(
        operation=operation, uid=uid, epoch=u.integer(data, "epoch", "report.epoch"), versions=list(versions),
        phase=phase, step=u.text(data, "step", "report.step", 63, u.STEP),
        attempts=u.integer(data, "attempts", "report.attempts", 0, u.MAX_ATTEMPTS),
        started_at=u.time_text(data, "started_at", "report.started_at"),
        finished_at=u.time_text(data, "finished_at", "report.finished_at"),
        message=u.message(data, "message", "report.message"),
        reason=u.text(data, "reason", "report.reason", 64, u.REASON),
        backup=u.backup(data.get("backup"), "report.backup"),
        step_seconds=u.step_seconds(data.get("step_seconds"), "report.step_seconds"),
        granted_at=u.time_text(data, "granted_at", "report.granted_at"),
    )


# -- Lease bodies: pure codecs of what the coordinator reads and writes --------------------------
def grant_value(lease: dict[str, Any]) -> str:
    """The grant annotation of a grant Lease ("" when the node holds no turn)."""
    return str(((lease.get("metadata") or {}).get("annotations") or {}).get(ANN_GRANT) or "")


def grant_values(leases: list[dict[str, Any]]) -> dict[str, str]:
    """node -> the grant annotation of its grant Lease, for the grant Leases among `leases`."""
    out = {}
    for lease in leases:
        name = lease["metadata"]["name"]
        if name.startswith(GRANT_LEASE_PREFIX):
            out[name[len(GRANT_LEASE_PREFIX):]] = grant_value(lease)
    return out


def grant_lease_body(namespace: str, node: str, value: str, epoch: int) -> dict[str, Any]:
    """The merge patch (or the new object) of a node's grant Lease carrying `value` ("" clears it).
    The epoch annotation lets admission policy kupd.io-grants check it against the coordinator
    Lease: a deposed coordinator's late write is refused by the API server itself. renewTime is
    when the coordinator wrote it, to the microsecond (status times are whole seconds): when a turn
    was handed over, for an operator reading the Lease and for the bench's handoff breakdown."""
    return {"metadata": {"name": grant_lease_name(node), "namespace": namespace,
                         "annotations": {ANN_GRANT: value, ANN_EPOCH: str(epoch)},
                         "labels": {"app.kubernetes.io/name": "kupd", "kupd.io/node": node,
                                    LABEL_LEASE_KIND: LEASE_KIND_GRANT}},
            "spec": {"holderIdentity": node, "renewTime": format_micro()}}


def activity_value(lease: dict[str, Any] | None) -> str:
    """What the activity Lease says: "<name>/<uid>" of the operation being run, "" when idle."""
    if lease is None:
        return ""
    return str(((lease.get("metadata") or {}).get("annotations") or {}).get(ANN_ACTIVE) or "")


def activity_lease_body(namespace: str, value: str, epoch: int) -> dict[str, Any]:
    """The merge patch (or the new object) of the activity Lease saying `value` ("" when idle)."""
    return {"metadata": {"name": ACTIVITY_LEASE, "namespace": namespace,
                         "annotations": {ANN_ACTIVE: value, ANN_EPOCH: str(epoch)},
                         "labels": {"app.kubernetes.io/name": "kupd", LABEL_LEASE_KIND: LEASE_KIND_ACTIVITY}},
            "spec": {"holderIdentity": "kupd-coordinator"}}


@dataclass(frozen=True)
class MemberLease:
    """What a member Lease says, decoded (`decode_member_lease`): when it was renewed (by the node's
    clock), for how long, the kubelet version its kupd claims (informational: the coordinator takes
    the version from the Node) and the agent's report. `problem` says what in it was invalid; the
    rest is what could be read (an invalid report reads as none)."""

    node: str
    renew_time: datetime | None
    duration: int
    kubelet: Version | None
    report: Report | None
    problem: str | None = None
    facts: NodeFacts | None = None
    """The host facts of the upgrade-hazard checks (untrusted: None when malformed)."""
    kupd_version: str = ""


def decode_member_lease(lease: dict[str, Any], default_duration: int) -> MemberLease | None:
    """The member Lease's content, every value checked (its node's kupd credential wrote it); None
    when `lease` is not a member Lease. Never raises on what the Lease holds."""
    md = lease.get("metadata") or {}
    name = str(md.get("name") or "")
    if not name.startswith(MEMBER_LEASE_PREFIX):
        return None
    spec = lease.get("spec") or {}
    anns = md.get("annotations") or {}
    problems: list[str] = []
    renewed = None
    if spec.get("renewTime"):
        try:
            renewed = u.parse_time(spec.get("renewTime"), "spec.renewTime")
        except u.Invalid as e:
            problems.append(f"invalid lease, field {e}")
    duration = spec.get("leaseDurationSeconds")
    if isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= 3600:
        duration = default_duration
    claimed = None
    if anns.get(ANN_KUBELET):
        try:
            claimed = u.version(anns[ANN_KUBELET], ANN_KUBELET)
        except u.Invalid as e:
            problems.append(f"invalid annotation {e}")
    report = None
    try:
        report = decode_report(anns.get(ANN_REPORT))
    except u.Invalid as e:
        problems.append(f"invalid report, field {e}")
    version = anns.get(ANN_KUPD_VERSION)
    return MemberLease(name[len(MEMBER_LEASE_PREFIX):], renewed, duration, claimed, report,
                       "; ".join(problems)[:500] or None, decode_node_facts(anns.get(ANN_NODE_FACTS)),
                       version[:64] if isinstance(version, str) else "")


def _report_key(anns: dict[str, Any]) -> tuple[Any, ...]:
    try:
        r = decode_report(anns.get(ANN_REPORT))
    except u.Invalid:
        return ("invalid",)
    return (r.uid, r.granted_at, r.phase, r.reason, tuple(r.versions)) if r else ()


def lease_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a Lease's change needs a coordinator round now. A renewal that moves only renewTime
    does not: expiry is found by the 1 s tick. Nor does a report that moves only to the next step:
    the record of steps is coalesced anyway, and the tick picks it up. What frees or holds a slot
    (a turn's start, its end, a drain blocked) and changed facts do."""
    name = (new.get("metadata") or {}).get("name", "")
    if name.startswith(GRANT_LEASE_PREFIX) or name == ACTIVITY_LEASE:
        return False  # grant Leases and the activity Lease are the coordinator's own writes
    if old is None:
        return True
    o, n = old.get("spec") or {}, new.get("spec") or {}
    if o.get("holderIdentity") != n.get("holderIdentity") or o.get("leaseDurationSeconds") != n.get(
            "leaseDurationSeconds"):
        return True
    oa = dict((old.get("metadata") or {}).get("annotations") or {})
    na = dict((new.get("metadata") or {}).get("annotations") or {})
    if oa.get(ANN_REPORT) != na.get(ANN_REPORT) and _report_key(oa) != _report_key(na):
        return True
    oa.pop(ANN_REPORT, None)
    na.pop(ANN_REPORT, None)
    return oa != na


def _encode(obj: Any) -> str:
    return json.dumps(asdict(obj), sort_keys=True, separators=(",", ":"))
