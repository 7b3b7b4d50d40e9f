"""The planner's rollout rules as tables: pure inputs in, status and events out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kupd import dryrun, planner, selectors
from kupd.api.models import DirectUpdateSpec, parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.planner import MemberView, NodeView, Operation, plan
from kupd.protocol import Grant, Report
from kupd.versions import Version

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
UID = "uid-1"


def cluster(cps: int, workers: int, version: str = "v1.31.2", labels: dict[str, dict[str, str]] | None = None
            ) -> tuple[list[NodeView], dict[str, MemberView]]:
    names = [(f"cp-{i}", True) for i in range(1, cps + 1)] + [(f"w-{i}", False) for i in range(1, workers + 1)]
    nodes = [NodeView(n, (labels or {}).get(n, {}), cp) for n, cp in names]
    members = {n: MemberView(n, True, Version.parse(version)) for n, _ in names}
    return nodes, members


def typed(spec: dict[str, Any]) -> DirectUpdateSpec | ValidationError:
    """The spec as the coordinator hands it to the planner: parsed by kupd.api.models, or the error."""
    try:
        return parse_directupdate_spec(spec)
    except ValidationError as e:
        return e


def run(spec: dict[str, Any], nodes: list[NodeView], members: dict[str, MemberView],
        status: dict[str, Any] | None = None, now: datetime = NOW, annotations: dict[str, str] | None = None,
        **kw: Any) -> planner.Plan:
    op = Operation("op", UID, 1, typed(spec), status or {}, annotations or {})
    return plan(op, nodes, members, epoch=3, coordinator="cp-1", now=now, **kw)


def granted(p: planner.Plan) -> list[str]:
    return [e["name"] for e in p.status["nodes"] if e["phase"] in planner.IN_FLIGHT]


def finish(members: dict[str, MemberView], name: str, version: str, p: planner.Plan) -> None:
    grant = next(e for e in p.status["nodes"] if e["name"] == name)["grant"]
    members[name] = MemberView(name, True, Version.parse(version),
                               Report("op", UID, 3, grant["versions"], "Succeeded", "uncordon"))


NO_BACKUP = {"required": False}


def test_first_grant_is_the_first_control_plane_with_backup_and_apply() -> None:
    nodes, members = cluster(2, 3)
    p = run({"version": "v1.32.0", "backup": {"required": True}}, nodes, members)
    assert granted(p) == ["cp-1"]
    g = p.status["nodes"][0]["grant"]
    assert g == {"epoch": 3, "versions": ["v1.32.0"], "firstControlPlane": True, "backup": True,
                 "grantedAt": "2026-11-27T12:00:00Z"}
    assert p.status["phase"] == "Running" and p.status["hops"] == ["v1.32.0"]
    assert any(e.reason == "NodeGranted" for e in p.events)


def test_one_control_plane_at_a_time_then_workers_by_concurrency() -> None:
    nodes, members = cluster(2, 5)
    spec = {"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    assert granted(p) == ["cp-1"]
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["cp-1"], "no second grant while cp-1 works"
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["cp-2"]
    assert p.status["nodes"][1]["grant"]["firstControlPlane"] is False
    finish(members, "cp-2", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["w-1", "w-2"]
    finish(members, "w-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["w-2", "w-3"]
    assert p.status["summary"]["succeeded"] == 3


@pytest.mark.parametrize("canary", [{"count": 2}, {"selector": {"matchLabels": {"canary": "yes"}}}])
def test_canaries_first_then_bake(canary: dict[str, Any]) -> None:
    labels = {"w-3": {"canary": "yes"}, "w-4": {"canary": "yes"}} if "selector" in canary else {}
    nodes, members = cluster(1, 4, labels=labels)
    spec = {"version": "v1.31.3", "concurrency": 4, "backup": NO_BACKUP, "canary": {**canary, "bakeSeconds": 60}}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.31.3", p)
    p = run(spec, nodes, members, p.status)
    want = ["w-3", "w-4"] if "selector" in canary else ["w-1", "w-2"]
    assert sorted(granted(p)) == want
    for n in want:
        finish(members, n, "v1.31.3", p)
    p = run(spec, nodes, members, p.status, now=NOW + timedelta(seconds=10))
    assert granted(p) == [], "baking"
    assert "baking" in p.status["message"]
    p = run(spec, nodes, members, p.status, now=NOW + timedelta(seconds=120))
    assert len(granted(p)) == 2


def test_node_selector_and_skipped_nodes() -> None:
    nodes, members = cluster(1, 3, labels={"cp-1": {"pool": "a"}, "w-1": {"pool": "a"}, "w-2": {"pool": "a"}})
    members["w-2"] = MemberView("w-2", True, Version.parse("v1.32.0"))
    p = run({"version": "v1.32.0", "backup": NO_BACKUP, "nodeSelector": {"matchLabels": {"pool": "a"}}},
            nodes, members)
    names = {e["name"]: e["phase"] for e in p.status["nodes"]}
    assert names == {"cp-1": "Granted", "w-1": "Pending", "w-2": "Skipped"}


def test_lost_node_holds_its_slot_and_asks_for_attention() -> None:
    nodes, members = cluster(1, 3)
    spec = {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["w-1"]
    members["w-1"] = MemberView("w-1", False, Version.parse("v1.31.2"))
    p = run(spec, nodes, members, p.status)
    assert p.status["phase"] == "RequiresAttention"
    assert next(e for e in p.status["nodes"] if e["name"] == "w-1")["phase"] == "Lost"
    assert granted(p) == ["w-1"], "no replacement grant beyond the limit"
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.31.2"))
    p = run(spec, nodes, members, p.status)
    assert p.status["phase"] == "Running"


def test_failed_node_stops_all_grants() -> None:
    nodes, members = cluster(1, 3)
    spec = {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.31.2"),
                                Report("op", UID, 3, ["v1.32.0"], "Failed", "drain", 3, message="timed out"))
    p = run(spec, nodes, members, p.status)
    assert p.status["phase"] == "RequiresAttention"
    assert "w-1" in p.status["message"]
    assert granted(p) == []


def test_failed_backup_fails_the_operation() -> None:
    nodes, members = cluster(1, 1)
    spec = {"version": "v1.32.0"}
    p = run(spec, nodes, members)
    members["cp-1"] = MemberView("cp-1", True, Version.parse("v1.31.2"),
                                 Report("op", UID, 3, ["v1.32.0"], "Failed", "backup", 3, message="etcd down"))
    p = run(spec, nodes, members, p.status)
    assert p.status["phase"] == "Failed"
    assert "backup failed on cp-1" in p.status["message"]


@pytest.mark.parametrize(("current", "target", "resolved", "hops"), [
    ("v1.31.2", "v1.31.5", {}, ["v1.31.5"]),
    ("v1.31.2", "v1.32.0", {}, ["v1.32.0"]),
    ("v1.30.1", "v1.33.2", {(1, 31): "v1.31.14", (1, 32): "v1.32.9"}, ["v1.31.14", "v1.32.9", "v1.33.2"]),
])
def test_hops(current: str, target: str, resolved: dict[tuple[int, int], str], hops: list[str]) -> None:
    assert planner.hops_for(Version.parse(current), Version.parse(target), resolved) == hops


def test_downgrade_is_refused_with_the_rule_named() -> None:
    nodes, members = cluster(1, 1, version="v1.32.0")
    p = run({"version": "v1.31.9", "backup": NO_BACKUP}, nodes, members)
    assert p.status["phase"] == "Failed"
    assert "no-downgrade" in p.status["message"]


def test_workers_only_cannot_pass_the_control_plane() -> None:
    nodes, members = cluster(1, 2, labels={"w-1": {"pool": "a"}, "w-2": {"pool": "a"}})
    p = run({"version": "v1.32.0", "backup": NO_BACKUP, "nodeSelector": {"matchLabels": {"pool": "a"}}},
            nodes, members)
    assert p.status["phase"] == "Failed"
    assert "kubelet-not-newer-than-apiserver" in p.status["message"]


def test_invalid_spec_condition_names_the_field() -> None:
    nodes, members = cluster(1, 1)
    p = run({"version": "v1.32.0", "drain": {"timeoutSeconds": 10}}, nodes, members)
    cond = next(c for c in p.status["conditions"] if c["type"] == "Valid")
    assert cond["status"] == "False" and "spec.drain.timeoutSeconds" in cond["message"]


def test_paused_and_window() -> None:
    nodes, members = cluster(1, 1)
    p = run({"version": "v1.32.0", "paused": True, "backup": NO_BACKUP}, nodes, members)
    assert p.status["phase"] == "Paused" and granted(p) == []
    ann = {"kupd.io/window-start": "2026-11-27T13:00:00Z", "kupd.io/window-end": "2026-11-27T15:00:00Z"}
    p = run({"version": "v1.32.0", "backup": NO_BACKUP}, nodes, members, annotations=ann)
    assert p.status["phase"] == "Paused" and granted(p) == []
    p = run({"version": "v1.32.0", "backup": NO_BACKUP}, nodes, members, annotations=ann,
            now=NOW + timedelta(hours=1, minutes=5))
    assert granted(p) == ["cp-1"]


@pytest.mark.parametrize("ann", [{"kupd.io/window-start": "not-a-time"},
                                 {"kupd.io/window-end": "9999-12-31T23:59:59-01:00"},
                                 {"kupd.io/window-start": "2026-11-27T13:00:00"},
                                 {"kupd.io/window-start": "2026-11-27T15:00:00Z",
                                  "kupd.io/window-end": "2026-11-27T13:00:00Z"}])
def test_a_malformed_window_is_a_condition_and_holds_grants(ann: dict[str, str]) -> None:
    nodes, members = cluster(1, 1)
    p = run({"version": "v1.32.0", "backup": NO_BACKUP}, nodes, members, annotations=ann)
    assert granted(p) == [] and p.status["phase"] == "Paused"
    cond = next(c for c in p.status["conditions"] if c["type"] == "Progressing")
    assert cond["reason"] == "InvalidWindow"
    assert next(iter(ann)) in cond["message"] or "window-end" in cond["message"]
    assert [e.reason for e in p.events] == ["InvalidWindow"] and p.events[0].warning
    again = run({"version": "v1.32.0", "backup": NO_BACKUP}, nodes, members, status=p.status, annotations=ann)
    assert again.events == []  # said once, not every round


def test_done_when_every_node_is_at_the_target() -> None:
    nodes, members = cluster(1, 1)
    spec = {"version": "v1.32.0", "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    finish(members, "w-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert p.status["phase"] == "Succeeded" and p.status["progress"] == "2/2"
    again = run(spec, nodes, members, p.status)
    assert again.status == p.status and again.events == [], "a finished operation is left alone"


@pytest.mark.parametrize(("selector", "labels", "want"), [
    (None, {}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
])
def test_selector(selector: dict[str, Any] | None, labels: dict[str, str], want: bool) -> None:
    assert selectors.matches(selector, labels) is want


def test_dry_run_waves_and_estimate() -> None:
    nodes, members = cluster(2, 5)
    spec = parse_directupdate_spec({"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP})
    status, waves = dryrun.simulate(spec, nodes, members,
                                     node_seconds=600)
    assert status["phase"] == "Succeeded"
    assert [w.nodes for w in waves] == [["cp-1"], ["cp-2"], ["w-1", "w-2"], ["w-3", "w-4"], ["w-5"]]
    assert waves[-1].end_seconds == 5 * 600


def test_dry_run_multi_minor_is_hop_major() -> None:
    nodes, members = cluster(2, 1, version="v1.30.1")
    spec = parse_directupdate_spec({"version": "v1.32.3", "backup": NO_BACKUP})
    status, waves = dryrun.simulate(spec, nodes, members, 60,
                                     resolved_minors={(1, 31): "v1.31.9"})
    assert status["hops"] == ["v1.31.9", "v1.32.3"]
    assert [(w.nodes, w.versions) for w in waves] == [
        (["cp-1"], [["v1.31.9"]]), (["cp-2"], [["v1.31.9"]]), (["cp-1"], [["v1.32.3"]]), (["cp-2"], [["v1.32.3"]]),
        (["w-1"], [["v1.31.9", "v1.32.3"]])]


def test_health_gates_hold_the_next_grant() -> None:
    nodes, members = cluster(1, 2)
    spec = {"version": "v1.32.0", "backup": NO_BACKUP, "healthGates": {"bakeSeconds": 60}}
    p = run(spec, nodes, members)
    assert granted(p) == ["cp-1"], "no gate before the first node"
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    p.status["nodes"][0]["finishedAt"] = "2026-11-27T12:00:00Z"
    p = run(spec, nodes, members, p.status, now=NOW + timedelta(seconds=30))
    assert granted(p) == [] and p.status["phase"] == "Paused" and "baking" in p.status["message"]
    p = run(spec, nodes, members, p.status, now=NOW + timedelta(seconds=61), gate_failure="prometheus query x failed")
    assert granted(p) == [] and "prometheus query x" in p.status["message"]
    cond = next(c for c in p.status["conditions"] if c["type"] == "HealthGates")
    assert cond["status"] == "False" and "prometheus query x" in cond["message"]
    unready = [NodeView("cp-1", {}, True, ready=False), *nodes[1:]]
    p = run(spec, unready, members, p.status, now=NOW + timedelta(seconds=61))
    assert "cp-1 is not Ready" in p.status["message"]
    p = run(spec, nodes, members, p.status, now=NOW + timedelta(seconds=61))
    assert granted(p) == ["w-1"] and p.status["phase"] == "Running"


def test_retry_regrants_the_same_work_once_per_request() -> None:
    nodes, members = cluster(1, 1)
    spec = {"version": "v1.32.0", "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    old = Report("op", UID, 3, ["v1.32.0"], "Failed", "restart", 2, message="x", granted_at="2026-11-27T12:00:00Z")
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.32.0"), old)
    p = run(spec, nodes, members, p.status)
    assert p.status["phase"] == "RequiresAttention"
    ann = {"kupd.io/retry-nodes": "w-1"}
    later = NOW + timedelta(minutes=5)
    p = run(spec, nodes, members, p.status, annotations=ann, now=later)
    w1 = p.status["nodes"][1]
    assert w1["phase"] == "Granted" and w1["grant"]["versions"] == ["v1.32.0"]
    assert w1["grant"]["grantedAt"] == "2026-11-27T12:05:00Z" and w1["retryToken"] == "w-1"
    # The old Failed report belongs to the old grant: it does not fail the retry.
    p = run(spec, nodes, members, p.status, annotations=ann, now=later)
    assert p.status["nodes"][1]["phase"] == "Granted" and p.status["phase"] == "Running"
    # A second failure under the same annotation value is not retried again.
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.32.0"),
                                Report("op", UID, 3, ["v1.32.0"], "Failed", "restart", 2,
                                       granted_at="2026-11-27T12:05:00Z"))
    p = run(spec, nodes, members, p.status, annotations=ann, now=later)
    p = run(spec, nodes, members, p.status, annotations=ann, now=later)
    assert p.status["nodes"][1]["phase"] == "Failed"


def mk_grant(operation: str, uid: str, epoch: int, versions: list[str], granted_at: str,
             first_control_plane: bool = False, backup: bool = False) -> Grant:
    work = parse_directupdate_spec({"version": versions[-1]}).node_work(
        versions, control_plane=first_control_plane, first_control_plane=first_control_plane, backup=backup)
    return Grant(operation, uid, epoch, granted_at, work)


def _delivered(p: planner.Plan, name: str, op_uid: str = UID) -> Grant:
    g = next(e for e in p.status["nodes"] if e["name"] == name)["grant"]
    return mk_grant("op", op_uid, g["epoch"], g["versions"], g["grantedAt"], g["firstControlPlane"], g["backup"])


def test_a_delivered_grant_the_status_lost_is_adopted_and_its_slot_not_given_twice() -> None:
    # The coordinator delivered cp-1's and then w-1's grant and died before the status recorded
    # w-1's: its successor plans from the older status and the grant Leases.
    nodes, members = cluster(1, 3)
    spec = {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    recorded = run(spec, nodes, members, p.status)  # the status as stored: cp-1 done, no w-1 grant yet
    lost_write = run(spec, nodes, members, recorded.status, now=NOW + timedelta(seconds=1))
    assert granted(lost_write) == ["w-1"]
    stale = {**recorded.status, "nodes": [e for e in recorded.status["nodes"] if e["name"] != "w-1"]
             + [{"name": "w-1", "role": "Worker", "canary": False, "phase": "Pending", "attempts": 0,
                 "toVersion": "v1.32.0"}]}
    delivered = {"w-1": _delivered(lost_write, "w-1")}
    after = run(spec, nodes, members, stale, now=NOW + timedelta(seconds=30), delivered=delivered)
    assert granted(after) == ["w-1"], "the adopted grant holds the only slot"
    w1 = next(e for e in after.status["nodes"] if e["name"] == "w-1")
    assert w1["grant"]["grantedAt"] == delivered["w-1"].granted_at and w1["grant"]["epoch"] == 3
    assert not any(e.reason == "NodeGranted" for e in after.events), "adopting is not a new grant"


def test_delivered_grants_of_another_operation_or_an_ended_turn_are_not_adopted() -> None:
    nodes, members = cluster(1, 2)
    spec = {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    other = {"w-1": mk_grant("older", "uid-0", 1, ["v1.31.9"], "2026-11-20T00:00:00Z")}
    p2 = run(spec, nodes, members, p.status, delivered=other)
    assert granted(p2) == ["cp-1"]
    # cp-1's turn ended; its grant Lease is not cleared yet: the Succeeded entry stays Succeeded.
    finish(members, "cp-1", "v1.32.0", p2)
    done = run(spec, nodes, members, p2.status)
    p3 = run(spec, nodes, members, done.status, delivered={"cp-1": _delivered(p2, "cp-1")})
    assert next(e for e in p3.status["nodes"] if e["name"] == "cp-1")["phase"] == "Succeeded"
    assert granted(p3) == ["w-1"]


def test_a_turn_of_another_operation_not_yet_over_holds_its_slot() -> None:
    # op "older" was deleted while w-1 was mid-turn; w-1's grant Lease still carries that turn.
    nodes, members = cluster(0, 3, version="v1.31.2")
    spec = {"version": "v1.31.3", "concurrency": 2, "backup": NO_BACKUP}
    other = {"w-1": mk_grant("older", "uid-0", 1, ["v1.31.3"], "2026-11-27T11:00:00Z")}
    p = run(spec, nodes, members, delivered=other)
    assert granted(p) == ["w-2"], "one of two slots is w-1's, and w-1 is not granted twice"
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.31.3"),
                                Report("older", "uid-0", 1, ["v1.31.3"], "Succeeded", "uncordon",
                                       granted_at="2026-11-27T11:00:00Z"))
    p = run(spec, nodes, members, p.status, delivered=other)
    assert granted(p) == ["w-2", "w-3"]
    assert next(e for e in p.status["nodes"] if e["name"] == "w-1")["phase"] == "Skipped"


def test_a_pending_node_already_at_the_target_is_never_granted_an_empty_turn() -> None:
    # The record lags: w-1's entry says Pending, but its member reports this operation done.
    nodes, members = cluster(0, 2)
    spec = {"version": "v1.31.3", "concurrency": 1, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    assert granted(p) == ["w-1"]
    pending = {**p.status, "nodes": [{**e, "phase": "Pending"} for e in p.status["nodes"]]}
    for e in pending["nodes"]:
        e.pop("grant", None)
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.31.3"),
                                Report("op", UID, 3, ["v1.31.3"], "Succeeded", "uncordon"))
    p2 = run(spec, nodes, members, pending)
    assert next(e for e in p2.status["nodes"] if e["name"] == "w-1")["phase"] == "Succeeded"
    assert granted(p2) == ["w-2"]


def test_a_retry_is_not_undone_by_the_failed_grant_still_in_its_lease() -> None:
    nodes, members = cluster(0, 1)
    spec = {"version": "v1.31.3", "concurrency": 1, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    g = p.status["nodes"][0]["grant"]
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.31.2"),
                                Report("op", UID, 3, g["versions"], "Failed", "drain", granted_at=g["grantedAt"]))
    failed = run(spec, nodes, members, p.status)
    assert failed.status["nodes"][0]["phase"] == "Failed"
    later = NOW + timedelta(minutes=5)
    retried = run(spec, nodes, members, failed.status, now=later, annotations={"kupd.io/retry-nodes": "w-1"},
                  delivered={"w-1": _delivered(p, "w-1")})
    assert retried.status["nodes"][0]["phase"] == "Granted"
    assert retried.status["nodes"][0]["grant"]["grantedAt"] == "2026-11-27T12:05:00Z"


def test_an_invalid_member_is_a_fact_about_its_node_only() -> None:
    nodes, members = cluster(1, 3)
    spec = {"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["w-1", "w-2"]
    members["w-1"] = MemberView("w-1", True, Version.parse("v1.31.2"), None,
                                "invalid report, field report.message: must be a string, got int")
    p = run(spec, nodes, members, p.status)
    w1 = next(e for e in p.status["nodes"] if e["name"] == "w-1")
    assert w1["phase"] == "Granted" and w1["message"].startswith("node w-1: invalid report, field report.message")
    assert [(e.reason, e.node, e.warning) for e in p.events] == [("InvalidReport", "w-1", True)]
    # Said once; w-2 goes on as before.
    finish(members, "w-2", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert "InvalidReport" not in [e.reason for e in p.events]
    assert {e["name"]: e["phase"] for e in p.status["nodes"]}["w-2"] == "Succeeded"
    assert granted(p) == ["w-1", "w-3"]


def test_a_success_its_node_does_not_show_fails_verify_naming_both_versions() -> None:
    nodes, members = cluster(1, 1)
    spec = {"version": "v1.32.0", "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    grant = next(e for e in p.status["nodes"] if e["name"] == "cp-1")["grant"]
    # The member claims success; its Node still reports v1.31.2.
    members["cp-1"] = MemberView("cp-1", True, Version.parse("v1.31.2"), Report(
        "op", UID, 3, grant["versions"], "Succeeded", "uncordon", finished_at="2026-11-27T12:00:00Z",
        granted_at=grant["grantedAt"]))
    p = run(spec, nodes, members, p.status, now=NOW + timedelta(seconds=3))
    cp1 = next(e for e in p.status["nodes"] if e["name"] == "cp-1")
    assert cp1["phase"] == "Granted" and "waiting for its Node" in cp1["message"]
    p = run(spec, nodes, members, p.status, now=NOW + timedelta(seconds=30))
    cp1 = next(e for e in p.status["nodes"] if e["name"] == "cp-1")
    assert cp1["phase"] == "Failed" and cp1["step"] == "verify"
    assert "reported kubelet v1.32.0" in cp1["message"] and "Node reports v1.31.2" in cp1["message"]
    assert p.status["phase"] == "RequiresAttention" and granted(p) == []


# -- spec edits and membership changes mid-rollout -----------------------------------------------

def _phase(p: planner.Plan, name: str) -> str:
    return str(next(e for e in p.status["nodes"] if e["name"] == name)["phase"])


def test_raising_the_version_mid_rollout_replans_keeping_the_hop_begun() -> None:
    nodes, members = cluster(2, 1)
    spec = {"version": "v1.32.0", "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["cp-2"]
    raised = {**spec, "version": "v1.33.0"}
    p = run(raised, nodes, members, p.status, resolved_minors={(1, 32): "v1.32.1"})
    assert p.status["hops"] == ["v1.32.0", "v1.33.0"]
    assert any(e.reason == "Replanned" for e in p.events)
    assert _phase(p, "cp-1") == "Pending", "done with the old target, not with the new one"
    assert granted(p) == ["cp-2"], "cp-2's turn in flight is left alone"
    finish(members, "cp-2", "v1.32.0", p)
    p = run(raised, nodes, members, p.status)
    assert granted(p) == ["cp-1"]
    g = next(e for e in p.status["nodes"] if e["name"] == "cp-1")["grant"]
    assert g["versions"] == ["v1.33.0"] and g["firstControlPlane"] is True
    finish(members, "cp-1", "v1.33.0", p)
    p = run(raised, nodes, members, p.status)
    assert granted(p) == ["cp-2"]
    finish(members, "cp-2", "v1.33.0", p)
    p = run(raised, nodes, members, p.status)
    w = next(e for e in p.status["nodes"] if e["name"] == "w-1")
    assert w["grant"]["versions"] == ["v1.32.0", "v1.33.0"] and w["toVersion"] == "v1.33.0"


def test_lowering_the_version_mid_rollout_is_refused() -> None:
    nodes, members = cluster(1, 1)
    p = run({"version": "v1.33.0", "backup": NO_BACKUP}, nodes, members, resolved_minors={(1, 32): "v1.32.1"})
    p = run({"version": "v1.32.0", "backup": NO_BACKUP}, nodes, members, p.status)
    assert p.status["phase"] == "Failed"
    valid = next(c for c in p.status["conditions"] if c["type"] == "Valid")
    assert valid["reason"] == "VersionLowered"


def test_a_node_leaving_the_selection_keeps_its_slot_until_its_turn_ends() -> None:
    labels = {n: {"pool": "a"} for n in ("cp-1", "w-1", "w-2")}
    nodes, members = cluster(1, 2, labels=labels)
    spec = {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP, "nodeSelector": {"matchLabels": {"pool": "a"}}}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["w-1"]
    # w-1 leaves the selection (its label changes), or the cluster (its Node is deleted).
    for moved in ([n if n.name != "w-1" else NodeView("w-1", {"pool": "b"}, False) for n in nodes],
                  [n for n in nodes if n.name != "w-1"]):
        q = run(spec, moved, members, p.status)
        assert granted(q) == ["w-1"], "w-2 granted while w-1's turn is out"
        assert q.status["phase"] == "Running"
        grant = next(e for e in q.status["nodes"] if e["name"] == "w-1")["grant"]
        done = dict(members, **{"w-1": MemberView("w-1", True, Version.parse("v1.32.0"), Report(
            "op", UID, 3, grant["versions"], "Succeeded", "uncordon", granted_at=grant["grantedAt"]))})
        q = run(spec, moved, done, q.status)
        assert _phase(q, "w-1") == "Succeeded"
        assert granted(q) == ["w-2"]
        # Lost while out of the selection: named, and still holding the slot.
        lost = dict(members, **{"w-1": MemberView("w-1", False, Version.parse("v1.31.2"))})
        lease = {"w-1": _delivered(p, "w-1")}
        q = run(spec, moved, lost, p.status, delivered=lease)
        assert q.status["phase"] == "RequiresAttention" and "w-1" in q.status["message"]
        assert granted(q) == ["w-1"]
        # The runbook: deleting its grant Lease declares the lost turn over; the slot is freed.
        q = run(spec, moved, lost, q.status)
        assert "w-1" not in [e["name"] for e in q.status["nodes"]]
        assert granted(q) == ["w-2"] and any(e.reason == "TurnReleased" for e in q.events)


def test_a_lost_turn_of_another_operation_is_named_not_silent() -> None:
    nodes, members = cluster(1, 2)
    members["cp-1"] = MemberView("cp-1", True, Version.parse("v1.32.0"))
    members["w-1"] = MemberView("w-1", False, Version.parse("v1.31.2"),
                                Report("old", "uid-old", 3, ["v1.32.0"], "Upgrading", "drain", granted_at="t0"))
    other = Grant("old", "uid-old", 3, "t0", typed({"version": "v1.32.0"}).node_work(  # type: ignore[union-attr]
        ["v1.32.0"], control_plane=False, first_control_plane=False, backup=False))
    p = run({"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP}, nodes, members, delivered={"w-1": other})
    assert granted(p) == []
    assert p.status["phase"] == "RequiresAttention"
    assert "w-1" in p.status["message"] and "old" in p.status["message"] and "kupd-grant-w-1" in p.status["message"]


def test_a_control_plane_node_joining_mid_rollout_waits_for_the_workers_in_flight() -> None:
    nodes, members = cluster(1, 2)
    spec = {"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.32.0", p)
    p = run(spec, nodes, members, p.status)
    assert granted(p) == ["w-1", "w-2"]
    joined = [*nodes, NodeView("cp-2", {}, True)]
    members["cp-2"] = MemberView("cp-2", True, Version.parse("v1.31.2"))
    p = run(spec, joined, members, p.status)
    assert granted(p) == ["w-1", "w-2"]
    assert "cp-2 waits for the workers in flight (w-1, w-2)" in p.status["message"]
    finish(members, "w-1", "v1.32.0", p)
    p = run(spec, joined, members, p.status)
    assert granted(p) == ["w-2"], "neither cp-2 nor another worker while w-2 is out"
    finish(members, "w-2", "v1.32.0", p)
    p = run(spec, joined, members, p.status)
    assert granted(p) == ["cp-2"]


def test_a_dead_member_on_a_pending_node_is_named() -> None:
    nodes, members = cluster(1, 2)
    members["w-2"] = MemberView("w-2", False, Version.parse("v1.31.2"))
    spec = {"version": "v1.32.0", "concurrency": 1, "backup": NO_BACKUP}
    p = run(spec, nodes, members)
    assert p.status["phase"] == "RequiresAttention" and "w-2" in p.status["message"]
    cond = next(c for c in p.status["conditions"] if c["type"] == "RequiresAttention")
    assert cond["reason"] == "MemberLost"
    assert granted(p) == ["cp-1"], "the others go on"


def test_no_control_plane_turn_while_another_control_plane_version_is_unknown() -> None:
    nodes, members = cluster(2, 1)
    del members["cp-1"]
    p = run({"version": "v1.32.0", "backup": NO_BACKUP}, nodes, members)
    assert granted(p) == [], "cp-2 would run kubeadm upgrade apply before cp-1's version is known"
    assert "cp-1" in p.status["message"]
