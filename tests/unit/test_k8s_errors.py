"""The one mapping of API failures (kupd.k8s.errors): HTTP statuses and connection failures
become kupd's error values by the pure retry policy; anything else is a bug and is never
passed off as a retryable outage."""

from __future__ import annotations

import pytest
import urllib3

from kupd import k8s
from kupd.errors import RetryableError


@pytest.mark.parametrize(("status", "delay"), [
    (None, 2.0), (409, 0.2), (429, 1.0), (500, 2.0), (503, 2.0), (410, 2.0),
    (400, None), (401, None), (403, None), (404, None), (422, None),
])
def test_retry_policy(status: int | None, delay: float | None) -> None:
    assert k8s.retry_delay(status) == delay


@pytest.mark.parametrize(("status", "kind"), [
    (409, k8s.Conflict), (429, RetryableError), (503, RetryableError), (404, k8s.NotFound), (403, k8s.Forbidden),
    (401, k8s.Forbidden), (422, k8s.Invalid), (400, k8s.Invalid),
])
def test_statuses_map_by_the_policy(status: int, kind: type[Exception]) -> None:
    e = k8s.map_error(k8s.ApiError(status, "Reason", "the message"), "read x")
    assert type(e) is kind
    assert str(e).startswith("read x")
    assert isinstance(e, RetryableError) == (k8s.retry_delay(status) is not None)


@pytest.mark.parametrize("err", [ConnectionRefusedError("refused"), TimeoutError("timed out"),
                                 urllib3.exceptions.ProtocolError("reset"),
                                 urllib3.exceptions.ReadTimeoutError(None, "/x", "read timed out")])
def test_outages_are_retryable(err: Exception) -> None:
    e = k8s.map_error(err, "list nodes")
    assert isinstance(e, RetryableError) and "unreachable" in str(e)


def test_a_bug_is_not_an_outage() -> None:
    with pytest.raises(TypeError, match="not an API transport error"):
        k8s.map_error(KeyError("status"), "read x")

    def buggy() -> dict[str, object]:
        raise KeyError("metadata")

    with pytest.raises(KeyError):
        k8s.call(buggy, "read x")


class _Patching:
    """The one method patch_or_create calls first, failing as `error` says."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def patch(self, path: str, body: object) -> dict[str, object]:
        raise self.error


def test_patch_or_create_maps_only_transport_errors() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        k8s.patch_or_create(_Patching(ValueError("not JSON")), "/a/b", "/a", {}, "renew")  # type: ignore[arg-type]
    with pytest.raises(RetryableError):
        k8s.patch_or_create(_Patching(ConnectionResetError("reset")), "/a/b", "/a", {}, "renew")  # type: ignore[arg-type]
    with pytest.raises(k8s.Forbidden):
        k8s.patch_or_create(_Patching(k8s.ApiError(403, "Forbidden", "no")), "/a/b", "/a", {}, "renew")  # type: ignore[arg-type]
