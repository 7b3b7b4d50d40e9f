"""The validating decoder of untrusted input (kupd.untrusted, protocol.decode_report and
protocol.decode_member_lease): member Leases and their reports,
and the coordinator's round (decode, then plan) driven by arbitrary member Leases and annotations.

Properties (hypothesis): nothing raises but `Invalid`, whatever any JSON value or text is given;
whatever is accepted fits the CRD's bounds, so it can be copied into status; the round never
raises, and nodes with valid members keep getting grants.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kupd import planner, untrusted, validate
from kupd import protocol as p
from kupd.api.models import parse_directupdate_spec
from kupd.untrusted import Invalid
from kupd.versions import Version

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = p.Report(operation="roll", uid="0b7c-11", epoch=3, versions=["v1.31.3"], phase="Upgrading", step="drain",
                attempts=1, started_at="2026-12-01T10:00:00Z", message="draining",
                backup={"location": "s3://b/k", "size": 1, "sha256": "0" * 64, "verified": True},
                step_seconds={"preflight": 1.5}, granted_at="2026-12-01T09:59:59Z")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FIELDS = list(json.loads(GOOD.encode()))


def _fits_the_crd(r: p.Report) -> None:
    assert 0 <= r.attempts <= 100
    assert len(r.message) <= 2048 and len(r.step) <= 63
    assert all(re.fullmatch(validate.K8S_VERSION, v) for v in r.versions)
    assert r.phase in ("Upgrading", "Succeeded", "Failed")
    for t in (r.started_at, r.finished_at, r.granted_at):
        if t:
            assert 1970 <= untrusted.parse_time(t, "t").year <= 9000
    if r.backup:
        assert len(r.backup["location"]) <= 2048
        assert re.fullmatch(validate.SHA256_HEX, r.backup.get("sha256", "0" * 64))


def test_a_report_kupd_writes_reads_back_unchanged() -> None:
    assert p.decode_report(GOOD.encode()) == GOOD
    assert p.decode_report("") is None and p.decode_report(None) is None


@FUZZ
@given(key=st.sampled_from(FIELDS), value=json_values)
@example(key="message", value=12345)
@example(key="attempts", value=1000)
@example(key="finished_at", value="not-a-time")
@example(key="finished_at", value="9999-12-31T23:59:59-01:00")
@example(key="versions", value="v1.31.3")
@example(key="epoch", value=True)
def test_any_value_in_any_field_is_accepted_within_bounds_or_named(key: str, value: Any) -> None:
    data = json.loads(GOOD.encode())
    data[key] = value
    try:
        r = p.decode_report(json.dumps(data))
    except Invalid as e:
        assert e.field.startswith("report"), e
        assert e.field.split(".")[1].split("[")[0] == key if "." in e.field else True, e
        return
    assert r is not None
    _fits_the_crd(r)


@FUZZ
@given(raw=st.one_of(st.text(max_size=200), json_values.map(json.dumps)))
@example(raw="[" * 50_000)
@example(raw="{" * 50_000)
@example(raw='{"a":' * 20 + "1" + "}" * 20)
@example(raw="NaN")
@example(raw='"' + "x" * 100_000 + '"')
def test_any_text_is_a_report_or_invalid(raw: str) -> None:
    try:
        r = p.decode_report(raw)
    except Invalid as e:
        assert e.field.startswith("report")
        return
    if r is not None:
        _fits_the_crd(r)


def test_nesting_and_size_are_refused_before_parsing() -> None:
    with pytest.raises(Invalid, match="levels deep"):
        p.decode_report("[" * 50_000)
    with pytest.raises(Invalid, match="characters long"):
        p.decode_report(" " * (untrusted.MAX_TEXT + 1))
    # Brackets inside strings are text, not nesting.
    assert untrusted.bounded_json(json.dumps({"m": "[" * 1000}), "x") == {"m": "[" * 1000}


def _lease(annotations: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "kupd-node-w-2", "annotations": annotations},
            "spec": {"holderIdentity": "w-2", "renewTime": "2026-12-01T10:00:00.000000Z", **(spec or {})}}


@FUZZ
@given(annotations=st.dictionaries(st.sampled_from([p.ANN_KUBELET, p.ANN_REPORT, p.ANN_BOOT_ID, "other"]),
                                   st.one_of(st.text(max_size=40), json_values.map(json.dumps)), max_size=4),
       spec=st.dictionaries(st.sampled_from(["renewTime", "leaseDurationSeconds"]), json_values, max_size=2))
def test_any_member_lease_decodes_to_facts_or_a_named_problem(annotations: dict[str, Any],
                                                             spec: dict[str, Any]) -> None:
    m = p.decode_member_lease(_lease(annotations, spec), 60)
    assert m is not None and m.node == "w-2" and 1 <= m.duration <= 3600
    if m.report is not None:
        _fits_the_crd(m.report)
    if m.problem:
        assert m.problem.startswith("invalid"), m.problem


@pytest.mark.parametrize(("annotations", "problem"), [
    ({p.ANN_KUBELET: "junk"}, "invalid annotation kupd.io/kubelet-version"),
    ({p.ANN_REPORT: "[" * 50_000}, "invalid report, field report: nests"),
    ({p.ANN_REPORT: GOOD.encode().replace('"message":"draining"', '"message":12345')},
     "invalid report, field report.message"),
    ({p.ANN_REPORT: GOOD.encode().replace('"attempts":1', '"attempts":1000')}, "invalid report, field report.attempts"),
])
def test_the_problem_names_the_field(annotations: dict[str, str], problem: str) -> None:
    m = p.decode_member_lease(_lease(annotations), 60)
    assert m is not None and m.problem is not None and m.problem.startswith(problem), m.problem
    assert m.report is None


# -- the coordinator's round (its pure parts: decode, then plan) under arbitrary input ------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SPEC = {"version": "v1.32.0", "concurrency": 2, "backup": {"required": False}}
ANNOTATION_KEYS = [p.ANN_KUBELET, p.ANN_REPORT, p.ANN_BOOT_ID, p.ANN_CONTROL_PLANE, "x"]
annotation_values = st.one_of(st.text(max_size=60), json_values.map(json.dumps),
                              st.builds(lambda k, v: GOOD.encode().replace(f'"{k}":', f'"{k}":{json.dumps(v)},"_":'),
                                        st.sampled_from(FIELDS), json_values))


def _round(hostile_lease: dict[str, Any], annotations: dict[str, str]) -> planner.Plan:
    """cp-1 done, w-1 and w-3 valid and waiting, w-2 whatever `hostile_lease` says."""
    nodes = [planner.NodeView("cp-1", {}, True), planner.NodeView("w-1", {}, False),
             planner.NodeView("w-2", {}, False), planner.NodeView("w-3", {}, False)]
    kubelets = {"cp-1": Version.parse("v1.32.0"), "w-1": Version.parse("v1.31.2"),
                "w-2": Version.parse("v1.31.2"), "w-3": Version.parse("v1.31.2")}
    leases = [_lease({p.ANN_KUBELET: "v1.31.2"}, {"renewTime": "2026-12-01T11:59:59.000000Z"}) for _ in range(3)]
    for lease, node in zip(leases, ("cp-1", "w-1", "w-3"), strict=True):
        lease["metadata"]["name"] = p.member_lease_name(node)
    members = {}
    for lease in [*leases, hostile_lease]:
        m = p.decode_member_lease(lease, 60)
        assert m is not None
        alive = m.renew_time is not None and (NOW - m.renew_time).total_seconds() < m.duration
        members[m.node] = planner.MemberView(m.node, alive, kubelets.get(m.node), m.report, m.problem)
    status = {"hops": ["v1.32.0"], "nodes": [
        {"name": "cp-1", "role": "ControlPlane", "phase": "Succeeded", "attempts": 0, "toVersion": "v1.32.0"}]}
    op = planner.Operation("op", "uid-1", 1, parse_directupdate_spec(SPEC), status, annotations)
    return planner.plan(op, nodes, members, epoch=2, coordinator="cp-1", now=NOW)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(annotations=st.dictionaries(st.sampled_from(ANNOTATION_KEYS), annotation_values, max_size=5),
       spec=st.dictionaries(st.sampled_from(["renewTime", "leaseDurationSeconds", "holderIdentity"]),
                            json_values, max_size=3))
@example(annotations={p.ANN_KUBELET: "junk"}, spec={})
@example(annotations={p.ANN_REPORT: "[" * 50_000}, spec={})
def test_any_member_lease_leaves_the_round_standing_and_valid_nodes_granted(
        annotations: dict[str, Any], spec: dict[str, Any]) -> None:
    lease = _lease(annotations, {"renewTime": "2026-12-01T11:59:59.000000Z", **spec})
    result = _round(lease, {})
    entries = {e["name"]: e for e in result.status["nodes"]}
    granted = {n for n, e in entries.items() if e["phase"] in planner.IN_FLIGHT}
    # Two slots: the valid workers get theirs whatever w-2's Lease says (w-2 may take one, as any
    # member may, but never both, and never more than the concurrency).
    assert "w-1" in granted and len(granted) == 2
    assert granted <= {"w-1", "w-2", "w-3"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(annotations=st.dictionaries(
    st.sampled_from([p.ANN_WINDOW_START, p.ANN_WINDOW_END, p.ANN_RETRY_NODES, "other"]),
    st.one_of(st.text(max_size=50), st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
              st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+14:00", "2026-12-01T11:00:00Z",
                               "2026-12-01T13:00:00Z", "w-1,w-2#3", ""])), max_size=4))
def test_any_directupdate_annotation_leaves_the_round_standing(annotations: dict[str, str]) -> None:
    lease = _lease({p.ANN_KUBELET: "v1.31.2"}, {"renewTime": "2026-12-01T11:59:59.000000Z"})
    result = _round(lease, annotations)
    assert result.status["phase"] in ("Running", "Paused")
    if result.status["phase"] == "Paused":
        cond = next(c for c in result.status["conditions"] if c["type"] == "Progressing")
        assert cond["reason"] in ("OutsideWindow", "InvalidWindow"), cond
