"""ScheduledUpdates and UpdateSchedules against the real API server, with injected time.

The scheduler talks to a real kube-apiserver with kupd's CRDs; only the clock is fake, so a
week of nightly firings takes a few seconds. The coordinator's part (moving a DirectUpdate
through its phases) is played by the test writing DirectUpdate status directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kupd import k8s
from kupd.clock import ManualClock
from kupd.k8s import DIRECTUPDATES, GROUP, SCHEDULEDUPDATES, VERSION
from kupd.k8s import UPDATESCHEDULES as SCHEDULES
from kupd.protocol import ANN_WINDOW_END, ANN_WINDOW_START
from kupd.rfc3339 import format_time
from kupd.scheduler import (
    ANN_REQUESTED_VERSION,
    ANN_SCHEDULE,
    LABEL_CREATED_BY,
    Scheduler,
)
from kupd.sim.devcluster import ControlPlane

NEW_YORK = ZoneInfo("America/New_York")


def path(plural: str, name: str | None = None, subresource: str | None = None) -> str:
    return k8s.path(GROUP, VERSION, plural, name, subresource=subresource)


@pytest.fixture(scope="module")
def api(crds: ControlPlane) -> Iterator[k8s.Client]:
    client = k8s.api_client(str(crds.admin_kubeconfig))
    yield client
    client.close()


@pytest.fixture(autouse=True)
def clean(api: k8s.Client) -> Iterator[None]:
    def wipe() -> None:
        for plural in (SCHEDULEDUPDATES, SCHEDULES, DIRECTUPDATES):
            for obj in api.list(path(plural))["items"]:
                api.delete(path(plural, obj["metadata"]["name"]))
    wipe()
    yield
    wipe()


@pytest.fixture
def base() -> datetime:
    """Midnight UTC two days ahead of the real time: after every object's creationTimestamp."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=2)


class Resolver:
    """The package source's answer to "newest patch of this minor", counted."""

    def __init__(self, patch: int = 7) -> None:
        self.patch = patch
        self.asked: list[str] = []
        self.fail = False

    def __call__(self, minor: str) -> str:
        self.asked.append(minor)
        if self.fail:
            raise ConnectionError("package source unreachable")
        return f"{minor}.{self.patch}"


def create(api: k8s.Client, plural: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    return api.create(path(plural), body)


def get(api: k8s.Client, plural: str, name: str) -> dict[str, Any]:
    return api.get(path(plural, name))


def operations(api: k8s.Client) -> dict[str, dict[str, Any]]:
    items = api.list(path(DIRECTUPDATES))["items"]
    return {o["metadata"]["name"]: o for o in items}


def set_status(api: k8s.Client, plural: str, name: str, status: dict[str, Any]) -> None:
    api.patch(path(plural, name, "status"), {"status": status})


def set_phase(api: k8s.Client, name: str, phase: str) -> None:
    """What the coordinator would write."""
    set_status(api, DIRECTUPDATES, name, {"phase": phase})


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_scheduled_update_creates_one_operation_at_start_time(api: k8s.Client, base: datetime) -> None:
    start = base + timedelta(hours=2)
    create(api, SCHEDULEDUPDATES, "ScheduledUpdate", "upgrade-131",
           {"startTime": format_time(start), "template": {"version": "v1.31.4", "concurrency": 2}})
    clock = ManualClock(base)
    resolver = Resolver()
    scheduler = Scheduler(api, clock, resolver)

    assert scheduler.reconcile() == start
    su = get(api, SCHEDULEDUPDATES, "upgrade-131")
    assert su["status"]["phase"] == "Waiting" and condition(su, "Started")["reason"] == "WaitingForStartTime"
    clock.set(start - timedelta(seconds=1))
    assert scheduler.reconcile() == start
    assert operations(api) == {}

    clock.set(start)
    assert scheduler.reconcile() is None
    ops = operations(api)
    assert list(ops) == ["upgrade-131"]
    du = ops["upgrade-131"]
    assert du["spec"]["version"] == "v1.31.4" and du["spec"]["concurrency"] == 2
    assert du["metadata"]["labels"][LABEL_CREATED_BY] == "scheduledupdate"
    assert du["metadata"]["ownerReferences"][0]["uid"] == su["metadata"]["uid"]
    su = get(api, SCHEDULEDUPDATES, "upgrade-131")
    assert su["status"]["phase"] == "Started" and su["status"]["operation"] == "upgrade-131"
    assert su["status"]["observedGeneration"] == su["metadata"]["generation"]
    assert resolver.asked == []  # an exact version is not resolved

    # A crash between the create and the status write: a new scheduler finds its own
    # DirectUpdate and does not make a second one.
    set_status(api, SCHEDULEDUPDATES, "upgrade-131", {"phase": "Waiting", "operation": None})
    clock.advance(timedelta(hours=5))
    Scheduler(api, clock, resolver).reconcile()
    assert list(operations(api)) == ["upgrade-131"]
    su = get(api, SCHEDULEDUPDATES, "upgrade-131")
    assert su["status"]["phase"] == "Started" and su["status"]["operation"] == "upgrade-131"


def test_update_schedule_fires_in_its_time_zone(api: k8s.Client, base: datetime) -> None:
    day = [base.date() + timedelta(days=i) for i in range(8)]
    create(api, SCHEDULES, "UpdateSchedule", "nightly", {
        "schedule": "0 2 * * *", "timeZone": "America/New_York", "window": {"durationMinutes": 120},
        "blackoutDates": [day[1].isoformat()], "successfulHistoryLimit": 1, "failedHistoryLimit": 1,
        "template": {"version": "v1.31"},
    })
    resolver = Resolver()

    def firing(i: int) -> datetime:
        # 02:00 in New York is 06:00 or 07:00 UTC depending on the season; ask the zone.
        return datetime(day[i].year, day[i].month, day[i].day, 2, tzinfo=NEW_YORK).astimezone(UTC)

    clock = ManualClock(firing(0) - timedelta(minutes=1))
    scheduler = Scheduler(api, clock, resolver)
    assert scheduler.reconcile() == firing(0)
    us = get(api, SCHEDULES, "nightly")
    assert us["status"]["nextScheduleTime"] == format_time(firing(0)) and operations(api) == {}

    # Day 0: fires, resolves the minor, opens a 2-hour window.
    clock.set(firing(0))
    assert scheduler.reconcile() == firing(2)  # day 1 is a blackout date
    first = f"nightly-{firing(0):%y%m%d%H%M}"
    ops = operations(api)
    assert list(ops) == [first]
    du = ops[first]
    assert du["spec"]["version"] == "v1.31.7" and resolver.asked == ["v1.31"]
    ann = du["metadata"]["annotations"]
    assert ann[ANN_SCHEDULE] == "nightly" and ann[ANN_REQUESTED_VERSION] == "v1.31"
    assert du["metadata"]["labels"][LABEL_CREATED_BY] == "updateschedule"
    assert (ann[ANN_WINDOW_START], ann[ANN_WINDOW_END]) == (
        format_time(firing(0)), format_time(firing(0) + timedelta(hours=2)))
    us = get(api, SCHEDULES, "nightly")
    assert us["status"]["lastScheduleTime"] == format_time(firing(0))
    assert us["status"]["nextScheduleTime"] == format_time(firing(2))
    assert us["status"]["active"] == [first]

    # The window closes before the operation finishes; the blackout day passes with nothing.
    set_phase(api, first, "Paused")
    clock.set(firing(1) + timedelta(minutes=1))
    scheduler.reconcile()
    ops = operations(api)
    assert list(ops) == [first]
    assert ops[first]["metadata"]["annotations"][ANN_WINDOW_START] == format_time(firing(0))
    assert get(api, SCHEDULES, "nightly")["status"]["lastScheduleTime"] == format_time(firing(0))

    # Day 2: Forbid, so the same operation resumes in the new window instead of a second one.
    clock.set(firing(2) + timedelta(seconds=30))
    scheduler.reconcile()
    ops = operations(api)
    assert list(ops) == [first]
    ann = ops[first]["metadata"]["annotations"]
    assert (ann[ANN_WINDOW_START], ann[ANN_WINDOW_END]) == (
        format_time(firing(2)), format_time(firing(2) + timedelta(hours=2)))
    us = get(api, SCHEDULES, "nightly")
    assert condition(us, "Scheduled")["reason"] == "OperationResumed"
    assert us["status"]["lastScheduleTime"] == format_time(firing(2))

    # Days 3-5: one run per day once the previous one has finished; history is trimmed.
    set_phase(api, first, "Succeeded")
    names = [first]
    for i, outcome in [(3, "Failed"), (4, "Succeeded"), (5, "Succeeded")]:
        clock.set(firing(i))
        scheduler.reconcile()
        names.append(f"nightly-{firing(i):%y%m%d%H%M}")
        assert names[-1] in operations(api)
        set_phase(api, names[-1], outcome)
    clock.set(firing(6) - timedelta(minutes=5))
    scheduler.reconcile()
    # Kept: the newest success (day 5) and the newest failure (day 3); days 0 and 4 pruned.
    assert sorted(operations(api)) == sorted([names[1], names[3]])
    us = get(api, SCHEDULES, "nightly")
    assert [(h["name"], h["phase"]) for h in us["status"]["history"]] == [
        (names[3], "Succeeded"), (names[1], "Failed")]
    assert us["status"]["active"] == []
    assert resolver.asked == ["v1.31"] * 4


def test_missed_firing_after_downtime_starts_once_if_window_open(api: k8s.Client, base: datetime) -> None:
    create(api, SCHEDULES, "UpdateSchedule", "hourly", {
        "schedule": "0 * * * *", "window": {"durationMinutes": 30}, "template": {"version": "v1.31.2"},
    })
    clock = ManualClock(base + timedelta(hours=1))
    scheduler = Scheduler(api, clock, Resolver())
    scheduler.reconcile()
    assert list(operations(api)) == [f"hourly-{base + timedelta(hours=1):%y%m%d%H%M}"]
    set_phase(api, f"hourly-{base + timedelta(hours=1):%y%m%d%H%M}", "Succeeded")
    # Down from 01:00 to 04:40: 02:00-04:00 missed, 04:00's window closed at 04:30.
    clock.set(base + timedelta(hours=4, minutes=40))
    assert scheduler.reconcile() == base + timedelta(hours=5)
    assert len(operations(api)) == 1
    assert condition(get(api, SCHEDULES, "hourly"), "Scheduled")["reason"] == "MissedFiring"
    # Down until 06:10: only the 06:00 firing starts, ten minutes late.
    clock.set(base + timedelta(hours=6, minutes=10))
    scheduler.reconcile()
    assert sorted(operations(api))[-1] == f"hourly-{base + timedelta(hours=6):%y%m%d%H%M}"
    assert len(operations(api)) == 2
    assert "0:10:00 late" in condition(get(api, SCHEDULES, "hourly"), "Scheduled")["message"]


def test_suspend_and_resolver_outage(api: k8s.Client, base: datetime) -> None:
    create(api, SCHEDULES, "UpdateSchedule", "weekly", {
        "schedule": "30 3 * * *", "suspend": True, "window": {"durationMinutes": 60},
        "template": {"version": "v1.30"},
    })
    resolver = Resolver(patch=12)
    at = base + timedelta(hours=3, minutes=30)
    clock = ManualClock(at)
    scheduler = Scheduler(api, clock, resolver)
    assert scheduler.reconcile() is None
    us = get(api, SCHEDULES, "weekly")
    assert operations(api) == {} and "nextScheduleTime" not in us["status"]
    assert condition(us, "Scheduled")["reason"] == "Suspended"

    api.patch(path(SCHEDULES, "weekly"), {"spec": {"suspend": False}})
    resolver.fail = True
    clock.advance(60)
    assert scheduler.reconcile() == clock.now() + timedelta(seconds=30)  # retry soon
    us = get(api, SCHEDULES, "weekly")
    assert operations(api) == {} and condition(us, "Scheduled")["reason"] == "VersionResolutionFailed"
    assert "lastScheduleTime" not in us["status"]

    resolver.fail = False
    clock.advance(30)
    scheduler.reconcile()
    ops = operations(api)
    assert [o["spec"]["version"] for o in ops.values()] == ["v1.30.12"]
    assert get(api, SCHEDULES, "weekly")["status"]["lastScheduleTime"] == format_time(at)


@pytest.mark.parametrize(("spec", "field"), [
    ({"timeZone": "Mars/Olympus_Mons"}, "spec.timeZone"),
    ({"schedule": "0 2 31 2 *"}, "spec.schedule"),
])
def test_malformed_schedule_gets_condition_naming_field(api: k8s.Client, base: datetime, spec: dict[str, Any],
                                                        field: str) -> None:
    create(api, SCHEDULES, "UpdateSchedule", "broken", {"schedule": "0 2 * * *", "template": {"version": "v1.31"}}
           | spec)
    clock = ManualClock(base + timedelta(days=3))
    assert Scheduler(api, clock, Resolver()).reconcile() is None
    us = get(api, SCHEDULES, "broken")
    valid = condition(us, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert valid["message"].startswith(field + ":")
    assert operations(api) == {}


def test_crash_before_status_write_never_makes_two(api: k8s.Client, base: datetime) -> None:
    create(api, SCHEDULES, "UpdateSchedule", "nightly", {
        "schedule": "0 3 * * *", "window": {"durationMinutes": 60}, "template": {"version": "v1.31.2"},
    })
    clock = ManualClock(base + timedelta(hours=3, minutes=1))
    Scheduler(api, clock, Resolver()).reconcile()
    assert len(operations(api)) == 1
    # Lose the status write, as if the coordinator died right after the create.
    set_status(api, SCHEDULES, "nightly", {"lastScheduleTime": None, "active": None})
    clock.advance(120)
    Scheduler(api, clock, Resolver()).reconcile()
    assert len(operations(api)) == 1
    status = get(api, SCHEDULES, "nightly")["status"]
    assert status["lastScheduleTime"] == format_time(base + timedelta(hours=3))
    assert status["active"] == list(operations(api))


def test_name_taken_by_someone_else_is_reported(api: k8s.Client, base: datetime) -> None:
    create(api, DIRECTUPDATES, "DirectUpdate", "upgrade-x", {"version": "v1.30.1"})
    create(api, SCHEDULEDUPDATES, "ScheduledUpdate", "upgrade-x",
           {"startTime": format_time(base), "template": {"version": "v1.31.4"}})
    Scheduler(api, ManualClock(base), Resolver()).reconcile()
    su = get(api, SCHEDULEDUPDATES, "upgrade-x")
    assert su["status"]["phase"] == "Failed" and condition(su, "Started")["reason"] == "NameConflict"
    assert operations(api)["upgrade-x"]["spec"]["version"] == "v1.30.1"
