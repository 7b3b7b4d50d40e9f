"""RFC 3339 times, as Kubernetes writes and reads them: the one place kupd formats or parses one.

Kubernetes' timestamps are UTC with a Z; metav1.Time has whole seconds, metav1.MicroTime (a
Lease's renewTime) microseconds. Pure.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kupd.errors import ValidationError

# Times kupd accepts from stored objects, annotations and reports. Arithmetic on them (a window's
# end, a wake-up, a bake time) must not overflow datetime, so a wide margin is kept from its limits.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{when!r} is naive; pass a timezone-aware time")
    return when.astimezone(UTC)


def format_time(when: datetime) -> str:
    """metav1.Time: UTC with a Z, whole seconds (a fraction is dropped)."""
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_micro(when: datetime | None = None) -> str:
    """metav1.MicroTime (a Lease's acquireTime and renewTime) of `when`, by default now."""
    return _utc(when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> str:
    """The time now, as metav1.Time."""
    return format_time(datetime.now(UTC))


def parse_time(text: object, field: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset, as an aware UTC datetime; a ValidationError
    naming `field` otherwise."""
    if not isinstance(text, str) or not 10 <= len(text) <= 40:
        raise ValidationError(field, "must be an RFC 3339 time like 2026-12-05T02:00:00Z")
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError as e:
        raise ValidationError(field, f"{text!r} is not an RFC 3339 time like 2026-12-05T02:00:00Z") from e
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, f"{text!r} has no time zone offset; add Z or +hh:mm")
    try:
        # Within a day of year 1 or 9999 the offset can carry the instant out of datetime's range:
        # the CRDs' date-time format allows `9999-12-31T23:59:59-01:00`.
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_TIME <= utc <= MAX_TIME:
        raise ValidationError(field, f"{text!r} is outside the supported range {MIN_TIME:%Y}..{MAX_TIME:%Y}")
    return utc


def parse_or_none(text: object) -> datetime | None:
    """An RFC 3339 timestamp read from an object kupd did not necessarily write: None when it is
    absent or not a time with an offset."""
    if not text:
        return None
    try:
        return parse_time(text, "time")
    except ValidationError:
        return None
