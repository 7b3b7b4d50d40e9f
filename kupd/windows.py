"""May a node start its upgrade now, given the operation's maintenance window?

Pure functions the planner calls for every node it considers granting. The window reaches the
planner as two annotations on the DirectUpdate (written by the scheduler, see
docs/usage/schedules.md): `kupd.io/window-start` and `kupd.io/window-end`, RFC 3339 in UTC.
An operation without them has no window and nodes may start at any time.

A node starts only if it is inside the window *and* its expected duration fits before the
window closes; otherwise the operation pauses and resumes when the next window opens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kupd.errors import ValidationError
from kupd.protocol import ANN_WINDOW_END, ANN_WINDOW_START
from kupd.rfc3339 import format_time, parse_time

DEFAULT_NODE_SECONDS = 15 * 60.0
"""Expected duration of one node before any node of the operation has been measured."""

# Reasons, CamelCase so the planner can put them straight into a Condition's `reason`.
NO_WINDOW = "NoMaintenanceWindow"
INSIDE_WINDOW = "InsideMaintenanceWindow"
BEFORE_WINDOW = "WaitingForMaintenanceWindow"
WINDOW_CLOSED = "MaintenanceWindowClosed"
DOES_NOT_FIT = "NodeDoesNotFitInWindow"
WINDOW_TOO_SHORT = "MaintenanceWindowTooShort"


@dataclass(frozen=True)
class WindowDecision:
    allowed: bool
    reason: str
    """A sentence for status and Events: why the node may or may not start."""
    resume_at: datetime | None
    """When asking again can change the answer; None if only the next window can (unknown here)."""
    code: str = INSIDE_WINDOW
    """The decision as a CamelCase Condition reason (one of the constants of this module)."""


def can_start_node(
    now: datetime,
    window_start: datetime | None,
    window_end: datetime | None,
    expected_seconds: float,
) -> WindowDecision:
    """Whether a node expected to take `expected_seconds` may start at `now`.

    The window is [window_start, window_end). Either bound may be None (open on that side).
    """
    now = _utc(now, "now")
    start = _utc(window_start, "window_start") if window_start is not None else None
    end = _utc(window_end, "window_end") if window_end is not None else None
    expected = max(0.0, float(expected_seconds)) if math.isfinite(expected_seconds) else math.inf
    if start is None and end is None:
        return WindowDecision(True, "no maintenance window: nodes may start at any time", None, NO_WINDOW)
    if start is not None and now < start:
        return WindowDecision(
            False, f"maintenance window opens at {format_time(start)}", start, BEFORE_WINDOW,
        )
    if end is None:
        opened = f" opened at {format_time(start)}" if start is not None else ""
        return WindowDecision(True, f"inside the maintenance window{opened}", None)
    if now >= end:
        return WindowDecision(
            False,
            f"maintenance window closed at {format_time(end)}; the operation resumes in the next window",
            None, WINDOW_CLOSED,
        )
    left = (end - now).total_seconds()
    if start is not None and expected > (end - start).total_seconds():
        return WindowDecision(
            False,
            f"a node is expected to take {_secs(expected)}, longer than the whole maintenance window "
            f"({_secs((end - start).total_seconds())}); lengthen spec.window.durationMinutes",
            None, WINDOW_TOO_SHORT,
        )
    if expected > left:
        return WindowDecision(
            False,
            f"a node is expected to take {_secs(expected)} but the maintenance window closes at "
            f"{format_time(end)} ({_secs(left)} left); the operation resumes in the next window",
            None, DOES_NOT_FIT,
        )
    return WindowDecision(
        True,
        f"inside the maintenance window until {format_time(end)}; a node is expected to take "
        f"{_secs(expected)} ({_secs(left)} left)",
        None, INSIDE_WINDOW,
    )


def expected_node_seconds(measured: Iterable[float], default: float = DEFAULT_NODE_SECONDS) -> float:
    """How long the next node is expected to take: the p90 (nearest rank) of the durations
    measured so far in this operation, or `default` when none has been measured yet.

    With fewer than ten samples the p90 is the slowest node, which is the cautious answer
    while little is known. Negative, NaN and infinite samples are ignored.
    """
    samples = sorted(s for s in (float(x) for x in measured) if math.isfinite(s) and s >= 0)
    if not samples:
        return float(default)
    rank = math.ceil(0.9 * len(samples))
    return samples[rank - 1]


def window_from_annotations(annotations: Mapping[str, str] | None) -> tuple[datetime | None, datetime | None]:
    """The window of a DirectUpdate from its annotations; ValidationError names a bad one."""
    annotations = annotations or {}
    start = _parse_annotation(annotations, ANN_WINDOW_START)
    end = _parse_annotation(annotations, ANN_WINDOW_END)
    if start is not None and end is not None and end <= start:
        raise ValidationError(f"metadata.annotations[{ANN_WINDOW_END}]", "must be after the window start")
    return start, end


def window_annotations(start: datetime, end: datetime | None) -> dict[str, str | None]:
    """The annotations that carry a window (None values delete an annotation in a merge patch)."""
    return {
        ANN_WINDOW_START: format_time(start),
        ANN_WINDOW_END: format_time(end) if end is not None else None,
    }


def _parse_annotation(annotations: Mapping[str, str], key: str) -> datetime | None:
    value = annotations.get(key)
    if value is None or value == "":
        return None
    return parse_time(value, f"metadata.annotations[{key}]")


def _secs(seconds: float) -> str:
    if math.isinf(seconds):
        return "an unknown time"
    return str(timedelta(seconds=round(seconds)))


def _utc(when: datetime, name: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name}={when!r} is naive; pass a timezone-aware time")
    return when.astimezone(UTC)
