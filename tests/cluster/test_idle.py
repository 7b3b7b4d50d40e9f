"""Idle and active: members renew rarely while no operation runs, at once when one starts, and a
member that died while idle is not given a turn on the strength of its long idle lease."""

from __future__ import annotations

import time
from typing import Any

from kupd import k8s
from kupd import protocol as p
from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import api_for, apply_du, get_du, wait_phase

NS = "kupd-system"


def _lease(api: k8s.Client, name: str) -> dict[str, Any] | None:
    try:
        return api.get(k8s.lease_path(NS, name))
    except k8s.ApiError as e:
        if e.status == 404:
            return None
        raise


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:.0f}s")


def test_idle_members_renew_rarely_and_at_once_when_an_operation_starts(sim: SimCluster) -> None:
    sim.member_idle_renew_seconds = 600
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    sim.add_node("w-2")
    api = api_for(sim.cp)
    member = p.member_lease_name("w-1")
    first = _wait(lambda: _lease(api, member), 60, "w-1's member Lease")
    # Idle: a lease of 3 times the idle period, and no renewal while an active member (8 s lease,
    # renewed every 2.6 s) would have renewed twice.
    assert first["spec"]["leaseDurationSeconds"] == 1800, first["spec"]
    time.sleep(6)
    idle = _lease(api, member)
    assert idle is not None and idle["spec"]["renewTime"] == first["spec"]["renewTime"], "renewed while idle"

    # w-2 dies while idle: its lease still declares 30 minutes of life.
    sim.kill("w-2")
    assert (_lease(api, p.ACTIVITY_LEASE) is None
            or p.activity_value(_lease(api, p.ACTIVITY_LEASE)) == ""), "activity announced while idle"

    started = time.monotonic()
    # The preflight would (rightly) refuse to start with w-2's daemon gone; here it only warns, so
    # that the planner's own judgement of w-2 is what is tested.
    apply_du(sim.cp, "roll", {"version": "v1.31.3", "concurrency": 2, "backup": {"required": False},
                              "preflight": {"warnOnly": ["DaemonsAlive"]}})
    activity = _wait(lambda: p.activity_value(_lease(api, p.ACTIVITY_LEASE)), 30, "the activity Lease")
    assert activity.startswith("roll/")
    renewed = _wait(lambda: (lambda lease: lease if lease and lease["spec"]["renewTime"] != first["spec"][
        "renewTime"] else None)(_lease(api, member)), 30, "w-1's renewal after the start")
    # At once (within the spread, plus the coordinator's round and two watch deliveries), and
    # from now on with the active duration.
    assert time.monotonic() - started < 10
    assert renewed["spec"]["leaseDurationSeconds"] == sim.member_seconds

    # w-1 finishes; w-2, whose idle lease has not expired but who never renewed since the
    # operation began, is not granted: liveness at the start of an operation is established then.
    def w1_done() -> bool:
        nodes = {e["name"]: e for e in (get_du(sim.cp, "roll").get("status") or {}).get("nodes") or []}
        return nodes.get("w-1", {}).get("phase") == "Succeeded"

    _wait(w1_done, 120, "w-1 upgraded")
    time.sleep(2)
    nodes = {e["name"]: e for e in (get_du(sim.cp, "roll").get("status") or {}).get("nodes") or []}
    assert nodes["w-2"]["phase"] == "Pending" and not nodes["w-2"].get("grant"), nodes["w-2"]
    grant = _lease(api, p.grant_lease_name("w-2"))
    assert grant is None or not p.grant_value(grant)

    # Back: w-2 renews at once (the operation is active), is granted, and the operation ends; the
    # activity Lease goes back to idle and members declare the idle lease again.
    # (While it was away the operation may have said so: RequiresAttention, MemberLost, naming
    # w-2; that is no end state, and its return resolves it.)
    sim.start("w-2")
    st = wait_phase(sim.cp, "roll", ("Succeeded", "Failed"))
    assert st["phase"] == "Succeeded", st
    _wait(lambda: p.activity_value(_lease(api, p.ACTIVITY_LEASE)) == "", 30, "the activity Lease idle")
    _wait(lambda: (_lease(api, member) or {}).get("spec", {}).get("leaseDurationSeconds") == 1800, 30,
          "w-1 idle again")
