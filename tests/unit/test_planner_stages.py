"""The planner's stages one by one: each a pure function of a Round (the inputs and the status
being built), tested apart from `plan`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kupd import planner
from kupd.api.models import parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.planner import MemberView, NodeView, Operation, Policy, Round
from kupd.protocol import Report
from kupd.versions import Version

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def rnd(spec: dict[str, Any] | ValidationError, nodes: list[NodeView], members: dict[str, MemberView],
        status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> Round:
    typed = spec if isinstance(spec, ValidationError) else parse_directupdate_spec(spec)
    return Round(Operation("op", "uid", 2, typed, status or {}, annotations or {}), nodes, members, 5, NOW,
                 dict(status or {}))


def policy(spec: dict[str, Any]) -> Policy:
    return Policy.of(parse_directupdate_spec(spec))


def members(version: str, *names: str) -> dict[str, MemberView]:
    return {n: MemberView(n, True, Version.parse(version)) for n in names}


NODES = [NodeView("w-2", {"pool": "a"}, False), NodeView("cp-1", {}, True), NodeView("w-1", {"pool": "b"}, False),
         NodeView("w-3", {"pool": "a"}, False)]


def test_validate_fails_an_invalid_spec_naming_the_field() -> None:
    r = rnd(ValidationError("spec.concurrency", "must be at most 100"), NODES, {})
    assert planner.validate(r) is None
    assert r.status["phase"] == "Failed" and "spec.concurrency" in r.status["message"]
    good = rnd({"version": "v1.32.0", "concurrency": 4}, NODES, {})
    p = planner.validate(good)
    assert p is not None and p.concurrency == 4 and p.backup_required and p.target == Version.parse("v1.32.0")


def test_select_orders_control_plane_canaries_rest() -> None:
    r = rnd({"version": "v1.32.0"}, NODES, {})
    sel = planner.select(r, policy({"version": "v1.32.0", "canary": {"selector": {"matchLabels": {"pool": "a"}}}}))
    assert [n.name for n in sel.nodes] == ["cp-1", "w-2", "w-3", "w-1"]
    assert sel.canaries == {"w-2", "w-3"}
    none = planner.select(r, policy({"version": "v1.32.0", "nodeSelector": {"matchLabels": {"pool": "z"}}}))
    assert none.nodes == [] and r.status["phase"] == "Pending"
    assert r.status["conditions"][-1]["reason"] == "NothingSelected"


def test_fix_hops_from_the_oldest_member_and_the_skew_rule() -> None:
    pol = policy({"version": "v1.33.1"})
    r = rnd({"version": "v1.33.1"}, NODES, members("v1.31.2", "cp-1", "w-1", "w-2", "w-3"))
    sel = planner.select(r, pol)
    hops = planner.fix_hops(r, pol, sel, {(1, 32): "v1.32.7"})
    assert [str(h) for h in hops or []] == ["v1.32.7", "v1.33.1"] and r.status["hops"] == ["v1.32.7", "v1.33.1"]
    workers_only = policy({"version": "v1.32.0", "nodeSelector": {"matchLabels": {"pool": "a"}}})
    r2 = rnd({"version": "v1.32.0"}, NODES, members("v1.31.2", "cp-1", "w-2", "w-3"))
    sel2 = planner.select(r2, workers_only)
    assert planner.fix_hops(r2, workers_only, sel2, {}) is None
    assert r2.status["phase"] == "Failed" and "kubelet-not-newer-than-apiserver" in r2.status["message"]


def test_retry_puts_a_failed_selected_node_back_in_line_once_per_token() -> None:
    failed = {"name": "w-1", "phase": "Failed", "grant": {"epoch": 1, "versions": ["v1.32.0"], "grantedAt": "t0"}}
    r = rnd({"version": "v1.32.0"}, NODES, {}, annotations={"kupd.io/retry-nodes": "w-1,w-9"})
    selection = planner.Selection(NODES, frozenset())
    entries = {"w-1": dict(failed, grant=dict(failed["grant"])),  # type: ignore[arg-type]
               "w-9": dict(failed, name="w-9", grant=dict(failed["grant"]))}  # type: ignore[arg-type]
    planner.retry(r, entries, selection)
    # Pending: the grant stage gives the turn within the limits. The kept grant is stamped now,
    # so the failed one still in the node's Lease is older and never adopted again.
    assert entries["w-1"]["phase"] == "Pending" and entries["w-1"]["grant"]["epoch"] == 5
    assert entries["w-1"]["grant"]["grantedAt"] == "2026-11-27T12:00:00Z"
    assert entries["w-9"]["phase"] == "Failed", "a node outside the selection is not retried"
    entries["w-1"]["phase"] = "Failed"
    planner.retry(r, entries, selection)
    assert entries["w-1"]["phase"] == "Failed", "the same token retries once"


def test_record_backup_only_from_the_node_granted_it() -> None:
    grant = {"epoch": 5, "versions": ["v1.32.0"], "firstControlPlane": True, "backup": True, "grantedAt": "t1"}
    entries = {"cp-1": {"name": "cp-1", "role": "ControlPlane", "phase": "Upgrading", "grant": grant},
               "w-1": {"name": "w-1", "role": "Worker", "phase": "Upgrading",
                       "grant": {**grant, "firstControlPlane": False}}}
    record = {"location": "file:///b/x.db", "verified": True}
    forged = {"w-1": MemberView("w-1", True, None, Report("op", "uid", 5, ["v1.32.0"], "Upgrading", backup=record,
                                                          granted_at="t1"))}
    r = rnd({"version": "v1.32.0"}, NODES, forged)
    planner.record_backup(r, entries)
    assert "backup" not in r.status
    honest = {"cp-1": MemberView("cp-1", True, None, Report("op", "uid", 5, ["v1.32.0"], "Upgrading", backup=record,
                                                            granted_at="t1"))}
    r = rnd({"version": "v1.32.0"}, NODES, honest)
    planner.record_backup(r, entries)
    assert r.status["backup"] == record and [e.reason for e in r.events] == ["BackupTaken"]


def test_conclude_success_failure_and_attention() -> None:
    pol = policy({"version": "v1.32.0"})
    r = rnd({"version": "v1.32.0"}, NODES, {})
    assert planner.conclude(r, pol, [{"name": "cp-1", "phase": "Succeeded"}, {"name": "w-1", "phase": "Skipped"}],
                            []) is None
    assert r.status["phase"] == "Succeeded"
    r = rnd({"version": "v1.32.0"}, NODES, {"cp-1": MemberView("cp-1", True, None)})
    lost = [{"name": "cp-1", "phase": "Lost", "message": "member lease expired"}, {"name": "w-1", "phase": "Pending"}]
    assert planner.conclude(r, pol, lost, []) == [("NodeLost", "cp-1", "node cp-1: member lease expired")]
    assert r.status["phase"] == "RequiresAttention" and r.status["progress"] == "0/2"
    r = rnd({"version": "v1.32.0"}, NODES, {})
    assert planner.conclude(r, pol, [{"name": "cp-1", "phase": "Failed", "step": "backup"}], []) is None
    assert r.status["phase"] == "Failed"


def test_gates_pause_and_health() -> None:
    r = rnd({"version": "v1.32.0"}, NODES, {})
    assert not planner.gates(r, policy({"version": "v1.32.0", "paused": True}), [], [], None)
    assert r.status["phase"] == "Paused"
    done = [{"name": "cp-1", "phase": "Succeeded", "finishedAt": "2026-11-27T11:59:30Z"}]
    gated = policy({"version": "v1.32.0", "healthGates": {"bakeSeconds": 60}})
    r = rnd({"version": "v1.32.0"}, NODES, {})
    assert not planner.gates(r, gated, done, [], None) and "baking 60s" in r.status["message"]
    r = rnd({"version": "v1.32.0"}, NODES, {})
    r.now = NOW + timedelta(seconds=60)
    assert planner.gates(r, gated, done, [], None)
    assert not planner.gates(r, gated, done, [], "prometheus query errors returned 2 series")


def test_grant_within_the_limits() -> None:
    pol = policy({"version": "v1.32.0", "concurrency": 2, "backup": {"required": True}})
    ms = members("v1.31.2", "cp-1", "w-1", "w-2", "w-3")
    r = rnd({"version": "v1.32.0"}, NODES, ms)
    roles = (("cp-1", "ControlPlane"), ("w-1", "Worker"), ("w-2", "Worker"), ("w-3", "Worker"))
    ordered: list[dict[str, Any]] = [{"name": n, "role": role, "phase": "Pending"} for n, role in roles]
    hops = [Version.parse("v1.32.0")]
    planner.grant(r, pol, ordered, [], hops, frozenset())
    assert [e["name"] for e in ordered if e["phase"] == "Granted"] == ["cp-1"]
    assert ordered[0]["grant"]["backup"] and ordered[0]["grant"]["firstControlPlane"]
    ordered[0]["phase"] = "Succeeded"
    planner.grant(r, pol, ordered, [], hops, frozenset())
    assert [e["name"] for e in ordered if e["phase"] == "Granted"] == [], "no worker past the API server"
    ms["cp-1"] = MemberView("cp-1", True, Version.parse("v1.32.0"))
    planner.grant(r, pol, ordered, [], hops, frozenset())
    assert [e["name"] for e in ordered if e["phase"] == "Granted"] == ["w-1", "w-2"]
