"""When a recurring UpdateSchedule fires and how long each maintenance window stays open.

Pure: no I/O and no clock of its own; every function takes the instants it reasons about.
All instants in and out are timezone-aware UTC; the cron expression is read in the schedule's
IANA time zone.

Cron semantics across daylight-saving changes (croniter is asked about local *wall-clock*
times only, and kupd maps each wall-clock time to an instant itself, because that is where
the ambiguity lives):

- A wall-clock time that does not exist (the hour skipped when clocks spring forward) fires
  once, at the first instant after the gap (e.g. 02:30 on the spring-forward night fires at
  03:00 local). Several such times (``*/15 2 * * *``) collapse into that one firing.
- A wall-clock time that happens twice (the hour repeated when clocks fall back) fires once,
  at its first occurrence (the daylight-saving one). The repeated hour fires nothing more.
- A firing whose local date is a blackout date is skipped, and a window that would run into
  a blackout date closes at the local midnight where that date begins.
- After downtime, at most one missed firing is started late: the most recent one, and only
  while its window is still open (`CronSchedule.due`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from kupd.errors import ValidationError

MIN_WINDOW_MINUTES = 15
MAX_WINDOW_MINUTES = 24 * 60
# Local time never moves backwards by more than this at a zone transition (real-world DST
# shifts are 30-120 minutes), so wall-clock candidates this far on either side of an instant
# cover every firing near it.
_FOLD_MARGIN = timedelta(hours=3)
# Bound on croniter steps in one search, so a pathological spec cannot spin the coordinator.
_MAX_STEPS = 200_000

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_FIELD = re.compile(r"^[A-Za-z0-9*/,?-]{1,64}$")
_TZ_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,3}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


@dataclass(frozen=True)
class Window:
    """A maintenance window: nodes may start in [start, end). `end` None means it never closes."""

    start: datetime
    end: datetime | None

    def contains(self, when: datetime) -> bool:
        return self.start <= when and (self.end is None or when < self.end)


@dataclass(frozen=True)
class Due:
    """What the schedule asks for at one moment (see `CronSchedule.due`)."""

    firing: datetime | None
    """The firing to act on now (start an operation, or resume the active one), or None."""
    window: Window | None
    """That firing's window."""
    missed: datetime | None = None
    """The most recent firing that was not acted on and whose window has closed since."""

    def late_by(self, now: datetime) -> timedelta:
        return now - self.firing if self.firing is not None else timedelta(0)


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    """A five-field cron expression, read in `tz`."""
    tz: ZoneInfo
    window_length: timedelta | None = None
    """How long the window stays open after each firing; None for no limit."""
    blackout: frozenset[date] = frozenset()
    """Local dates (in `tz`) on which the schedule never fires and no window stays open."""

    # -- construction -----------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        expression: object,
        time_zone: object = "UTC",
        window_minutes: object = None,
        blackout_dates: Iterable[object] = (),
        field_prefix: str = "spec",
    ) -> CronSchedule:
        """Build a schedule from the UpdateSchedule fields; ValidationError names the bad field."""
        return cls(
            expression=parse_cron(expression, f"{field_prefix}.schedule"),
            tz=parse_time_zone("UTC" if time_zone is None else time_zone, f"{field_prefix}.timeZone"),
            window_length=parse_window_minutes(window_minutes, f"{field_prefix}.window.durationMinutes"),
            blackout=parse_blackout_dates(blackout_dates, f"{field_prefix}.blackoutDates"),
        )

    # -- firings ----------------------------------------------------------------------
    def next_firing(self, after: datetime) -> datetime | None:
        """The first firing strictly after `after`, or None if the expression never fires again."""
        after = _utc(after, "after")
        seed = self._naive(after) - _FOLD_MARGIN
        for candidate in self._forward(seed):
            if candidate > after:
                return candidate
        return None

    def previous_firing(self, at: datetime) -> datetime | None:
        """The last firing at or before `at`, or None if there is none."""
        at = _utc(at, "at")
        seed = self._naive(at).replace(second=0, microsecond=0) + _FOLD_MARGIN + timedelta(minutes=1)
        for candidate in self._backward(seed):
            if candidate <= at:
                return candidate
        return None

    def firings(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every firing in (after, until], in order."""
        after, until = _utc(after, "after"), _utc(until, "until")
        for candidate in self._forward(self._naive(after) - _FOLD_MARGIN):
            if candidate > until:
                return
            if candidate > after:
                yield candidate

    # -- windows ----------------------------------------------------------------------
    def window_for(self, firing: datetime) -> Window:
        """The window that opens at `firing`, closed early by the next blackout date."""
        firing = _utc(firing, "firing")
        end = firing + self.window_length if self.window_length is not None else None
        local_day = firing.astimezone(self.tz).date()
        for day in sorted(d for d in self.blackout if d > local_day):
            blackout_start = self._to_utc(datetime.combine(day, time()))
            if end is None or blackout_start < end:
                end = blackout_start
            break
        return Window(firing, end)

    def window_at(self, now: datetime) -> Window | None:
        """The window `now` is inside, or None when no window is open."""
        firing = self.previous_firing(now)
        if firing is None:
            return None
        window = self.window_for(firing)
        return window if window.contains(now) else None

    def due(self, since: datetime | None, now: datetime) -> Due:
        """The missed-firing policy: the most recent firing after `since`, if its window is open.

        `since` is the last firing already acted on (or the schedule's creation time). Firings
        older than the most recent one are never started: after downtime at most one late
        firing runs, and only while its window still holds.
        """
        latest = self.previous_firing(now)
        if latest is None or (since is not None and latest <= _utc(since, "since")):
            return Due(None, None)
        window = self.window_for(latest)
        if window.contains(now):
            return Due(latest, window)
        return Due(None, None, missed=latest)

    # -- wall clock <-> instants ------------------------------------------------------
    def _naive(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz).replace(tzinfo=None)

    def _to_utc(self, wall: datetime) -> datetime:
        """The instant of a local wall-clock time: first occurrence if repeated, gap end if skipped."""
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if self._naive(first) == wall:
            return first
        # `wall` falls into a gap. Walk forward to the first wall-clock minute that exists;
        # the gap's end is that minute's instant. Gaps are at most a day (Samoa, 2011).
        probe = wall.replace(second=0, microsecond=0)
        for _ in range(2 * 24 * 60):
            probe += timedelta(minutes=1)
            instant = probe.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
            if self._naive(instant) == probe:
                return instant
        return first

    def _blacked_out(self, instant: datetime) -> bool:
        return bool(self.blackout) and instant.astimezone(self.tz).date() in self.blackout

    def _forward(self, seed: datetime) -> Iterator[datetime]:
        """Firings (as instants) whose wall-clock time is after the naive `seed`, ascending."""
        it = _croniter(self.expression, seed)
        previous: datetime | None = None
        for _ in range(_MAX_STEPS):
            wall = _step(it, forward=True)
            if wall is None:
                return
            instant = self._to_utc(wall)
            if self._blacked_out(instant):
                # Skip the rest of that local date in one jump.
                day = instant.astimezone(self.tz).date()
                it = _croniter(self.expression, datetime.combine(day + timedelta(days=1), time())
                               - timedelta(seconds=1))
                continue
            if instant != previous:
                previous = instant
                yield instant

    def _backward(self, seed: datetime) -> Iterator[datetime]:
        """Firings whose wall-clock time is before the naive `seed`, descending."""
        it = _croniter(self.expression, seed)
        previous: datetime | None = None
        for _ in range(_MAX_STEPS):
            wall = _step(it, forward=False)
            if wall is None:
                return
            instant = self._to_utc(wall)
            if self._blacked_out(instant):
                day = instant.astimezone(self.tz).date()
                it = _croniter(self.expression, datetime.combine(day, time()))
                continue
            if instant != previous:
                previous = instant
                yield instant


# -- field parsers (shared with the scheduler's re-validation) ----------------------------
def parse_cron(expression: object, field: str = "spec.schedule") -> str:
    """A five-field cron expression (or @daily-style macro), as croniter reads it."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError(field, "must be a five-field cron expression like '0 2 * * 6'")
    text = " ".join(expression.split())
    text = _MACROS.get(text.lower(), text)
    fields = text.split(" ")
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValidationError(
            field, f"{expression[:80]!r} is not a five-field cron expression (minute hour day month weekday)"
        )
    try:
        valid = croniter.is_valid(text)
    except CroniterError:
        valid = False
    if not valid:
        raise ValidationError(field, f"{expression[:80]!r} is not a valid cron expression")
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError) as e:
        raise ValidationError(field, f"{expression[:80]!r} never fires") from e
    return text


def parse_time_zone(name: object, field: str = "spec.timeZone") -> ZoneInfo:
    if not isinstance(name, str) or len(name) > 64 or not _TZ_NAME.match(name):
        raise ValidationError(field, f"{str(name)[:80]!r} is not an IANA time zone name like Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValidationError(field, f"unknown time zone {name!r}") from e


def parse_window_minutes(minutes: object, field: str = "spec.window.durationMinutes") -> timedelta | None:
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise ValidationError(field, "must be a whole number of minutes")
    if not MIN_WINDOW_MINUTES <= minutes <= MAX_WINDOW_MINUTES:
        raise ValidationError(field, f"{minutes} is out of range {MIN_WINDOW_MINUTES}..{MAX_WINDOW_MINUTES}")
    return timedelta(minutes=minutes)


def parse_blackout_dates(
    values: Iterable[object] | None, field: str = "spec.blackoutDates"
) -> frozenset[date]:
    days: set[date] = set()
    for i, value in enumerate(values or ()):
        if not isinstance(value, str) or not _DATE.match(value):
            raise ValidationError(f"{field}[{i}]", f"{str(value)[:40]!r} is not a date like 2026-12-24")
        try:
            days.add(date.fromisoformat(value))
        except ValueError as e:
            raise ValidationError(f"{field}[{i}]", f"{value!r} is not a calendar date") from e
    return frozenset(days)


def _croniter(expression: str, seed: datetime) -> croniter:
    return croniter(expression, seed)


def _step(it: croniter, forward: bool) -> datetime | None:
    try:
        value = it.get_next(datetime) if forward else it.get_prev(datetime)
    except CroniterBadDateError:
        return None
    assert isinstance(value, datetime)
    return value


def _utc(when: datetime, name: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name}={when!r} is naive; pass a timezone-aware time")
    return when.astimezone(UTC)
