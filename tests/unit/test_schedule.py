"""Cron firings in a time zone (including daylight-saving edges), blackout dates, windows, the
missed-firing policy, and the scheduler's pure decisions."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from kupd.errors import ValidationError
from kupd.protocol import ANN_WINDOW_END, ANN_WINDOW_START
from kupd.schedule import CronSchedule, Window
from kupd.scheduler import (
    ANN_SCHEDULE,
    ANN_SCHEDULED_TIME,
    LABEL_CREATED_BY,
    LABEL_CREATOR_UID,
    R_CREATED,
    R_INVALID_SPEC,
    R_MISSED,
    R_RESUMED,
    R_SUSPENDED,
    R_WAITING,
    decide_scheduled_update,
    decide_update_schedule,
    merge_conditions,
    operation_name,
    resolve_version,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(s: CronSchedule, when: datetime) -> str:
    return when.astimezone(s.tz).strftime("%Y-%m-%d %H:%M %Z")


def all_firings(s: CronSchedule, start: datetime, days: int) -> list[datetime]:
    return list(s.firings(start, start + timedelta(days=days)))


# -- plain firings ------------------------------------------------------------------------
def test_fires_at_local_time_of_its_zone() -> None:
    s = CronSchedule.parse("0 2 * * sat", "Europe/Berlin")
    # Sat 2026-12-05 02:00 CET is 01:00 UTC.
    assert s.next_firing(utc(2026, 12, 1)) == utc(2026, 12, 5, 1)
    assert s.next_firing(utc(2026, 12, 5, 1)) == utc(2026, 12, 12, 1)  # strictly after
    assert s.previous_firing(utc(2026, 12, 5, 1)) == utc(2026, 12, 5, 1)  # at or before
    assert s.previous_firing(utc(2026, 12, 5, 0, 59)) == utc(2026, 11, 28, 1)


def test_summer_and_winter_offsets() -> None:
    s = CronSchedule.parse("30 3 * * *", "America/New_York")
    assert s.next_firing(utc(2026, 7, 1)) == utc(2026, 7, 1, 7, 30)  # EDT, UTC-4
    assert s.next_firing(utc(2026, 1, 1)) == utc(2026, 1, 1, 8, 30)  # EST, UTC-5


def test_firings_between_is_half_open() -> None:
    s = CronSchedule.parse("0 */6 * * *", "UTC")
    assert list(s.firings(utc(2026, 1, 1), utc(2026, 1, 1, 12))) == [utc(2026, 1, 1, 6), utc(2026, 1, 1, 12)]


# -- daylight saving ----------------------------------------------------------------------
def test_spring_forward_skipped_time_fires_once_at_gap_end() -> None:
    # Europe/Berlin 2026-03-29: 02:00 CET -> 03:00 CEST; 02:30 does not exist that night.
    s = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    got = [local(s, f) for f in all_firings(s, utc(2026, 3, 27, 12), 3)]
    assert got == ["2026-03-28 02:30 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"]


def test_spring_forward_collapses_many_skipped_times_into_one_firing() -> None:
    # America/New_York 2026-03-08: 02:00 EST -> 03:00 EDT.
    s = CronSchedule.parse("*/15 2 * * *", "America/New_York")
    night = all_firings(s, utc(2026, 3, 8, 5), 2)
    assert [local(s, f) for f in night[:2]] == ["2026-03-08 03:00 EDT", "2026-03-09 02:00 EDT"]


def test_spring_forward_does_not_duplicate_a_firing_at_gap_end() -> None:
    s = CronSchedule.parse("30 2,3 * * *", "Europe/Berlin")
    got = [local(s, f) for f in all_firings(s, utc(2026, 3, 28, 12), 1)]
    assert got == ["2026-03-29 03:00 CEST", "2026-03-29 03:30 CEST"]


def test_fall_back_repeated_time_fires_once_at_first_occurrence() -> None:
    # Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice.
    s = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    got = all_firings(s, utc(2026, 10, 23, 12), 3)
    assert [local(s, f) for f in got] == ["2026-10-24 02:30 CEST", "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"]
    assert got[1] == utc(2026, 10, 25, 0, 30)  # the first (summer-time) 02:30


def test_fall_back_repeated_hour_fires_nothing_more() -> None:
    # America/New_York 2026-11-01: 02:00 EDT -> 01:00 EST; 01:xx happens twice.
    s = CronSchedule.parse("*/20 1 * * *", "America/New_York")
    got = [local(s, f) for f in all_firings(s, utc(2026, 11, 1, 4), 2)]
    assert got[:4] == ["2026-11-01 01:00 EDT", "2026-11-01 01:20 EDT", "2026-11-01 01:40 EDT",
                       "2026-11-02 01:00 EST"]


def test_next_and_previous_from_inside_the_repeated_hour() -> None:
    s = CronSchedule.parse("30 1 * * *", "America/New_York")
    second_pass = utc(2026, 11, 1, 6, 10)  # 01:10 EST, after 01:30 EDT already fired
    assert s.previous_firing(second_pass) == utc(2026, 11, 1, 5, 30)
    assert s.next_firing(second_pass) == utc(2026, 11, 2, 6, 30)


def test_half_hour_dst_zone() -> None:
    # Australia/Lord_Howe moves by 30 minutes: 2026-04-05 02:00 -> 01:30.
    s = CronSchedule.parse("45 1 * * *", "Australia/Lord_Howe")
    got = all_firings(s, utc(2026, 4, 3), 3)
    assert len(got) == len(set(got)) == 3
    assert all(f.astimezone(s.tz).strftime("%H:%M") == "01:45" for f in got)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata"])
def test_firings_strictly_increase_and_agree_with_next(zone: str) -> None:
    s = CronSchedule.parse("30 * * * *", zone)
    start = utc(2026, 3, 1)
    seen = all_firings(s, start, 250)
    assert all(a < b for a, b in itertools.pairwise(seen))
    for f in seen[::97]:
        assert s.previous_firing(f) == f
        assert s.next_firing(f - timedelta(seconds=1)) == f


# -- blackout dates and windows -----------------------------------------------------------
def test_blackout_date_in_schedule_zone_is_skipped() -> None:
    # 2026-12-24 01:30 in Tokyo is still 2026-12-23 in UTC: the local date decides.
    s = CronSchedule.parse("30 1 * * *", "Asia/Tokyo", blackout_dates=["2026-12-24", "2026-12-25"])
    got = [local(s, f) for f in all_firings(s, utc(2026, 12, 22), 4)]
    assert got == ["2026-12-23 01:30 JST", "2026-12-26 01:30 JST"]
    assert s.previous_firing(utc(2026, 12, 25, 12)) == utc(2026, 12, 22, 16, 30)


def test_window_follows_firing_and_closes_at_blackout_midnight() -> None:
    s = CronSchedule.parse("0 22 * * *", "Europe/Berlin", window_minutes=240, blackout_dates=["2026-12-24"])
    plain = s.window_for(utc(2026, 12, 21, 21))
    assert plain == Window(utc(2026, 12, 21, 21), utc(2026, 12, 22, 1))
    clipped = s.window_for(utc(2026, 12, 23, 21))  # 22:00 on the 23rd, blackout starts at midnight
    assert clipped == Window(utc(2026, 12, 23, 21), utc(2026, 12, 23, 23))


def test_window_over_dst_change_is_elapsed_time() -> None:
    s = CronSchedule.parse("0 1 * * *", "Europe/Berlin", window_minutes=180)
    w = s.window_for(utc(2026, 3, 29, 0))  # 01:00 CET, clocks jump at 02:00
    assert w.end is not None and local(s, w.end) == "2026-03-29 05:00 CEST"


def test_window_at() -> None:
    s = CronSchedule.parse("0 2 * * *", "UTC", window_minutes=60)
    assert s.window_at(utc(2026, 5, 1, 2, 30)) == Window(utc(2026, 5, 1, 2), utc(2026, 5, 1, 3))
    assert s.window_at(utc(2026, 5, 1, 3)) is None
    assert s.window_at(utc(2026, 5, 1, 1, 59)) is None
    assert CronSchedule.parse("0 2 * * *", "UTC").window_at(utc(2026, 5, 9)) == Window(utc(2026, 5, 8, 2), None)


# -- missed firings -----------------------------------------------------------------------
def test_due_at_most_one_late_firing_inside_its_window() -> None:
    s = CronSchedule.parse("0 * * * *", "UTC", window_minutes=30)
    since = utc(2026, 5, 1, 0)
    # Down from 00:05 to 03:10: 01:00, 02:00, 03:00 missed; only 03:00 starts, late.
    due = s.due(since, utc(2026, 5, 1, 3, 10))
    assert due.firing == utc(2026, 5, 1, 3) and due.late_by(utc(2026, 5, 1, 3, 10)) == timedelta(minutes=10)
    # At 03:40 the 03:00 window has closed: nothing starts, the miss is reported.
    late = s.due(since, utc(2026, 5, 1, 3, 40))
    assert late.firing is None and late.missed == utc(2026, 5, 1, 3)
    # Already acted on.
    assert s.due(utc(2026, 5, 1, 3), utc(2026, 5, 1, 3, 10)).firing is None
    assert s.due(None, utc(2026, 5, 1, 3)).firing == utc(2026, 5, 1, 3)


def test_due_without_window_starts_only_the_latest_missed_firing() -> None:
    s = CronSchedule.parse("0 2 * * *", "UTC")
    due = s.due(utc(2026, 5, 1, 2), utc(2026, 5, 9, 12))
    assert due.firing == utc(2026, 5, 9, 2) and due.window == Window(utc(2026, 5, 9, 2), None)


# -- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"expression": "0 2 * *"}, "spec.schedule"),
    ({"expression": "0 2 * * * *"}, "spec.schedule"),
    ({"expression": "61 2 * * *"}, "spec.schedule"),
    ({"expression": "0 2 31 2 *"}, "spec.schedule"),
    ({"expression": "0 2 * * *; rm -rf /"}, "spec.schedule"),
    ({"expression": 7}, "spec.schedule"),
    ({"time_zone": "Mars/Olympus_Mons"}, "spec.timeZone"),
    ({"time_zone": "../../etc/passwd"}, "spec.timeZone"),
    ({"window_minutes": 5}, "spec.window.durationMinutes"),
    ({"window_minutes": "60"}, "spec.window.durationMinutes"),
    ({"blackout_dates": ["2026-02-30"]}, "spec.blackoutDates[0]"),
    ({"blackout_dates": ["2026-12-24", "24.12.2026"]}, "spec.blackoutDates[1]"),
])
def test_bad_fields_are_named(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"expression": "0 2 * * *", "time_zone": "UTC"} | kwargs
    with pytest.raises(ValidationError) as e:
        CronSchedule.parse(**args)
    assert e.value.field == field


def test_names_and_macros_accepted() -> None:
    assert CronSchedule.parse("0 2 * jan-mar sat,sun", "UTC").next_firing(utc(2026, 1, 1)) == utc(2026, 1, 3, 2)
    assert CronSchedule.parse("@daily", "UTC").expression == "0 0 * * *"
    assert CronSchedule.parse("0 2 * * *", None).tz.key == "UTC"
    assert CronSchedule.parse("0 2 * * *", blackout_dates=["2026-01-01"]).blackout == {date(2026, 1, 1)}


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        CronSchedule.parse("0 2 * * *").next_firing(datetime(2026, 1, 1))


# -- the scheduler's decisions ------------------------------------------------------------
TEMPLATE = {"version": "v1.31"}


def update_schedule(**spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {})
    return {
        "apiVersion": "kupd.io/v1alpha1", "kind": "UpdateSchedule",
        "metadata": {"name": "nightly", "uid": "u-1", "generation": 2, "resourceVersion": "7",
                     "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": {"schedule": "0 2 * * *", "timeZone": "UTC", "window": {"durationMinutes": 120},
                 "template": TEMPLATE} | spec,
        "status": status,
    }


def child(name: str, firing: str, phase: str | None, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {LABEL_CREATED_BY: "updateschedule", LABEL_CREATOR_UID: "u-1"},
                     "annotations": {ANN_SCHEDULE: "nightly", ANN_SCHEDULED_TIME: firing} | annotations,
                     "ownerReferences": [{"uid": "u-1"}]},
        "status": {"phase": phase} if phase else {},
    }


def test_operation_names_fit_63_characters() -> None:
    assert operation_name("a" * 52, utc(2026, 12, 5, 2, 0)) == "a" * 52 + "-2612050200"
    assert len(operation_name("a" * 52, utc(2026, 12, 5))) == 63


def test_schedule_fires_with_window_annotations() -> None:
    d = decide_update_schedule(update_schedule(), [], utc(2026, 12, 5, 2, 0, 30))
    assert d.create is not None and d.create.name == "nightly-2612050200"
    assert d.create.annotations[ANN_WINDOW_START] == "2026-12-05T02:00:00Z"
    assert d.create.annotations[ANN_WINDOW_END] == "2026-12-05T04:00:00Z"
    assert d.create.annotations[ANN_SCHEDULE] == "nightly"
    assert d.create.owner["uid"] == "u-1" and d.create.owner["kind"] == "UpdateSchedule"
    assert d.status["lastScheduleTime"] == "2026-12-05T02:00:00Z"
    assert d.status["nextScheduleTime"] == "2026-12-06T02:00:00Z"
    assert d.status["active"] == ["nightly-2612050200"]
    assert d.wake == utc(2026, 12, 6, 2)
    assert [c.reason for c in d.conditions] == ["SpecValid", R_CREATED]


def test_forbid_moves_window_of_active_operation_instead_of_creating() -> None:
    obj = update_schedule(status={"lastScheduleTime": "2026-12-05T02:00:00Z"})
    old = child("nightly-2612050200", "2026-12-05T02:00:00Z", "Paused",
                **{ANN_WINDOW_START: "2026-12-05T02:00:00Z", ANN_WINDOW_END: "2026-12-05T04:00:00Z"})
    d = decide_update_schedule(obj, [old], utc(2026, 12, 6, 2, 1))
    assert d.create is None
    assert d.set_windows == {"nightly-2612050200": {ANN_WINDOW_START: "2026-12-06T02:00:00Z",
                                                    ANN_WINDOW_END: "2026-12-06T04:00:00Z"}}
    assert d.status["lastScheduleTime"] == "2026-12-06T02:00:00Z"
    assert d.conditions[-1].reason == R_RESUMED


def test_allow_creates_and_still_moves_windows() -> None:
    obj = update_schedule(concurrencyPolicy="Allow", status={"lastScheduleTime": "2026-12-05T02:00:00Z"})
    old = child("nightly-2612050200", "2026-12-05T02:00:00Z", "Running")
    d = decide_update_schedule(obj, [old], utc(2026, 12, 6, 2, 1))
    assert d.create is not None and d.create.name == "nightly-2612060200"
    assert set(d.set_windows) == {"nightly-2612050200"}
    assert d.status["active"] == ["nightly-2612050200", "nightly-2612060200"]


def test_not_yet_due_and_already_done_change_nothing() -> None:
    obj = update_schedule(status={"lastScheduleTime": "2026-12-05T02:00:00Z"})
    d = decide_update_schedule(obj, [child("nightly-2612050200", "2026-12-05T02:00:00Z", "Running")],
                               utc(2026, 12, 5, 3))
    assert d.create is None and not d.set_windows and "lastScheduleTime" not in d.status


def test_created_before_a_crash_is_not_created_again() -> None:
    mine = child("nightly-2612050200", "2026-12-05T02:00:00Z", None,
                 **{ANN_WINDOW_START: "2026-12-05T02:00:00Z", ANN_WINDOW_END: "2026-12-05T04:00:00Z"})
    d = decide_update_schedule(update_schedule(), [mine], utc(2026, 12, 5, 2, 5))
    assert d.create is None and not d.set_windows
    assert d.status["lastScheduleTime"] == "2026-12-05T02:00:00Z" and d.conditions[-1].reason == R_CREATED


def test_missed_window_is_reported_and_not_started() -> None:
    d = decide_update_schedule(update_schedule(status={"lastScheduleTime": "2026-12-04T02:00:00Z"}), [],
                               utc(2026, 12, 5, 9))
    assert d.create is None and d.conditions[-1].reason == R_MISSED
    assert "2026-12-05T04:00:00Z" in d.conditions[-1].message


def test_history_limits_prune_oldest_finished() -> None:
    kids = [child(f"nightly-26120{i}0200", f"2026-12-0{i}T02:00:00Z", p)
            for i, p in enumerate(["Succeeded", "Failed", "Succeeded", "Failed", "Succeeded", "Succeeded"], 1)]
    obj = update_schedule(successfulHistoryLimit=2, failedHistoryLimit=1,
                          status={"lastScheduleTime": "2026-12-06T02:00:00Z"})
    d = decide_update_schedule(obj, kids, utc(2026, 12, 6, 12))
    assert sorted(d.delete) == ["nightly-2612010200", "nightly-2612020200", "nightly-2612030200"]
    assert [h["name"] for h in d.status["history"]] == [
        "nightly-2612060200", "nightly-2612050200", "nightly-2612040200"]
    assert d.status["active"] == []


def test_suspend_stops_firing() -> None:
    d = decide_update_schedule(update_schedule(suspend=True), [], utc(2026, 12, 5, 2))
    assert d.create is None and d.status["nextScheduleTime"] is None and d.wake is None
    assert d.conditions[-1].reason == R_SUSPENDED


def test_no_firing_before_the_schedule_existed() -> None:
    obj = update_schedule()
    obj["metadata"]["creationTimestamp"] = "2026-12-05T03:00:00Z"
    assert decide_update_schedule(obj, [], utc(2026, 12, 5, 3, 30)).create is None


@pytest.mark.parametrize(("spec", "field"), [
    ({"timeZone": "Mars/Olympus_Mons"}, "spec.timeZone"),
    ({"schedule": "0 2 30 2 *"}, "spec.schedule"),
    ({"concurrencyPolicy": "Replace"}, "spec.concurrencyPolicy"),
    ({"template": {"version": "latest"}}, "spec.template.version"),
    ({"successfulHistoryLimit": -1}, "spec.successfulHistoryLimit"),
])
def test_malformed_schedule_gets_condition_naming_field(spec: dict[str, Any], field: str) -> None:
    d = decide_update_schedule(update_schedule(**spec), [], utc(2026, 12, 5, 2))
    assert d.create is None and d.wake is None
    assert d.conditions[0].reason == R_INVALID_SPEC and d.conditions[0].message.startswith(field + ":")


def scheduled_update(start: str = "2026-12-05T02:00:00Z", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "kupd.io/v1alpha1", "kind": "ScheduledUpdate",
            "metadata": {"name": "upgrade-131", "uid": "s-1", "generation": 1, "resourceVersion": "3"},
            "spec": {"startTime": start, "template": {"version": "v1.31.4"}}, "status": status}


def test_scheduled_update_waits_then_starts_once() -> None:
    waiting = decide_scheduled_update(scheduled_update(), None, utc(2026, 12, 5, 1, 59))
    assert waiting.create is None and waiting.wake == utc(2026, 12, 5, 2) and waiting.status["phase"] == "Waiting"
    assert waiting.conditions[-1].reason == R_WAITING
    due = decide_scheduled_update(scheduled_update(), None, utc(2026, 12, 5, 2))
    assert due.create is not None and due.create.name == "upgrade-131"
    assert due.create.labels[LABEL_CREATED_BY] == "scheduledupdate"
    assert due.status == {"observedGeneration": 1, "phase": "Started", "operation": "upgrade-131"}
    done = decide_scheduled_update(scheduled_update(phase="Started", operation="upgrade-131"), None,
                                   utc(2026, 12, 6))
    assert done.create is None


def test_scheduled_update_with_bad_start_time_fails_naming_field() -> None:
    d = decide_scheduled_update(scheduled_update("2026-12-05T02:00:00"), None, utc(2026, 12, 5, 2))
    assert d.status["phase"] == "Failed" and d.conditions[0].message.startswith("spec.startTime:")


def test_resolve_version() -> None:
    assert resolve_version("v1.31", lambda m: m + ".7") == "v1.31.7"
    assert resolve_version("v1.31.2", lambda m: pytest.fail("not asked")) == "v1.31.2"
    with pytest.raises(ValidationError):
        resolve_version("v1.31", lambda m: "v1.32.0")
    with pytest.raises(ValidationError):
        resolve_version("v1.31", lambda m: "1.31.2; reboot")


def test_merge_conditions_keeps_transition_time_when_status_unchanged() -> None:
    from kupd.scheduler import Condition

    old = [{"type": "Valid", "status": "True", "reason": "SpecValid", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}, {"type": "Other", "status": "True"}]
    new = merge_conditions(old, [Condition("Valid", "True", "SpecValid", "ok"),
                                 Condition("Scheduled", "False", "NoFiringYet", "")], utc(2026, 2, 1), 4)
    by = {c["type"]: c for c in new}
    assert by["Valid"]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and by["Valid"]["observedGeneration"] == 4
    assert by["Scheduled"]["lastTransitionTime"] == "2026-02-01T00:00:00Z"
    assert "Other" in by


@pytest.mark.parametrize("start", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+14:00"])
def test_a_start_time_out_of_range_is_invalid_on_that_object(start: str) -> None:
    d = decide_scheduled_update(scheduled_update(start), None, utc(2026, 12, 5, 2))
    assert d.create is None and d.status["phase"] == "Failed"
    assert d.conditions[0].reason == R_INVALID_SPEC and "spec.startTime" in d.conditions[0].message
    assert "supported range" in d.conditions[0].message


@pytest.mark.parametrize("last", ["9999-12-31T23:59:59-01:00", "not-a-time", 12345])
def test_a_stored_last_schedule_time_out_of_range_is_invalid_on_that_object(last: object) -> None:
    d = decide_update_schedule(update_schedule(status={"lastScheduleTime": last}), [], utc(2026, 12, 5, 2, 0, 30))
    assert d.create is None
    assert d.conditions[0].reason == R_INVALID_SPEC and "status.lastScheduleTime" in d.conditions[0].message
