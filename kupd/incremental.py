"""Incremental planning: `planner.plan`'s own rules, with the per-node rules run only for the
nodes where something changed.

A coordinator round re-plans on every turn that starts or ends; most of the N entries are the
same as the round before (Pending nodes waiting, Succeeded nodes done). The per-node rules
(adopt, retry, the backup record, observe, compact) are a pure function F of a node's entry and
of that node's inputs: whether it is selected and a canary, its NodeView and MemberView, and
the round's operation uid, target and epoch. When F left an entry exactly as it was and said
nothing (a fixed point), and next round the entry and those inputs are equal again, F would
leave it again: the rules can be skipped for it. Nodes whose rules read more than that (a turn
out reads the clock and its grant; a delivered grant; a node an operator asked to retry) are
always evaluated. The global stages (conclusion, gates, preflight, grants, progress) run over
every entry as before: they are cheap passes over lists.

So a round evaluates the rules for what changed, plus the turns out; what is left in N is an
equality check and a copy per entry. Nothing here decides anything: `plan` gives the same result
with or without this memo (the unit test test_incremental checks that over random sequences of
changes).
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from datetime import datetime
from typing import Any

from kupd import hazards, planner, preflight
from kupd.planner import IN_FLIGHT, MemberView, NodeView, Operation, Plan, Policy, Round, Selection
from kupd.protocol import Grant
from kupd.versions import Version

# A node's inputs to the per-node rules: (selected, canary, its NodeView if selected, its MemberView).
_Context = tuple[bool, bool, NodeView | None, MemberView | None]


class Incremental:
    """A planner memo for one coordinator, reused across its rounds (planner.Memo). Not
    thread-safe: one round at a time, as the coordinator runs them."""

    def __init__(self) -> None:
        # (operation uid, target, epoch): what every node's rules read; a change forgets everything.
        self._key: tuple[str, Version, int] | None = None
        # node -> (its inputs, its entry): F left that entry as it was, with those inputs.
        self._fixed: dict[str, tuple[_Context, dict[str, Any]]] = {}
        # This round's evaluated nodes: their inputs and their entry before the rules ran.
        self._before: dict[str, tuple[_Context, dict[str, Any]]] = {}
        self._events_before = 0
        # The last selection: what it was made from, and where its nodes were in the list given.
        self._selection: tuple[tuple[Any, ...], list[tuple[str, bool, Mapping[str, str]]], list[int],
                               frozenset[str]] | None = None
        self.evaluated = 0
        """Nodes whose per-node rules ran in the last round (the rest were skipped)."""

    def plan(self, op: Operation, nodes: Sequence[NodeView], members: Mapping[str, MemberView], *,
             epoch: int, coordinator: str, now: datetime,
             resolved_minors: Mapping[tuple[int, int], str] | None = None,
             gate_failure: str | None = None, delivered: Mapping[str, Grant] | None = None,
             hop_errors: Mapping[tuple[int, int], str] | None = None,
             preflight_facts: preflight.ClusterFacts | None = None,
             deprecated_apis: Sequence[hazards.DeprecatedApi] | None = None) -> Plan:
        """`planner.plan` with this memo: the same arguments, the same result."""
        return planner.plan(op, nodes, members, epoch=epoch, coordinator=coordinator, now=now,
                            resolved_minors=resolved_minors, gate_failure=gate_failure, delivered=delivered,
                            hop_errors=hop_errors, preflight_facts=preflight_facts,
                            deprecated_apis=deprecated_apis, memo=self)

    # -- planner.Memo ----------------------------------------------------------------------------
    def select(self, r: Round, policy: Policy) -> Selection:
        # `select` reads each node's name, role and labels, in the order given, and the policy's
        # selectors: with those the same, its order is the same; the views are this round's.
        key = (repr(policy.node_selector), repr(policy.canary_selector), policy.canary_count)
        facts = [(n.name, n.control_plane, n.labels) for n in r.nodes]
        if self._selection is not None and self._selection[0] == key and self._selection[1] == facts:
            positions, canaries = self._selection[2], self._selection[3]
            return Selection([r.nodes[i] for i in positions], canaries)
        selection = planner.select(r, policy)
        if not selection.nodes:
            self._selection = None  # `select` also said so in the status: it runs every round then
            return selection
        index = {id(n): i for i, n in enumerate(r.nodes)}
        self._selection = (key, facts, [index[id(n)] for n in selection.nodes], selection.canaries)
        return selection

    def clean(self, r: Round, policy: Policy, selection: Selection) -> Container[str]:
        key = (r.op.uid, policy.target, r.epoch)
        if key != self._key:
            self._fixed.clear()
            self._key = key
        selected = {n.name: n for n in selection.nodes}
        retried = planner.retry_names(r.op)
        self._before = {}
        self._events_before = len(r.events)
        clean: set[str] = set()
        seen: set[str] = set()
        twice: set[str] = set()
        for e in r.status.get("nodes") or []:
            name = e.get("name") if isinstance(e, dict) else None
            if not isinstance(name, str):
                continue  # not an entry the rules expect: they say so (or raise), as without this memo
            if name in seen:
                twice.add(name)  # the rules keep the last entry of a name: let them see to it
                continue
            seen.add(name)
            ctx: _Context = (name in selected, name in selection.canaries, selected.get(name), r.members.get(name))
            known = self._fixed.get(name)
            if (known is not None and known[0] == ctx and known[1] == e
                    and name not in retried and name not in r.delivered):
                clean.add(name)
            else:
                self._before[name] = (ctx, planner.copy_json(e))
        for name in twice:
            clean.discard(name)
            self._before.pop(name, None)
            self._fixed.pop(name, None)
        return clean

    def record(self, r: Round, entries: Mapping[str, Mapping[str, Any]]) -> None:
        said = {ev.node for ev in r.events[self._events_before:]}
        for name, (ctx, before) in self._before.items():
            e = entries.get(name)
            if (e is not None and name not in said and e == before and e.get("phase") not in IN_FLIGHT
                    and "grant" not in e):
                self._fixed[name] = (ctx, before)
            else:
                self._fixed.pop(name, None)
        self.evaluated = len(self._before) + sum(1 for name in entries if name not in self._before
                                                 and name not in r.clean)
        if len(self._fixed) > 2 * len(entries) + 16:
            # Nodes that left the status: forget them.
            self._fixed = {n: v for n, v in self._fixed.items() if n in entries}
        self._before = {}
