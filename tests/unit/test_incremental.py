"""Incremental planning (kupd/incremental.py) gives what a full `planner.plan` gives.

Property (hypothesis): over random sequences of changes to a small cluster (members reporting,
finishing, failing, dying, coming back, upgraded by hand; nodes joining, leaving, relabelled,
not Ready; the spec raised, paused, re-canaried; retries; a new epoch; the clock moving; the
status read back from the API server or lagging behind the delivered grants), every round of a
memo kept across the rounds returns exactly the status and the Events of a full re-plan. And a
round evaluates the per-node rules only for what changed and the turns out, not for every node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kupd import hazards, planner
from kupd.api.models import parse_directupdate_spec
from kupd.incremental import Incremental
from kupd.planner import MemberView, NodeView, Operation
from kupd.protocol import LABEL_CONTROL_PLANE, STEPS, Grant, Report
from kupd.versions import Version

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OLD = "v1.31.2"
VERSIONS = ["v1.31.2", "v1.32.0", "v1.32.5", "v1.33.2"]
RESOLVED = {(1, 32): "v1.32.5", (1, 33): "v1.33.2"}
NAMES = ["cp-1", "cp-2"] + [f"w-{i}" for i in range(10)]
KINDS = ["tick", "progress", "finish", "fail", "alive", "kubelet", "problem", "member", "node", "label", "ready",
         "spec", "retry", "epoch", "facts", "stored", "lag", "elsewhere", "quiet"]


@dataclass
class World:
    """A cluster and an operation, as the coordinator would see them round after round."""

    nodes: dict[str, NodeView] = field(default_factory=dict)
    members: dict[str, MemberView] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=lambda: {"version": "v1.32.0", "concurrency": 2,
                                                          "backup": {"required": False}})
    generation: int = 1
    annotations: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    delivered: dict[str, Grant] = field(default_factory=dict)
    epoch: int = 1
    now: datetime = T0
    retries: int = 0

    @classmethod
    def start(cls) -> World:
        w = cls()
        for name in NAMES[:10]:
            w.nodes[name] = node(name, OLD)
            w.members[name] = MemberView(name, True, Version.parse(OLD))
        return w

    def typed_spec(self) -> Any:
        return parse_directupdate_spec(self.spec)

    def op(self) -> Operation:
        return Operation("op", "uid-1", self.generation, self.typed_spec(), self.status, dict(self.annotations))

    def in_flight(self) -> list[dict[str, Any]]:
        return [e for e in self.status.get("nodes") or [] if e["phase"] in planner.IN_FLIGHT and e.get("grant")]

    def kubelet(self, name: str, version: Version) -> None:
        if name in self.nodes:
            self.nodes[name] = replace(self.nodes[name], kubelet=version)
        if name in self.members:
            self.members[name] = replace(self.members[name], kubelet=version)

    def report(self, e: dict[str, Any], phase: str, **kw: Any) -> None:
        m = self.members.get(e["name"])
        if m is None:
            return
        g = e["grant"]
        self.members[e["name"]] = replace(m, report=Report("op", "uid-1", self.epoch, list(g["versions"]), phase,
                                                           granted_at=g["grantedAt"], **kw))


def node(name: str, version: str, pool: str = "a", ready: bool = True) -> NodeView:
    labels = {"pool": pool, **({LABEL_CONTROL_PLANE: ""} if name.startswith("cp-") else {})}
    return NodeView(name, labels, name.startswith("cp-"), ready, Version.parse(version))


def change(w: World, kind: str, i: int, j: int) -> None:
    """One change to the world, picked by `kind` and shaped by two small numbers."""
    name = NAMES[i % len(NAMES)]
    flying = w.in_flight()
    e = flying[i % len(flying)] if flying else None
    if kind == "tick":
        w.now += timedelta(seconds=1 + 7 * j)
    elif kind == "progress" and e is not None:
        reason = ["", "DrainBlocked", "Waiting", "DeadlineExceeded"][j % 4]
        w.report(e, "Upgrading", step=str(STEPS[j % len(STEPS)]), message=f"step {j}", reason=reason,
                 started_at="2026-12-01T12:00:00Z")
    elif kind == "finish" and e is not None:
        backup = {"verified": True, "location": "s3://b/x"} if (e["grant"].get("backup") and j % 4) else {}
        w.report(e, "Succeeded", step="uncordon", finished_at=w.now.strftime("%Y-%m-%dT%H:%M:%SZ"), backup=backup,
                 started_at="2026-12-01T12:00:00Z")
        if j % 3:
            w.kubelet(e["name"], Version.parse(e["grant"]["versions"][-1]))
    elif kind == "fail" and e is not None:
        step = "backup" if j % 5 == 0 else str(STEPS[j % len(STEPS)])
        w.report(e, "Failed", step=step, reason=["StepFailed", "DrainRefused", "DrainTimedOut"][j % 3],
                 message="it broke", finished_at=w.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    elif kind == "alive" and name in w.members:
        w.members[name] = replace(w.members[name], alive=not w.members[name].alive)
    elif kind == "kubelet":
        w.kubelet(name, Version.parse(VERSIONS[j % len(VERSIONS)]))
    elif kind == "problem" and name in w.members:
        m = w.members[name]
        w.members[name] = replace(m, problem=None if m.problem else f"invalid report, field {j}")
    elif kind == "member":
        if name in w.members:
            del w.members[name]
        else:
            n = w.nodes.get(name)
            w.members[name] = MemberView(name, True, n.kubelet if n else Version.parse(OLD))
    elif kind == "node":
        if name in w.nodes:
            del w.nodes[name]
        else:
            m = w.members.get(name)
            w.nodes[name] = node(name, str(m.kubelet) if m and m.kubelet else OLD)
    elif kind == "label" and name in w.nodes:
        n = w.nodes[name]
        w.nodes[name] = replace(n, labels={**n.labels, "pool": "b" if n.labels.get("pool") == "a" else "a"})
    elif kind == "ready" and name in w.nodes:
        w.nodes[name] = replace(w.nodes[name], ready=not w.nodes[name].ready)
    elif kind == "spec":
        w.generation += 1
        what = j % 6
        if what == 0:
            w.spec["concurrency"] = 1 + i % 3
        elif what == 1:
            w.spec["paused"] = not w.spec.get("paused", False)
        elif what == 2:
            w.spec["canary"] = {"count": i % 3}
        elif what == 3:
            w.spec["canary"] = {"selector": {"matchLabels": {"pool": "b"}}, "bakeSeconds": 5 * (i % 3)}
        elif what == 4:
            w.spec["version"] = "v1.33.2"
        else:
            w.spec["nodeSelector"] = {"matchLabels": {"pool": "a"}} if "nodeSelector" not in w.spec else None
            if w.spec["nodeSelector"] is None:
                del w.spec["nodeSelector"]
    elif kind == "retry":
        failed = [x["name"] for x in w.status.get("nodes") or [] if x["phase"] == planner.FAILED]
        w.retries += 1
        w.annotations["kupd.io/retry-nodes"] = ",".join(failed[: 1 + j % 2] or [name]) + f"#{w.retries}"
    elif kind == "epoch":
        w.epoch += 1
    elif kind == "facts" and name in w.members:
        m = w.members[name]
        w.members[name] = replace(m, facts=None if m.facts else hazards.NodeFacts(swap_on=True))
    elif kind == "stored":
        # The status as the API server returns it: plain JSON (the coordinator then plans from it).
        w.status = json.loads(json.dumps(w.status))
    elif kind == "lag" and w.history:
        # A status written some rounds earlier, the grants since in their Leases only (the status
        # writer lags; a new coordinator plans from what is stored).
        w.status = w.history[-1 - j % len(w.history)]
    elif kind == "elsewhere":
        if name in w.delivered and w.delivered[name].uid == "uid-2":
            del w.delivered[name]
        else:
            work = w.typed_spec().node_work(["v1.32.0"], control_plane=name.startswith("cp-"),
                                            first_control_plane=False, backup=False)
            w.delivered[name] = Grant("other", "uid-2", 1, "2026-12-01T11:00:00Z", work)


def round_both(w: World, memo: Incremental) -> planner.Plan:
    """One round, planned in full and incrementally from the same inputs: they must agree."""
    nodes = list(w.nodes.values())
    kw: dict[str, Any] = dict(epoch=w.epoch, coordinator="cp-1", now=w.now, resolved_minors=RESOLVED,
                              delivered=dict(w.delivered))
    full = planner.plan(w.op(), nodes, dict(w.members), **kw)
    inc = memo.plan(w.op(), nodes, dict(w.members), **kw)
    assert inc.status == full.status
    assert inc.events == full.events
    return full


def deliver(w: World, result: planner.Plan) -> None:
    """What the coordinator does with a plan: delivers its grants, plans the next round from it."""
    w.history = [*w.history[-5:], w.status]
    w.status = result.status
    ours = {e["name"] for e in w.in_flight()}
    for name in [n for n, g in w.delivered.items() if g.uid == "uid-1" and n not in ours]:
        del w.delivered[name]
    for e in w.in_flight():
        w.delivered[e["name"]] = Grant.from_record("op", "uid-1", e, w.typed_spec())


# Turns that end and statuses that lag are where a memo could go wrong: drawn more often.
steps = st.lists(st.tuples(st.sampled_from([*KINDS, "progress", "finish", "finish", "lag", "quiet"]),
                           st.integers(0, 11), st.integers(0, 11)), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
# A whole rollout, to its end.
@example([("finish", 0, 1), ("quiet", 0, 0)] * 12)
# A stored status older than the entries the memo knows: a node done since is in a turn again there.
@example([("finish", 0, 1), ("quiet", 0, 0), ("quiet", 0, 0), ("lag", 0, 2)])
# A stored status older than a grant just delivered: the node is Pending there and adopts it.
@example([("finish", 0, 1), ("lag", 0, 0)])
def test_incremental_equals_a_full_replan_over_any_sequence_of_changes(changes: list[tuple[str, int, int]]) -> None:
    w = World.start()
    memo = Incremental()
    deliver(w, round_both(w, memo))
    for kind, i, j in changes:
        if kind != "quiet":
            change(w, kind, i, j)
        deliver(w, round_both(w, memo))
        if w.status.get("phase") in planner.TERMINAL_OP and i % 2:
            # Start over on the same memo: a new operation (its uid is the same here, its status empty).
            w.status, w.history = {}, []


def test_a_round_evaluates_only_what_changed() -> None:
    """1000 nodes mid-rollout: one turn ends, and the rules run for that node and the turns out,
    not for the 1000."""
    names = ["cp-1"] + [f"w-{i:04d}" for i in range(1, 1000)]
    nodes = [node(n, OLD) for n in names]
    members = {n: MemberView(n, True, Version.parse(OLD)) for n in names}
    spec = parse_directupdate_spec({"version": "v1.32.0", "concurrency": 10, "backup": {"required": False}})
    memo = Incremental()
    status: dict[str, Any] = {}
    for _ in range(3):
        status = memo.plan(Operation("op", "uid-1", 1, spec, status), nodes, members, epoch=1, coordinator="cp-1",
                           now=T0).status
    cp = next(e for e in status["nodes"] if e["name"] == "cp-1")
    members["cp-1"] = replace(members["cp-1"], kubelet=Version.parse("v1.32.0"),
                              report=Report("op", "uid-1", 1, cp["grant"]["versions"], "Succeeded",
                                            granted_at=cp["grant"]["grantedAt"], finished_at="2026-12-01T12:00:07Z"))
    for _ in range(3):
        result = memo.plan(Operation("op", "uid-1", 1, spec, status), nodes, members, epoch=1, coordinator="cp-1",
                           now=T0)
        full = planner.plan(Operation("op", "uid-1", 1, spec, status), nodes, members, epoch=1, coordinator="cp-1",
                            now=T0)
        assert result == full
        status = result.status
    assert sum(1 for e in status["nodes"] if e["phase"] in planner.IN_FLIGHT) == 10
    # Steady: the 10 turns out (always evaluated) and nothing else.
    assert memo.evaluated == 10, memo.evaluated
    done = next(e for e in status["nodes"] if e["phase"] in planner.IN_FLIGHT)
    members[done["name"]] = replace(members[done["name"]], kubelet=Version.parse("v1.32.0"), report=Report(
        "op", "uid-1", 1, done["grant"]["versions"], "Succeeded", granted_at=done["grant"]["grantedAt"],
        finished_at="2026-12-01T12:00:14Z"))
    result = memo.plan(Operation("op", "uid-1", 1, spec, status), nodes, members, epoch=1, coordinator="cp-1", now=T0)
    assert result == planner.plan(Operation("op", "uid-1", 1, spec, status), nodes, members, epoch=1,
                                  coordinator="cp-1", now=T0)
    assert memo.evaluated <= 11, memo.evaluated
