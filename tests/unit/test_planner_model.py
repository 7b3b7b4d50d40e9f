"""The planner against a model cluster, under random operator actions and faults (hypothesis'
stateful testing): every round is checked against the rollout invariants, and at the end, once
the faults are healed, the operation must finish on its own.

The coordinator is modelled as it runs (kupd/coordinator.py): plan, deliver the in-flight grants
to the nodes' grant Leases, then store the status (or have the write lost), then clear the grant
Leases of turns the stored status records as over. Agents work honestly on the grant their Lease
carries: Upgrading, then Succeeded with the Node's kubelet at the turn's last version. The
actions: spec edits (version raised or lowered, concurrency, nodeSelector, canaries, pause),
nodes joining and leaving, members dying and coming back, Nodes NotReady, an invalid member
Lease, a failed step and the operator's retry, lost status writes, coordinator changes, time.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kupd import planner
from kupd.api.models import DirectUpdateSpec, parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.protocol import ANN_RETRY_NODES, Grant, Report, TurnPhase
from kupd.rfc3339 import format_time
from kupd.versions import Version

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
UID = "uid-model"
FROM = "v1.31.2"
# Each intermediate minor's newest patch, as the coordinator resolves it from the package source.
RESOLVED = {(1, 32): "v1.32.4", (1, 33): "v1.33.3", (1, 34): "v1.34.1"}
TARGETS = ["v1.31.5", "v1.32.4", "v1.33.1", "v1.34.1"]
POOLS = ["a", "b"]


@dataclass
class ModelNode:
    name: str
    control_plane: bool
    pool: str
    kubelet: Version
    ready: bool = True
    member_alive: bool = True
    hostile: bool = False
    report: Report | None = None
    fail_next: bool = False
    lie_next: bool = False  # claims success without its kubelet moving (verify must catch it)


@dataclass
class Coordinator:
    epoch: int = 1
    grants: dict[str, Grant] = field(default_factory=dict)  # the grant Leases


def _in_flight(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in status.get("nodes") or [] if e["phase"] in planner.IN_FLIGHT]


class RolloutModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, ModelNode] = {}
        self.spec: dict[str, Any] = {}
        self.generation = 1
        self.status: dict[str, Any] = {}
        self.annotations: dict[str, str] = {}
        self.now = START
        self.coord = Coordinator()
        self.joined = 0
        self.rounds = 0

    # -- set-up ------------------------------------------------------------------------------
    @initialize(cps=st.integers(1, 3), workers=st.integers(0, 5), version=st.sampled_from(TARGETS),
                concurrency=st.integers(1, 3), canaries=st.integers(0, 2))
    def start(self, cps: int, workers: int, version: str, concurrency: int, canaries: int) -> None:
        for i in range(1, cps + 1):
            self._add(f"cp-{i}", True, "a")
        for i in range(1, workers + 1):
            self._add(f"w-{i}", False, POOLS[i % 2])
        self.spec = {"version": version, "concurrency": concurrency, "backup": {"required": False}}
        if canaries:
            self.spec["canary"] = {"count": canaries}
        self.round()

    def _add(self, name: str, control_plane: bool, pool: str, version: str = FROM) -> None:
        self.nodes[name] = ModelNode(name, control_plane, pool, Version.parse(version))

    # -- the coordinator, as it runs --------------------------------------------------------
    def typed(self) -> DirectUpdateSpec | ValidationError:
        try:
            return parse_directupdate_spec(self.spec)
        except ValidationError as e:
            return e

    def views(self) -> tuple[list[planner.NodeView], dict[str, planner.MemberView]]:
        nodes, members = [], {}
        for n in self.nodes.values():
            labels = {"pool": n.pool}
            if n.control_plane:
                labels["node-role.kubernetes.io/control-plane"] = ""
            nodes.append(planner.NodeView(n.name, labels, n.control_plane, n.ready, n.kubelet))
            problem = "report: must be a JSON object, got list" if n.hostile else None
            members[n.name] = planner.MemberView(n.name, n.member_alive, n.kubelet,
                                                 None if n.hostile else n.report, problem)
        return nodes, members

    def round(self, write_status: bool = True) -> None:
        spec = self.typed()
        before = copy.deepcopy(self.status)
        nodes, members = self.views()
        op = planner.Operation("op", UID, self.generation, spec, self.status, dict(self.annotations))
        out = planner.plan(op, nodes, members, epoch=self.coord.epoch, coordinator="cp-1", now=self.now,
                           resolved_minors=RESOLVED, delivered=dict(self.coord.grants))
        self.check_round(before, out.status)
        if isinstance(spec, DirectUpdateSpec):
            for e in _in_flight(out.status):
                if e.get("grant"):
                    self.coord.grants[e["name"]] = Grant.from_record("op", UID, e, spec)
        if write_status:
            self.status = out.status
        stored = {e["name"] for e in _in_flight(self.status)}
        for name in [n for n in self.coord.grants if n not in stored]:
            g = self.coord.grants[name]
            # The coordinator clears a turn's Lease once the stored status records it over.
            if name in {e["name"] for e in self.status.get("nodes") or []} or self._turn_over(name, g):
                del self.coord.grants[name]
        self.now += timedelta(seconds=5)
        self.rounds += 1

    def _turn_over(self, name: str, g: Grant) -> bool:
        n = self.nodes.get(name)
        _, members = self.views()
        return planner.turn_over(members.get(name), g) if n else False

    # -- agents ----------------------------------------------------------------------------
    def work(self) -> None:
        """Every live agent takes one step on the grant its Lease carries."""
        for name, g in list(self.coord.grants.items()):
            n = self.nodes.get(name)
            if n is None or not n.member_alive:
                continue
            rep = n.report
            if rep is None or rep.granted_at != g.granted_at or rep.uid != g.uid:
                n.report = Report("op", g.uid, g.epoch, g.versions, TurnPhase.UPGRADING, "drain",
                                  started_at=format_time(self.now), granted_at=g.granted_at)
            elif rep.phase == TurnPhase.UPGRADING:
                if n.lie_next:
                    n.lie_next = False
                    n.report = replace(rep, phase=TurnPhase.SUCCEEDED, step="uncordon",
                                       finished_at=format_time(self.now))
                elif n.fail_next:
                    n.fail_next = False
                    n.report = replace(rep, phase=TurnPhase.FAILED, step="kubelet-package", message="apt failed",
                                       reason="StepFailed", finished_at=format_time(self.now))
                else:
                    n.kubelet = Version.parse(g.versions[-1])
                    n.report = replace(rep, phase=TurnPhase.SUCCEEDED, step="uncordon",
                                       finished_at=format_time(self.now))

    # -- the invariants of every round ----------------------------------------------------
    def check_round(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        entries = after.get("nodes") or []
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"a node listed twice: {names}"
        flying = _in_flight(after)
        cps = [e for e in flying if e.get("role") == planner.CONTROL_PLANE]
        workers = [e for e in flying if e.get("role") != planner.CONTROL_PLANE]
        assert len(cps) <= 1, f"two control-plane turns out: {[e['name'] for e in cps]}"
        old = {e["name"]: (e.get("grant") or {}).get("grantedAt") for e in _in_flight(before)}
        fresh = [e for e in flying if e["phase"] == planner.GRANTED and e.get("grant")
                 and e["grant"]["grantedAt"] == format_time(self.now) and old.get(e["name"]) != format_time(self.now)
                 and not e.get("retryToken")]
        apiservers = [n.kubelet for n in self.nodes.values() if n.control_plane]
        for e in fresh:
            n = self.nodes[e["name"]]
            versions = [Version.parse(v) for v in e["grant"]["versions"]]
            assert versions, f"an empty turn for {n.name}"
            assert versions == sorted(versions) and n.kubelet < versions[0], (n.name, n.kubelet, versions)
            assert n.member_alive and n.ready and not n.hostile, f"{n.name} granted while not eligible"
            if n.control_plane:
                assert not workers, f"{n.name} (control plane) granted while workers fly: {workers}"
            else:
                assert not cps, f"{n.name} granted while control plane {cps[0]['name']} flies"
                conc = int(self.spec.get("concurrency", 1))
                assert len(workers) <= conc, f"{len(workers)} workers out with concurrency {conc}"
                assert versions[-1].minor_key <= min(apiservers).minor_key, \
                    f"{n.name}'s kubelet to {versions[-1]}, an API server is at {min(apiservers)}"
        phase = after.get("phase")
        if phase not in (planner.OP_SUCCEEDED, planner.OP_FAILED) and after.get("nodes") is not None:
            assert after.get("message"), f"phase {phase} without a message"
            conds = {c["type"]: c for c in after.get("conditions") or []}
            explained = (phase in (planner.OP_ATTENTION, planner.OP_PAUSED)
                         or (conds.get("Progressing") or {}).get("status") == "True"
                         or (conds.get("Progressing") or {}).get("reason"))
            assert explained, f"phase {phase}, nothing says why: {after.get('message')}"

    # -- rules: time and work ------------------------------------------------------------
    @rule(steps=st.integers(1, 4))
    def progress(self, steps: int) -> None:
        for _ in range(steps):
            self.work()
            self.round()

    @rule(seconds=st.integers(10, 400))
    def wait(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.round()

    # -- rules: operator's spec edits ----------------------------------------------------
    @rule(version=st.sampled_from(TARGETS))
    def edit_version(self, version: str) -> None:
        self.spec["version"] = version
        self.generation += 1
        self.round()

    @rule(concurrency=st.integers(1, 4))
    def edit_concurrency(self, concurrency: int) -> None:
        self.spec["concurrency"] = concurrency
        self.generation += 1
        self.round()

    @rule(selector=st.sampled_from([None, "a", "b", "cp"]))
    def edit_selector(self, selector: str | None) -> None:
        if selector is None:
            self.spec.pop("nodeSelector", None)
        elif selector == "cp":
            self.spec["nodeSelector"] = {"matchExpressions": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}
        else:
            self.spec["nodeSelector"] = {"matchLabels": {"pool": selector}}
        self.generation += 1
        self.round()

    @rule(paused=st.booleans())
    def edit_paused(self, paused: bool) -> None:
        self.spec["paused"] = paused
        self.generation += 1
        self.round()

    # -- rules: membership and faults ----------------------------------------------------
    @rule(control_plane=st.booleans(), pool=st.sampled_from(POOLS), upgraded=st.booleans())
    def join(self, control_plane: bool, pool: str, upgraded: bool) -> None:
        self.joined += 1
        name = f"{'cp' if control_plane else 'w'}-new{self.joined}"
        # A control-plane node joins at the cluster's version (kubeadm join installs the running
        # control plane's); a worker at the old version or at the control plane's.
        version = FROM
        if upgraded or control_plane:
            version = str(min(n.kubelet for n in self.nodes.values() if n.control_plane))
        self._add(name, control_plane, pool, version)
        self.round()

    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        names = sorted(n for n, m in self.nodes.items() if not m.control_plane or
                       sum(1 for x in self.nodes.values() if x.control_plane) > 1)
        if not names:
            return
        self.remove(data.draw(st.sampled_from(names)))

    def remove(self, name: str) -> None:
        del self.nodes[name]
        # The runbook for a node gone for good: delete its grant Lease.
        self.coord.grants.pop(name, None)
        self.round()

    @rule(data=st.data(), alive=st.booleans(), ready=st.booleans(), hostile=st.booleans())
    def fault(self, data: st.DataObject, alive: bool, ready: bool, hostile: bool) -> None:
        self.set_fault(data.draw(st.sampled_from(sorted(self.nodes))), alive, ready, hostile)

    def set_fault(self, name: str, alive: bool, ready: bool, hostile: bool) -> None:
        n = self.nodes[name]
        n.member_alive, n.ready, n.hostile = alive, ready, hostile
        self.round()

    @rule(data=st.data())
    def step_fails(self, data: st.DataObject) -> None:
        self.nodes[data.draw(st.sampled_from(sorted(self.nodes)))].fail_next = True

    @rule(data=st.data())
    def agent_lies(self, data: st.DataObject) -> None:
        self.nodes[data.draw(st.sampled_from(sorted(self.nodes)))].lie_next = True

    @rule(count=st.integers(0, 2), bake=st.sampled_from([0, 60, 600]))
    def edit_canary(self, count: int, bake: int) -> None:
        if count:
            self.spec["canary"] = {"count": count, "bakeSeconds": bake}
        else:
            self.spec.pop("canary", None)
        self.generation += 1
        self.round()

    @rule()
    def lost_status_write(self) -> None:
        self.work()
        self.round(write_status=False)

    @rule()
    def coordinator_changes(self) -> None:
        self.coord.epoch += 1
        self.round()

    @precondition(lambda self: any(e["phase"] == planner.FAILED for e in self.status.get("nodes") or []))
    @rule()
    def retry_failed(self) -> None:
        failed = [e["name"] for e in self.status["nodes"] if e["phase"] == planner.FAILED]
        self.annotations[ANN_RETRY_NODES] = f"{','.join(failed)}#{self.rounds}"
        self.round()

    @invariant()
    def never_downgrades(self) -> None:
        for n in self.nodes.values():
            assert n.kubelet >= Version.parse(FROM)

    # -- the end: heal everything and the operation finishes on its own ----------------------
    def teardown(self) -> None:
        if not self.spec:
            return
        for n in self.nodes.values():
            n.member_alive, n.ready, n.hostile, n.fail_next, n.lie_next = True, True, False, False, False
        self.spec["paused"] = False
        self.generation += 1
        for _ in range(400):
            if self.status.get("phase") in (planner.OP_SUCCEEDED, planner.OP_FAILED):
                break
            failed = [e["name"] for e in self.status.get("nodes") or [] if e["phase"] == planner.FAILED]
            if failed:
                self.annotations[ANN_RETRY_NODES] = f"{','.join(failed)}#{self.rounds}"
            self.work()
            self.round()
        phase = self.status.get("phase")
        conds = {c["type"]: c for c in self.status.get("conditions") or []}
        if phase == planner.OP_PENDING and conds["Progressing"]["reason"] == "NothingSelected":
            assert not _in_flight(self.status), "a turn out is still followed when nothing is selected"
            return
        if phase == planner.OP_ATTENTION and conds["RequiresAttention"]["reason"] == "VersionSkew":
            # A skew no turn of this operation can fix (an unselected control-plane node left
            # behind): the operator must act, and the operation says which node.
            assert "select " in self.status["message"], self.status["message"]
            return
        assert phase in (planner.OP_SUCCEEDED, planner.OP_FAILED), \
            f"healed, yet stuck in {phase}: {self.status.get('message')}"
        if phase == planner.OP_FAILED:
            # Only what no turn can fix ends the operation: a lowered version, a skew it cannot pass.
            assert conds["Progressing"]["reason"] in ("VersionLowered", "VersionSkew", "InvalidSpec"), \
                self.status["message"]
            return
        target = Version.parse(self.spec["version"])
        if target > Version.parse(self.status["nodes"][0].get("toVersion") or str(target)) \
                or "SpecApplied" in conds:
            # Edited after it had ended: said so, not acted on.
            assert conds["SpecApplied"]["status"] == "False", self.status
            return
        for e in self.status["nodes"]:
            if e["phase"] in (planner.SUCCEEDED, planner.SKIPPED) and e["name"] in self.nodes:
                kubelet = self.nodes[e["name"]].kubelet
                assert kubelet >= target, f"{e['name']} reported done at {kubelet}"


RolloutModel.TestCase.settings = settings(
    # KUPD_MODEL_EXAMPLES=2000 for a longer search than CI's.
    max_examples=int(os.environ.get("KUPD_MODEL_EXAMPLES", "150")), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_rollout_model = RolloutModel.TestCase
