"""Idle and active modes: how often a member renews and what it declares, the coordinator Lease's
durations, watches' jittered lengths, and which changes wake a coordinator round."""

from __future__ import annotations

from typing import Any, cast

from kupd import k8s
from kupd import protocol as p
from kupd.election import Elector
from kupd.host.base import HostFacts
from kupd.liveness import node_changed
from kupd.member import IDLE_LEASE_FACTOR, Member


def _member(report: p.Report | None = None, idle_renew: float | None = 600) -> Member:
    facts = HostFacts(boot_id="b", package_manager="apt", kubeadm="v1.31.2", kubelet="v1.31.2",
                      kubectl="v1.31.2", containerd="1.7.22")
    return Member(cast(k8s.Client, None), "kupd-system", "w-1", 60, 20.0, lambda: facts, lambda: report,
                  control_plane=False, idle_renew=idle_renew)


def test_an_idle_member_renews_rarely_and_declares_a_long_lease() -> None:
    m = _member()
    assert not m.active
    assert m.duration == IDLE_LEASE_FACTOR * 600
    assert all(540 <= m.renew_every <= 660 for _ in range(100))
    assert m.body()["spec"]["leaseDurationSeconds"] == 1800


def test_an_operation_start_makes_a_member_active_once() -> None:
    m = _member()
    assert m.set_activity(True) is True
    assert m.set_activity(True) is False  # already active: no second immediate renewal
    assert m.active and m.duration == 60 and m.renew_every == 20.0
    assert m.set_activity(False) is False
    assert not m.active and m.duration == 1800


def test_a_member_working_on_its_own_turn_stays_active_when_the_operation_ends() -> None:
    working = p.Report(operation="op", uid="u", epoch=1, versions=["v1.32.0"], phase=p.TurnPhase.UPGRADING)
    assert _member(working).active
    done = p.Report(operation="op", uid="u", epoch=1, versions=["v1.32.0"], phase=p.TurnPhase.SUCCEEDED)
    assert not _member(done).active


def test_without_an_idle_period_a_member_is_always_active() -> None:
    m = _member(idle_renew=None)
    assert m.active and m.duration == 60 and m.renew_every == 20.0


def test_the_coordinator_lease_declares_the_idle_duration_while_idle() -> None:
    e = Elector(cast(k8s.Client, None), "kupd-system", "cp-1", 15, idle_duration=180)
    assert e.duration == 15
    e.idle = True
    assert e.duration == 180
    e._won(3, started=0.0)
    e.idle = False
    # Leadership is measured against what was declared, which candidates wait out.
    assert e._declared == 180


def test_watches_end_after_their_length_plus_up_to_half_of_it() -> None:
    inf = k8s.Informer("x", cast(k8s.Client, None), "/apis/x", lambda: None, watch_seconds=3600)
    lengths = {inf._watch_timeout() for _ in range(200)}
    assert min(lengths) >= 3600 and max(lengths) <= 5400 and len(lengths) > 10


def _node(ready: str = "True", hb: str = "t1", labels: dict[str, str] | None = None,
          kubelet: str = "v1.31.2") -> dict[str, Any]:
    return {"metadata": {"name": "w-1", "labels": labels or {"a": "b"}}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": hb}],
                       "nodeInfo": {"kubeletVersion": kubelet}}}


def test_only_what_the_planner_reads_of_a_node_wakes_a_round() -> None:
    assert not node_changed(_node(hb="t1"), _node(hb="t2"))
    assert node_changed(_node(), _node(ready="False"))
    assert node_changed(_node(), _node(labels={"a": "c"}))
    assert node_changed(_node(), _node(kubelet="v1.32.0"))
    assert node_changed(None, _node())
    # A cordon is not read by the planner: each turn makes two, and a round for each was wasted.
    cordoned = _node()
    cordoned["spec"]["unschedulable"] = True
    assert not node_changed(_node(), cordoned)


def test_the_activity_lease_is_read_and_written_by_its_codec() -> None:
    body = p.activity_lease_body("kupd-system", "roll/uid-1", 4)
    assert p.activity_value(body) == "roll/uid-1"
    assert p.activity_value(None) == ""
    assert body["metadata"]["annotations"][p.ANN_EPOCH] == "4"
    # Its changes are the coordinator's own writes: they wake no round.
    assert not p.lease_changed(body, p.activity_lease_body("kupd-system", "", 4))


def _status(phase: str, reason: str) -> dict[str, Any]:
    return {"phase": phase, "conditions": [{"type": "Progressing", "status": "False", "reason": reason}]}


def test_members_go_idle_only_while_an_operation_waits_for_an_operator_or_a_window() -> None:
    from kupd.coordinator import _waiting

    assert _waiting(_status("Paused", "Paused")) and _waiting(_status("Paused", "OutsideWindow"))
    assert not _waiting({"phase": "Paused", "conditions": [{"type": "HealthGates", "status": "False"}]})
    assert not _waiting({"phase": "Running"}) and not _waiting({})


def _lease(rv: str) -> dict[str, Any]:
    return {"metadata": {"name": "kupd-node-w-1", "namespace": "kupd-system", "resourceVersion": rv}}


def test_an_informer_remembers_when_it_first_saw_each_version_even_with_nobody_looking() -> None:
    inf = k8s.Informer("x", cast(k8s.Client, None), "/apis/x", lambda: None)
    key = "kupd-system/kupd-node-w-1"
    assert inf.observed_at(key) is None
    inf._apply("ADDED", _lease("5"))
    first = inf.observed_at(key)
    assert first is not None
    inf._apply("MODIFIED", _lease("5"))  # the same version again (a relist, a put echo): not new
    assert inf.observed_at(key) == first
    inf._apply("MODIFIED", _lease("7"))
    later = inf.observed_at(key)
    assert later is not None and later >= first
    inf._apply("DELETED", _lease("7"))
    assert inf.observed_at(key) is None
