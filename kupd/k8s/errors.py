"""The one mapping from what the API edge raises to kupd's error values, and the retry policy.

Only what the edge is known to raise is mapped: an HTTP status (`ApiError`), a connection
failure or a timeout (urllib3's errors, `OSError`). Anything else is a bug in kupd and
propagates unchanged: it must never pass for an outage that a retry would cure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import urllib3

from kupd.errors import KupdError, NotFoundError, PermanentError, RetryableError
from kupd.k8s.client import ApiError, Client

# What a call through the client raises when the API server answers with an error or not at all.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (ApiError, urllib3.exceptions.HTTPError, OSError)

T = TypeVar("T")

PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 422})


class Conflict(RetryableError):
    """Optimistic-concurrency conflict (or AlreadyExists): re-read and try again."""


class NotFound(NotFoundError):
    pass


class Forbidden(PermanentError):
    pass


class Invalid(PermanentError):
    """The API server refused the object itself (400 Bad Request, 422 Invalid): repeating the
    same write cannot help."""


def retry_delay(status: int | None) -> float | None:
    """Seconds to wait before repeating a request that failed with HTTP `status` (None: no answer
    at all, the connection failed or timed out), or None when repeating it cannot help. Pure.

    Conflicts are retried at once after a re-read, throttling after a second, anything else
    after two; the refusals (bad request, unauthorized, forbidden, not found, invalid) are
    permanent.
    """
    if status in PERMANENT_STATUSES:
        return None
    if status == 409:
        return 0.2
    if status == 429:
        return 1.0
    return 2.0


def map_error(e: Exception, what: str) -> KupdError:
    """kupd's error value for a transport error `e` (see TRANSPORT_ERRORS) of the call `what`."""
    if not isinstance(e, TRANSPORT_ERRORS):
        raise TypeError(f"{what}: {type(e).__name__} is not an API transport error") from e
    if not isinstance(e, ApiError):
        return RetryableError(f"{what}: API unreachable: {type(e).__name__}: {str(e)[:200]}",
                              delay=retry_delay(None) or 2.0)
    delay = retry_delay(e.status)
    if e.status == 409:
        return Conflict(f"{what}: conflict", delay=delay or 0.2)
    if e.status == 429:
        return RetryableError(f"{what}: throttled", delay=delay or 1.0)
    if delay is not None:
        return RetryableError(f"{what}: API error {e.status}: {_reason(e)}", delay=delay)
    if e.status == 404:
        return NotFound(f"{what}: not found")
    if e.status in (401, 403):
        return Forbidden(f"{what}: forbidden ({e.status}): {_reason(e)}")
    if e.status in (400, 422):
        return Invalid(f"{what}: refused ({e.status}): {_reason(e)}")
    return PermanentError(f"{what}: refused ({e.status}): {_reason(e)}")


def _reason(e: ApiError) -> str:
    return str(e.message or e.reason)[:500]


def call(fn: Callable[..., T], what: str, *args: Any, **kwargs: Any) -> T:
    """Run one API call, mapping its transport errors to kupd's error types."""
    try:
        return fn(*args, **kwargs)
    except TRANSPORT_ERRORS as e:
        raise map_error(e, what) from e


def patch_or_create(api: Client, item: str, collection: str, body: dict[str, Any], what: str,
                    create_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge-patch the object at `item`, creating it in `collection` (from `create_body`, by
    default `body`) when it does not exist: one request for an object this process owns, no read."""
    try:
        new: dict[str, Any] = api.patch(item, body)
        return new
    except ApiError as e:
        if e.status != 404:
            raise map_error(e, what) from e
    except TRANSPORT_ERRORS as e:
        raise map_error(e, what) from e
    return call(api.create, what, collection, create_body or body)
