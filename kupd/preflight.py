"""Cluster preflight: what must hold before an operation's first grant. Pure.

The coordinator gathers the facts (Nodes, member Leases, control-plane pods, etcd's health through
the API server, PodDisruptionBudgets and the pods on the targeted nodes); `evaluate` turns them into
one Finding per failing check and object. The planner writes one Condition per failing check
(`Preflight<Check>`), naming the nodes and objects, and grants nothing while a check that is not
listed in spec.preflight.warnOnly fails.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from kupd import selectors

NODES_READY = "NodesReady"
DAEMONS_ALIVE = "DaemonsAlive"
KUPD_VERSIONS = "KupdVersions"
NODE_PRESSURE = "NodePressure"
CONTROL_PLANE_PODS = "ControlPlanePods"
ETCD_HEALTHY = "EtcdHealthy"
EVICTIONS_POSSIBLE = "EvictionsPossible"
CHECKS = (NODES_READY, DAEMONS_ALIVE, KUPD_VERSIONS, NODE_PRESSURE, CONTROL_PLANE_PODS, ETCD_HEALTHY,
          EVICTIONS_POSSIBLE)
PRESSURES = ("DiskPressure", "MemoryPressure", "PIDPressure")


@dataclass(frozen=True)
class NodeHealth:
    name: str
    ready: bool
    pressures: tuple[str, ...] = ()
    """Node conditions among PRESSURES whose status is True."""


@dataclass(frozen=True)
class MemberHealth:
    node: str
    alive: bool
    kupd_version: str


@dataclass(frozen=True)
class PodHealth:
    namespace: str
    name: str
    node: str
    ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    """A PodDisruptionBudget as the API gives it (policy/v1)."""

    namespace: str
    name: str
    selector: selectors.Selector | None
    """None: a null selector, which selects no pod."""
    min_available: int | str | None = None
    max_unavailable: int | str | None = None
    expected_pods: int = 0


@dataclass(frozen=True)
class ClusterFacts:
    nodes: Mapping[str, NodeHealth]
    members: Mapping[str, MemberHealth]
    control_plane_pods: Sequence[PodHealth] = ()
    """kube-system pods labelled tier=control-plane (kubeadm's static pods, as mirror pods)."""
    etcd_problem: str | None = None
    """What the API server's etcd readiness check says when it fails; None when it passes."""
    budgets: Sequence[Budget] = ()
    pods: Sequence[PodHealth] = ()
    """Pods on the targeted nodes: the ones their drains will evict."""


@dataclass(frozen=True)
class Finding:
    check: str
    subject: str
    """The node or object the finding is about, as kubectl names it (node/w-1, pdb/shop/web)."""
    message: str


def compatible(ours: str, theirs: str) -> bool:
    """Daemons of one major.minor speak the same protocol; a patch release may differ."""
    return ours.split(".")[:2] == theirs.split(".")[:2]


def never_allows_eviction(b: Budget) -> str | None:
    """Why a budget can never allow an eviction, whatever the pods' health, or None."""
    if b.max_unavailable in (0, "0%"):
        return "maxUnavailable is 0"
    if b.min_available == "100%":
        return "minAvailable is 100%"
    if isinstance(b.min_available, int) and b.expected_pods > 0 and b.min_available >= b.expected_pods:
        return f"minAvailable {b.min_available} with {b.expected_pods} pods expected"
    return None


def evaluate(targeted: Collection[str], facts: ClusterFacts, kupd_version: str) -> list[Finding]:
    """Every failing check, one Finding per object, in CHECKS order."""
    out: list[Finding] = []
    names = sorted(targeted)
    for n in names:
        h = facts.nodes.get(n)
        if h is None or not h.ready:
            out.append(Finding(NODES_READY, f"node/{n}", f"node {n} is not Ready"))
    for n in names:
        m = facts.members.get(n)
        if m is None or not m.alive:
            out.append(Finding(DAEMONS_ALIVE, f"node/{n}", f"kupd on {n} is not renewing its member Lease"))
    for n in names:
        m = facts.members.get(n)
        if m is not None and m.alive and not compatible(kupd_version, m.kupd_version):
            out.append(Finding(KUPD_VERSIONS, f"node/{n}",
                               f"kupd on {n} is {m.kupd_version or 'unknown'}, the coordinator {kupd_version}: "
                               "upgrade kupd to the same minor on every node first"))
    for n in names:
        h = facts.nodes.get(n)
        if h is not None and h.pressures:
            out.append(Finding(NODE_PRESSURE, f"node/{n}", f"node {n} reports {', '.join(h.pressures)}"))
    for p in facts.control_plane_pods:
        if not p.ready:
            out.append(Finding(CONTROL_PLANE_PODS, f"pod/{p.namespace}/{p.name}",
                               f"control-plane pod {p.namespace}/{p.name} on {p.node} is not Ready"))
    if facts.etcd_problem:
        out.append(Finding(ETCD_HEALTHY, "etcd", f"etcd is not healthy: {facts.etcd_problem}"))
    drained = [p for p in facts.pods if p.node in targeted]
    for b in facts.budgets:
        why = never_allows_eviction(b)
        if why is None or b.selector is None:
            continue
        sel = b.selector
        hit = sorted(f"{p.namespace}/{p.name}" for p in drained if p.namespace == b.namespace and sel.matches(p.labels))
        if hit:
            more = f" and {len(hit) - 3} more" if len(hit) > 3 else ""
            out.append(Finding(EVICTIONS_POSSIBLE, f"pdb/{b.namespace}/{b.name}",
                               f"PodDisruptionBudget {b.namespace}/{b.name} can never allow an eviction ({why}) "
                               f"and guards {', '.join(hit[:3])}{more} on nodes to drain"))
    return out


@dataclass(frozen=True)
class Verdict:
    blocking: tuple[Finding, ...]
    warnings: tuple[Finding, ...]

    def by_check(self) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {}
        for f in (*self.blocking, *self.warnings):
            out.setdefault(f.check, []).append(f)
        return out


def judge(findings: Sequence[Finding], warn_only: Collection[str]) -> Verdict:
    """Split findings into those that hold the first grant and those spec.preflight.warnOnly lets pass."""
    return Verdict(tuple(f for f in findings if f.check not in warn_only),
                   tuple(f for f in findings if f.check in warn_only))


def condition_message(findings: Sequence[Finding], limit: int = 900) -> str:
    """One Condition's message: every finding of one check, naming the objects."""
    text = "; ".join(f.message for f in findings)
    return text if len(text) <= limit else text[: limit - 1] + "…"
