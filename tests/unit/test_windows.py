"""The planner's window check: inside the window, and the expected node duration fits."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from kupd.clock import ManualClock
from kupd.errors import ValidationError
from kupd.protocol import ANN_WINDOW_END, ANN_WINDOW_START
from kupd.rfc3339 import format_time
from kupd.windows import (
    BEFORE_WINDOW,
    DOES_NOT_FIT,
    INSIDE_WINDOW,
    NO_WINDOW,
    WINDOW_CLOSED,
    WINDOW_TOO_SHORT,
    can_start_node,
    expected_node_seconds,
    window_annotations,
    window_from_annotations,
)

START = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)
END = START + timedelta(hours=2)


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


@pytest.mark.parametrize(("now", "expected", "allowed", "code", "resume_at"), [
    (at(-10), 600, False, BEFORE_WINDOW, START),
    (at(0), 600, True, INSIDE_WINDOW, None),
    (at(100), 600, True, INSIDE_WINDOW, None),
    (at(110), 600, True, INSIDE_WINDOW, None),  # exactly fits: ends as the window closes
    (at(111), 600, False, DOES_NOT_FIT, None),
    (at(120), 0, False, WINDOW_CLOSED, None),  # the end is exclusive
    (at(300), 600, False, WINDOW_CLOSED, None),
    (at(0), 3 * 3600, False, WINDOW_TOO_SHORT, None),
    (at(0), math.inf, False, WINDOW_TOO_SHORT, None),
])
def test_can_start_node(now: datetime, expected: float, allowed: bool, code: str,
                        resume_at: datetime | None) -> None:
    d = can_start_node(now, START, END, expected)
    assert (d.allowed, d.code, d.resume_at) == (allowed, code, resume_at)
    assert d.reason


def test_reasons_say_when_and_why() -> None:
    assert "2026-12-05T02:00:00Z" in can_start_node(at(-1), START, END, 60).reason
    not_fit = can_start_node(at(115), START, END, 600).reason
    assert "0:10:00" in not_fit and "2026-12-05T04:00:00Z" in not_fit and "next window" in not_fit


def test_no_window_and_open_ended_windows() -> None:
    assert can_start_node(at(0), None, None, 1e9).code == NO_WINDOW
    assert can_start_node(at(0), None, None, 1e9).allowed
    assert can_start_node(at(5), START, None, 1e9).allowed
    assert not can_start_node(at(119), None, END, 120).allowed
    assert can_start_node(at(-500), None, END, 120).allowed


def test_other_offsets_are_compared_as_instants() -> None:
    from zoneinfo import ZoneInfo

    berlin_now = at(30).astimezone(ZoneInfo("Europe/Berlin"))
    assert can_start_node(berlin_now, START, END, 60).allowed


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        can_start_node(datetime(2026, 12, 5, 2), START, END, 60)


@pytest.mark.parametrize(("measured", "default", "want"), [
    ([], 900.0, 900.0),
    ([300.0], 900.0, 300.0),
    ([100.0, 400.0, 250.0], 900.0, 400.0),  # < 10 samples: the slowest
    ([float(i) for i in range(1, 11)], 900.0, 9.0),  # p90 of 1..10, nearest rank
    ([float(i) for i in range(1, 101)], 900.0, 90.0),
    ([float("nan"), -5.0, 120.0, float("inf")], 900.0, 120.0),
    ([float("nan")], 42.0, 42.0),
])
def test_expected_node_seconds(measured: list[float], default: float, want: float) -> None:
    assert expected_node_seconds(measured, default) == want


def test_annotations_round_trip() -> None:
    ann = window_annotations(START, END)
    assert ann == {ANN_WINDOW_START: "2026-12-05T02:00:00Z", ANN_WINDOW_END: "2026-12-05T04:00:00Z"}
    assert window_from_annotations({k: v for k, v in ann.items() if v}) == (START, END)
    assert window_annotations(START, None)[ANN_WINDOW_END] is None
    assert window_from_annotations({}) == (None, None)
    assert window_from_annotations(None) == (None, None)
    assert window_from_annotations({ANN_WINDOW_START: "2026-12-05T03:00:00+01:00"}) == (START, None)


@pytest.mark.parametrize("annotations", [
    {ANN_WINDOW_START: "tomorrow"},
    {ANN_WINDOW_END: "2026-12-05T04:00:00"},  # no offset
    {ANN_WINDOW_START: "2026-12-05T04:00:00Z", ANN_WINDOW_END: "2026-12-05T02:00:00Z"},
])
def test_bad_annotations_name_the_annotation(annotations: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as e:
        window_from_annotations(annotations)
    assert e.value.field.startswith("metadata.annotations[kupd.io/window-")


def test_format_time_drops_fraction() -> None:
    assert format_time(START + timedelta(microseconds=5)) == "2026-12-05T02:00:00Z"


def test_manual_clock() -> None:
    clock = ManualClock(START)
    assert clock.now() == START
    assert clock.advance(90) == START + timedelta(seconds=90)
    assert clock.advance(timedelta(hours=1)) == START + timedelta(seconds=3690)
    with pytest.raises(ValueError, match="naive"):
        clock.set(datetime(2026, 1, 1))


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00",
                                  "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z"])
def test_times_outside_the_supported_range_are_validation_errors(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        window_from_annotations({ANN_WINDOW_START: text})
    assert caught.value.field == f"metadata.annotations[{ANN_WINDOW_START}]"
    assert "supported range" in str(caught.value)
