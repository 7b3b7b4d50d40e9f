"""The coordinator's view of the nodes and their members: the planner's `NodeView`s (from the
Nodes the kubelets write) and `MemberView`s (from the member Leases each node's kupd writes),
with liveness judged on this coordinator's own monotonic clock.

Facts the cluster knows (kubelet version, readiness) come from the Node; a member Lease only says
whether kupd there is alive and where its agent is. Every member Lease is decoded (and checked:
protocol.decode_member_lease) once per resourceVersion; an invalid one is a fact about its node,
never an exception here.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

from kupd import k8s, planner, untrusted
from kupd import protocol as p

# A member Lease's own duration, as its node wrote it, bounded: a node cannot make itself immortal.
MEMBER_DURATION_BOUNDS = (5, 600)


def _node_facts(node: dict[str, Any]) -> tuple[Any, ...]:
    md = node.get("metadata") or {}
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return (md.get("labels"), k8s.ready(node), info.get("kubeletVersion"))


def node_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a Node's change can change a plan: its labels, readiness or kubelet version (what a
    NodeView holds). Not the heartbeat times the kubelet rewrites every few minutes, nor a cordon:
    every turn cordons and uncordons its node, and a round for each (two of the ~six changes a turn
    makes) changed nothing; the 1 s tick still sees everything."""
    return old is None or _node_facts(old) != _node_facts(new)


class Liveness:
    """Nodes and member Leases, as the informers `nodes` and `leases` hold them, turned into the
    planner's views; `member_duration` is the longest lease a member is judged by.

    A round asks for the views of all N nodes, but builds only what changed since the last round
    (the informers' journals: `Informer.changes`) and the members whose liveness ran out meanwhile
    (a heap of deadlines): a member renewal every few seconds per node would otherwise cost an O(N)
    pass per round. After a relist everything is rebuilt. The views always equal those built from
    scratch (a property test of the unit tier checks it)."""

    def __init__(self, nodes: k8s.Informer, leases: k8s.Informer, member_duration: int) -> None:
        self.nodes = nodes
        self.leases = leases
        self.member_duration = member_duration
        # Decoded member Leases by resourceVersion (a Lease rebuilt for its Node's kubelet or its
        # deadline is not decoded again).
        self._decoded: dict[str, tuple[str, p.MemberLease]] = {}
        # The views, kept between rounds: Nodes (handed out by name: the order does not depend
        # on when the informer learnt of each), members by node, and the informer key of each
        # member's Lease.
        self._node_views: dict[str, planner.NodeView] = {}
        self._order: list[str] | None = None
        self._members: dict[str, planner.MemberView] = {}
        self._lease_keys: dict[str, str] = {}
        # (when it stops being alive, Lease key, resourceVersion) of each member alive when built.
        self._deadlines: list[tuple[float, str, str]] = []
        # Where this reader is in each informer's journal (-1: nothing read yet).
        self._node_seq = -1
        self._lease_seq = -1

    def kupd_version(self, node: str) -> str:
        """The kupd version `node`'s member Lease last claimed ("" when unknown)."""
        d = self._decoded.get(p.member_lease_name(node))
        return d[1].kupd_version if d else ""

    def views(self) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
        """The planner's inputs: every Node, and the member of every member Lease, alive or not."""
        mono = time.monotonic()
        node_seq, node_keys = self.nodes.changes(self._node_seq)
        lease_seq, lease_keys = self.leases.changes(self._lease_seq)
        self._node_seq = self._lease_seq = -1  # until applied: a round failing half-way rebuilds all
        if node_keys is None or lease_keys is None:
            self._rebuild(mono)
        else:
            self._update(node_keys, lease_keys, mono)
        self._node_seq, self._lease_seq = node_seq, lease_seq
        if self._order is None:
            self._order = sorted(self._node_views)
        return [self._node_views[n] for n in self._order], dict(self._members)

    def _rebuild(self, mono: float) -> None:
        self._node_views, self._order = {}, None
        for n in self.nodes.items():
            self._node_views[n["metadata"]["name"]] = self._node_view(n)
        self._members, self._lease_keys, self._deadlines = {}, {}, []
        present = set()
        for lease in self.leases.items():
            name = lease["metadata"]["name"]
            if name.startswith(p.MEMBER_LEASE_PREFIX):
                present.add(name)
                self._put_member(k8s.Informer.key(lease), lease, mono, changed=True)
        for name in [n for n in self._decoded if n not in present]:
            self._forget(name)

    def _update(self, node_keys: list[str], lease_keys: list[str], mono: float) -> None:
        # A member's view carries its Node's kubelet version: a change of it rebuilds the member.
        again: set[str] = set()
        for key in node_keys:
            obj = self.nodes.get(key)
            old = self._node_views.pop(key, None) if obj is None else self._node_views.get(key)
            view = self._node_view(obj) if obj is not None else None
            if view is not None:
                self._node_views[key] = view
            if (old is None) != (view is None):
                self._order = None  # a Node joined or left
            if (old.kubelet if old else None) != (view.kubelet if view else None):
                again.add(key)
        for key in lease_keys:
            name = key.rpartition("/")[2]
            if name.startswith(p.MEMBER_LEASE_PREFIX):
                again.discard(name[len(p.MEMBER_LEASE_PREFIX):])
                lease = self.leases.get(key)
                if lease is None:
                    self._forget(name)
                else:
                    self._put_member(key, lease, mono, changed=True)
        for node in again:
            member_key = self._lease_keys.get(node)
            lease = self.leases.get(member_key) if member_key else None
            if member_key is not None and lease is not None:
                self._put_member(member_key, lease, mono)
        # Members whose time ran out since they were built (an entry of an older version is stale).
        while self._deadlines and self._deadlines[0][0] <= mono:
            _, key, rv = heapq.heappop(self._deadlines)
            lease = self.leases.get(key)
            if lease is not None and str(lease["metadata"].get("resourceVersion", "")) == rv:
                self._put_member(key, lease, mono)

    def _node_view(self, n: dict[str, Any]) -> planner.NodeView:
        labels = n["metadata"].get("labels") or {}
        return planner.NodeView(n["metadata"]["name"], labels, p.LABEL_CONTROL_PLANE in labels, k8s.ready(n),
                                untrusted.node_kubelet(n))

    def _forget(self, name: str) -> None:
        self._decoded.pop(name, None)
        node = name[len(p.MEMBER_LEASE_PREFIX):]
        self._members.pop(node, None)
        self._lease_keys.pop(node, None)

    def _put_member(self, key: str, lease: dict[str, Any], mono: float, changed: bool = False) -> None:
        """(Re)build the view of a member Lease: `changed` when the journal (or a rebuild) says the
        Lease changed, so nothing cached under its resourceVersion is trusted (a Lease deleted and
        created again may come back with a resourceVersion seen before and other content)."""
        name = lease["metadata"]["name"]
        rv = str(lease["metadata"].get("resourceVersion", ""))
        if changed:
            self._decoded.pop(name, None)
        cached = self._decoded.get(name)
        if cached is None or cached[0] != rv or not rv:
            decoded = p.decode_member_lease(lease, self.member_duration)
            if decoded is None:
                self._forget(name)
                return
            cached = self._decoded[name] = (rv, decoded)
        m = cached[1]
        # Alive while this coordinator saw the Lease change within its duration, on its own
        # monotonic clock: renewTime is the node's clock and is never compared with anything.
        # The informer records when it first saw each version, even while an idle coordinator
        # runs no rounds; an idle member declares a long lease (it renews hourly), so during an
        # operation it is judged by the active duration at most: only a renewal since the
        # operation began (or within the last active duration) makes it eligible for a turn.
        observed = self.leases.observed_at(key)
        lo, hi = MEMBER_DURATION_BOUNDS
        deadline = (observed if observed is not None else mono) + min(
            max(m.duration, lo), hi, max(self.member_duration, lo))
        alive = mono < deadline
        if alive:
            heapq.heappush(self._deadlines, (deadline, key, rv))
        node = self._node_views.get(m.node)
        self._lease_keys[m.node] = key
        self._members[m.node] = planner.MemberView(m.node, alive, node.kubelet if node else None, m.report,
                                                   m.problem, facts=m.facts)
