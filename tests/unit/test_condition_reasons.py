"""Every Condition kupd writes is valid under the CRD's schema, so the API server never refuses a
status write for kupd's own reasons (a refused write once wedged the coordinator for good)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kupd import planner, scheduler
from kupd.api.models import parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.planner import MemberView, NodeView, Operation, plan
from kupd.protocol import Report
from kupd.versions import Version

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _condition_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "directupdates.kupd.io.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    schema: dict[str, Any] = status["properties"]["conditions"]["items"]["properties"]
    return schema


REASON = re.compile(_condition_schema()["reason"]["pattern"])


def test_every_reason_constant_matches_the_crd_pattern() -> None:
    reasons = list(planner.Reason)
    assert len(reasons) > 10
    for r in reasons:
        assert REASON.match(r.value), r
        assert len(r.value) <= _condition_schema()["reason"]["maxLength"]


def _cluster(cp_version: str = "v1.31.2", worker_version: str = "v1.31.2") -> tuple[list[NodeView],
                                                                                  dict[str, MemberView]]:
    nodes = [NodeView("cp-1", {"node-role.kubernetes.io/control-plane": ""}, True), NodeView("w-1", {}, False),
             NodeView("w-2", {}, False)]
    members = {"cp-1": MemberView("cp-1", True, Version.parse(cp_version)),
               "w-1": MemberView("w-1", True, Version.parse(worker_version)),
               "w-2": MemberView("w-2", True, Version.parse(worker_version))}
    return nodes, members


def _conditions(spec: dict[str, Any], nodes: list[NodeView], members: dict[str, MemberView],
                status: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    try:
        typed: Any = parse_directupdate_spec({"backup": {"required": False}, **spec})
    except ValidationError as e:
        typed = e
    op = Operation("op", "uid-1", 1, typed, status or {}, kw.pop("ann", {}))
    result = plan(op, nodes, members, epoch=1, coordinator="cp-1", now=NOW, **kw)
    conds: list[dict[str, Any]] = result.status.get("conditions") or []
    return conds


def _scenarios() -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    nodes, members = _cluster()
    out.append(("older target", _conditions({"version": "v1.30.0"}, nodes, members)))
    out.append(("other major", _conditions({"version": "v2.0.0"}, nodes, members)))
    workers_only = {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane",
                                          "operator": "DoesNotExist"}]}
    out.append(("workers past the control plane",
                _conditions({"version": "v1.32.0", "nodeSelector": workers_only}, nodes, members)))
    out.append(("invalid spec", _conditions({"version": "latest"}, nodes, members)))
    out.append(("paused", _conditions({"version": "v1.32.0", "paused": True}, nodes, members)))
    dead = dict(members, **{"w-2": MemberView("w-2", False, Version.parse("v1.31.2"))})
    out.append(("dead member", _conditions({"version": "v1.32.0"}, nodes, dead)))
    # A failed node and a lost node, from a status that records their grants.
    grant = {"epoch": 1, "versions": ["v1.32.0"], "firstControlPlane": False, "backup": False,
             "grantedAt": "2026-11-27T11:00:00Z"}
    status = {"hops": ["v1.32.0"], "phase": "Running", "nodes": [
        {"name": "cp-1", "role": "ControlPlane", "phase": "Succeeded"},
        {"name": "w-1", "role": "Worker", "phase": "Upgrading", "grant": dict(grant)},
        {"name": "w-2", "role": "Worker", "phase": "Pending"}]}
    failed = dict(members, **{
        "cp-1": MemberView("cp-1", True, Version.parse("v1.32.0")),
        "w-1": MemberView("w-1", True, Version.parse("v1.31.2"),
                          Report("op", "uid-1", 1, ["v1.32.0"], "Failed", "drain", 3,
                                 granted_at=grant["grantedAt"], reason="StepFailed"))})
    out.append(("failed node", _conditions({"version": "v1.32.0", "concurrency": 2}, nodes, failed, status)))
    lost = dict(failed, **{"w-1": MemberView("w-1", False, Version.parse("v1.31.2"))})
    out.append(("lost node", _conditions({"version": "v1.32.0", "concurrency": 2}, nodes, lost, status)))
    no_time = {k: v for k, v in grant.items() if k != "grantedAt"}
    by_hand = {**status, "nodes": [status["nodes"][0], {**status["nodes"][1], "grant": no_time}, status["nodes"][2]]}
    out.append(("grant record without grantedAt",
                _conditions({"version": "v1.32.0", "concurrency": 2}, nodes, members, by_hand)))
    window = {"kupd.io/window-start": "2026-11-27T13:00:00Z",
              "kupd.io/window-end": (NOW + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    out.append(("outside the window", _conditions({"version": "v1.32.0"}, nodes, members, ann=window)))
    return out


@pytest.mark.parametrize(("what", "conditions"), _scenarios(), ids=[s[0] for s in _scenarios()])
def test_conditions_the_planner_writes_are_valid(what: str, conditions: list[dict[str, Any]]) -> None:
    schema = _condition_schema()
    type_pattern = re.compile(schema["type"]["pattern"])
    assert conditions, what
    for c in conditions:
        assert REASON.match(c["reason"]), (what, c)
        assert type_pattern.match(c["type"]), (what, c)
        assert c["status"] in schema["status"]["enum"], (what, c)
        assert len(c["message"]) <= schema["message"]["maxLength"], (what, c)


@pytest.mark.parametrize("crd", ["scheduledupdates", "updateschedules"])
def test_scheduler_reasons_match_their_crds(crd: str) -> None:
    doc = yaml.safe_load((ROOT / "crds" / f"{crd}.kupd.io.yaml").read_text())
    status = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    pattern = re.compile(status["properties"]["conditions"]["items"]["properties"]["reason"]["pattern"])
    reasons = {k: v for k, v in vars(scheduler).items() if k.startswith("R_") and isinstance(v, str)}
    assert len(reasons) >= 5
    for name, value in reasons.items():
        assert pattern.match(value), (name, value)


def test_a_grant_record_that_is_not_a_grant_needs_attention_for_its_node_alone() -> None:
    """A status written by hand or by an older kupd (the CRD leaves grantedAt optional): that
    node's turn cannot be delivered, and the operation says so naming the field; the other nodes
    are still granted their turns."""
    nodes, members = _cluster()
    members = dict(members, **{"cp-1": MemberView("cp-1", True, Version.parse("v1.32.0"))})
    status = {"hops": ["v1.32.0"], "phase": "Running", "nodes": [
        {"name": "cp-1", "role": "ControlPlane", "phase": "Succeeded"},
        {"name": "w-1", "role": "Worker", "phase": "Granted", "grant": {"epoch": 1, "versions": ["v1.32.0"]}},
        {"name": "w-2", "role": "Worker", "phase": "Pending"}]}
    op = Operation("op", "uid-1", 1, parse_directupdate_spec({"version": "v1.32.0", "concurrency": 2,
                                                              "backup": {"required": False}}), status, {})
    result = plan(op, nodes, members, epoch=1, coordinator="cp-1", now=NOW)
    attention = next(c for c in result.status["conditions"] if c["type"] == "RequiresAttention")
    assert (attention["status"], attention["reason"]) == ("True", "InvalidGrant")
    assert "w-1" in attention["message"] and "grant.grantedAt" in attention["message"]
    assert any(e.reason == "InvalidGrant" and e.warning and e.node == "w-1" for e in result.events)
    w2 = next(e for e in result.status["nodes"] if e["name"] == "w-2")
    assert w2["phase"] == "Granted" and w2["grant"]["grantedAt"]
