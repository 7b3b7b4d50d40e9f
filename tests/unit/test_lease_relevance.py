"""Which Lease changes wake a coordinator round at once (the rest wait for the 1 s tick)."""

from __future__ import annotations

import re
from typing import Any

from kupd import protocol as p
from kupd.protocol import lease_changed as _lease_changed


def lease(name: str = "kupd-node-w-1", renew: str = "t1", report: p.Report | None = None,
          **anns: str) -> dict[str, Any]:
    a = {p.ANN_KUBELET: "v1.31.2", p.ANN_REPORT: report.encode() if report else "", **anns}
    return {"metadata": {"name": name, "annotations": a},
            "spec": {"holderIdentity": "w-1", "leaseDurationSeconds": 60, "renewTime": renew}}


def report(phase: str = "Upgrading", step: str = "drain", reason: str = "") -> p.Report:
    return p.Report("op", "uid", 1, ["v1.32.0"], phase, step, granted_at="2026-12-01T10:00:00Z", reason=reason)


def test_renewals_and_step_progress_wait_for_the_tick() -> None:
    assert not _lease_changed(lease(), lease(renew="t2"))
    assert not _lease_changed(lease(report=report(step="drain")), lease(report=report(step="kubelet-package")))


def test_what_frees_or_holds_a_slot_and_changed_facts_wake_a_round() -> None:
    assert _lease_changed(None, lease())
    assert _lease_changed(lease(report=report()), lease(report=report("Succeeded", "uncordon")))
    assert _lease_changed(lease(report=report()), lease(report=report(reason="DrainBlocked")))
    assert _lease_changed(lease(), lease(report=report()))
    assert _lease_changed(lease(), lease(**{p.ANN_KUBELET: "v1.32.0"}))


def test_grant_leases_never_wake_a_round() -> None:
    assert not _lease_changed(lease("kupd-grant-w-1"), lease("kupd-grant-w-1", **{p.ANN_GRANT: "x"}))


def test_a_report_or_grant_that_is_json_but_not_an_object_reads_as_none() -> None:
    for text in ("[]", "1", '"x"', "null"):
        assert p.Report.decode(text) is None
        assert p.Grant.decode(text) is None


def test_member_lease_codec() -> None:
    from kupd.versions import Version

    m = p.decode_member_lease(lease(renew="2026-11-27T12:00:00.123456Z", report=report(),
                                    **{p.ANN_KUBELET: "v1.32.0"}), 60)
    assert m is not None and m.node == "w-1" and m.kubelet == Version.parse("v1.32.0")
    assert m.renew_time is not None and m.renew_time.microsecond == 123456 and m.duration == 60
    assert m.report is not None and m.report.uid == "uid"
    assert p.decode_member_lease(lease("kupd-grant-w-1"), 60) is None
    assert p.decode_member_lease(lease(renew="yesterday"), 60).renew_time is None  # type: ignore[union-attr]


def test_grant_lease_codec() -> None:
    body = p.grant_lease_body("kupd-system", "w-1", "{}", 7)
    assert body["metadata"]["name"] == "kupd-grant-w-1"
    assert body["metadata"]["annotations"] == {p.ANN_GRANT: "{}", p.ANN_EPOCH: "7"}
    assert body["metadata"]["labels"][p.LABEL_LEASE_KIND] == p.LEASE_KIND_GRANT
    # When the grant was written, to the microsecond (metav1.MicroTime), for operators and the bench.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["spec"]["renewTime"])
    assert p.grant_values([body, lease()]) == {"w-1": "{}"}


def test_event_bodies() -> None:
    from kupd.planner import PlanEvent
    from kupd.statuswriter import event_bodies

    ref = {"metadata": {"name": "op", "uid": "u"}}
    on_both = event_bodies(ref, PlanEvent("NodeFailed", "w-1 failed", "w-1", True), "cp-1", "2026-11-27T12:00:00Z")
    assert [b["involvedObject"]["kind"] for b in on_both] == ["DirectUpdate", "Node"]
    assert on_both[0]["type"] == "Warning" and on_both[0]["lastTimestamp"] == "2026-11-27T12:00:00Z"
    node_only = event_bodies(ref, PlanEvent("StepStarted", "w-1: drain", "w-1"), "cp-1", "t")
    assert [b["involvedObject"]["kind"] for b in node_only] == ["Node"]
