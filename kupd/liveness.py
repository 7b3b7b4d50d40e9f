"""The coordinator's view of the nodes and their members: the planner's `NodeView`s (from the
Nodes the kubelets write) and `MemberView`s (from the member Leases each node's kupd writes),
with liveness judged on this coordinator's own monotonic clock.

Facts the cluster knows (kubelet version, readiness) come from the Node; a member Lease only says
whether kupd there is alive and where its agent is. Every member Lease is decoded (and checked:
protocol.decode_member_lease) once per resourceVersion; an invalid one is a fact about its node,
never an exception here.
"""

from __future__ import annotations

import time
from typing import Any

from kupd import k8s, planner, untrusted
from kupd import protocol as p
from kupd.versions import Version

# A member Lease's own duration, as its node wrote it, bounded: a node cannot make itself immortal.
MEMBER_DURATION_BOUNDS = (5, 600)


def _node_facts(node: dict[str, Any]) -> tuple[Any, ...]:
    md, spec = node.get("metadata") or {}, node.get("spec") or {}
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return (md.get("labels"), k8s.ready(node), spec.get("unschedulable"), info.get("kubeletVersion"))


def node_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a Node's change can change a plan: its labels, readiness, cordon or kubelet version,
    not the heartbeat times the kubelet rewrites every few minutes."""
    return old is None or _node_facts(old) != _node_facts(new)


class Liveness:
    """Nodes and member Leases, as the informers `nodes` and `leases` hold them, turned into the
    planner's views; `member_duration` is the longest lease a member is judged by."""

    def __init__(self, nodes: k8s.Informer, leases: k8s.Informer, member_duration: int) -> None:
        self.nodes = nodes
        self.leases = leases
        self.member_duration = member_duration
        # Liveness without node clocks: when this coordinator saw each member Lease change, on its
        # own monotonic clock (name -> (resourceVersion, when first seen)). renewTime is never used.
        self._seen: dict[str, tuple[str, float]] = {}
        # Decoded member Leases by resourceVersion: a round re-reads N Leases, most unchanged.
        self._decoded: dict[str, tuple[str, p.MemberLease]] = {}
        # The views themselves, by resourceVersion (and liveness): a round builds none for what did
        # not change (at 1000 nodes, parsing every kubelet version each round cost as much as the plan).
        self._node_views: dict[str, tuple[str, planner.NodeView]] = {}
        self._member_views: dict[str, tuple[tuple[str, bool, Version | None], planner.MemberView]] = {}

    def kupd_version(self, node: str) -> str:
        """The kupd version `node`'s member Lease last claimed ("" when unknown)."""
        d = self._decoded.get(p.member_lease_name(node))
        return d[1].kupd_version if d else ""

    def views(self) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
        """The planner's inputs: every Node, and the member of every member Lease, alive or not."""
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
            m = self._member(lease, name, mono, kubelets)
            if m is not None:
                members[m.node] = m
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
            self._member_views.pop(name, None)
        return nodes, members

    def _member(self, lease: dict[str, Any], name: str, mono: float,
                kubelets: dict[str, Version | None]) -> planner.MemberView | None:
        rv = str(lease["metadata"].get("resourceVersion", ""))
        seen = self._seen.get(name)
        if seen is None or seen[0] != rv or not rv:
            seen = self._seen[name] = (rv, mono)
        cached = self._decoded.get(name)
        if cached is None or cached[0] != rv or not rv:
            decoded = p.decode_member_lease(lease, self.member_duration)
            if decoded is None:
                return None
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
        return made[1]
