"""The coordination protocol's wire format: object names, annotation keys, the agent report.

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
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

GROUP = "kupd.io"
VERSION = "v1alpha1"
DIRECTUPDATES = "directupdates"
SCHEDULEDUPDATES = "scheduledupdates"
UPDATESCHEDULES = "updateschedules"

COORDINATOR_LEASE = "kupd-coordinator"
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

# Step names, in order. A reboot, where required, is a step like the others.
STEP_PREFLIGHT = "preflight"
STEP_BACKUP = "backup"
STEP_REPOSITORY = "repository"
STEP_KUBEADM_PACKAGE = "kubeadm-package"
STEP_KUBEADM_UPGRADE = "kubeadm-upgrade"
STEP_DRAIN = "drain"
STEP_KUBELET_PACKAGE = "kubelet-package"
STEP_RESTART = "restart"
STEP_REBOOT = "reboot"
STEP_VERIFY = "verify"
STEP_UNCORDON = "uncordon"
STEPS = (
    STEP_PREFLIGHT, STEP_BACKUP, STEP_REPOSITORY, STEP_KUBEADM_PACKAGE, STEP_KUBEADM_UPGRADE, STEP_DRAIN,
    STEP_KUBELET_PACKAGE, STEP_RESTART, STEP_REBOOT, STEP_VERIFY, STEP_UNCORDON,
)


def member_lease_name(node: str) -> str:
    return MEMBER_LEASE_PREFIX + node


def grant_lease_name(node: str) -> str:
    return GRANT_LEASE_PREFIX + node


@dataclass(frozen=True)
class Grant:
    """A node's turn, as the coordinator delivers it in the node's grant Lease.

    It carries everything the agent needs to do the work (the operation's spec included), so
    the agent never reads the DirectUpdate, whose status grows with the cluster.
    """

    operation: str
    uid: str
    epoch: int
    versions: list[str]
    granted_at: str
    first_control_plane: bool = False
    backup: bool = False
    control_plane: bool = False
    spec: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> str:
        return _encode(self)

    @classmethod
    def decode(cls, text: str | None) -> Grant | None:
        g = _decode(cls, text)
        if g is None or not (g.operation and g.uid and g.versions and g.granted_at):
            return None
        return g

    @classmethod
    def from_record(cls, operation: str, uid: str, entry: dict[str, Any], spec: dict[str, Any]) -> Grant:
        """The grant of a `status.nodes[]` entry, as its node's grant Lease carries it."""
        g = entry["grant"]
        return cls(operation=operation, uid=uid, epoch=int(g["epoch"]), versions=list(g["versions"]),
                   granted_at=str(g["grantedAt"]), first_control_plane=bool(g.get("firstControlPlane")),
                   backup=bool(g.get("backup")), control_plane=entry.get("role") == "ControlPlane",
                   spec=dict(spec))

    def record(self) -> dict[str, Any]:
        """The grant as `status.nodes[].grant` records it."""
        return {"epoch": self.epoch, "versions": list(self.versions), "firstControlPlane": self.first_control_plane,
                "backup": self.backup, "grantedAt": self.granted_at}


@dataclass(frozen=True)
class Report:
    """What an agent says about the grant it works on; lives in its member Lease."""

    operation: str
    uid: str
    epoch: int
    versions: list[str]
    phase: str  # Upgrading | Succeeded | Failed
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
        return _decode(cls, text)


def grant_value(lease: dict[str, Any]) -> str:
    """The grant annotation of a grant Lease ("" when the node holds no turn)."""
    return str(((lease.get("metadata") or {}).get("annotations") or {}).get(ANN_GRANT) or "")


def _encode(obj: Any) -> str:
    return json.dumps(asdict(obj), sort_keys=True, separators=(",", ":"))


def _decode(cls: type[T], text: str | None) -> T | None:
    """A dataclass from its JSON, ignoring unknown keys (a newer kupd may add some); None when absent
    or malformed."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None  # a member Lease is written by its node: `[]` must not stop the coordinator
    try:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})  # type: ignore[attr-defined]
    except TypeError:
        return None
