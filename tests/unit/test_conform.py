"""Status written by the coordinator is valid by construction (kupd.api.conform): for every field of
the DirectUpdate status schema, values beyond its bounds, of the wrong type or shape, are fitted or
dropped so that the status model (the CRD's mirror, tests/unit/test_crd_models.py) accepts it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kupd.api import models
from kupd.api.conform import _resolve, _schema, conform

VALID: dict[str, Any] = {
    "phase": "Running", "observedGeneration": 2, "coordinator": "cp-1", "epoch": 3, "hops": ["v1.32.0"],
    "progress": "1/3", "startedAt": "2026-12-01T10:00:00Z", "finishedAt": "2026-12-01T11:00:00Z", "message": "m",
    "summary": {"total": 3, "pending": 1, "upgrading": 1, "succeeded": 1, "failed": 0, "skipped": 0},
    "backup": {"location": "s3://b/k", "size": 1, "sha256": "0" * 64, "revision": 4, "verified": True,
               "takenAt": "2026-12-01T10:00:00Z", "node": "cp-1"},
    "conditions": [{"type": "Progressing", "status": "True", "observedGeneration": 2,
                    "lastTransitionTime": "2026-12-01T10:00:00Z", "reason": "Upgrading", "message": "m"}],
    "nodes": [{"name": "w-1", "role": "Worker", "canary": False, "phase": "Upgrading", "step": "drain",
               "attempts": 1, "startedAt": "2026-12-01T10:00:00Z", "finishedAt": "2026-12-01T10:10:00Z",
               "fromVersion": "v1.31.2", "toVersion": "v1.32.0", "message": "m", "retryToken": "w-1",
               "grant": {"epoch": 3, "versions": ["v1.32.0"], "firstControlPlane": False, "backup": False,
                         "grantedAt": "2026-12-01T10:00:00Z"}}],
}


def _valid(status: dict[str, Any]) -> None:
    models.DirectUpdateStatus.model_validate_json(json.dumps(status), strict=True, by_alias=True, by_name=False)


def _leaves(schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    root = _schema(models.DirectUpdateStatus)
    s = _resolve(root, schema)
    if s.get("type") == "object" and s.get("properties"):
        for key, sub in s["properties"].items():
            yield from _leaves(sub, (*path, key))
    elif s.get("type") == "array" and _resolve(root, s.get("items") or {}).get("type") == "object":
        yield from _leaves(s["items"], (*path, 0))
    else:
        yield path, s


LEAVES = list(_leaves(_schema(models.DirectUpdateStatus)))


def _hostile(s: dict[str, Any]) -> list[Any]:
    """Values just beyond the field's bounds, and of other types."""
    out: list[Any] = [None, True, 12345, -1, 2**70, 1.5, "x" * 100_000, "not-a-time", [], {}, ["x"], {"a": 1}]
    if "maximum" in s:
        out += [s["maximum"] + 1, 2**63]
    if "minimum" in s:
        out += [s["minimum"] - 1]
    if "maxLength" in s:
        out += ["a" * (s["maxLength"] + 1), "A" * (s["maxLength"] + 1)]
    if s.get("format") == "date-time":
        out += ["9999-12-31T23:59:59-01:00", "2026-12-01 10:00:00+02:00", "2026-12-01T10:00:00"]
    if s.get("type") == "array":
        out += [["v1.32.0"] * ((s.get("maxItems") or 10) + 1), ["$(reboot)"]]
    return out


def _set(status: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = status
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def test_a_valid_status_is_unchanged() -> None:
    _valid(VALID)
    assert conform(models.DirectUpdateStatus, VALID) == VALID


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=[".".join(map(str, p)) for p, _ in LEAVES])
def test_every_field_beyond_its_bounds_is_fitted_or_dropped(path: tuple[Any, ...]) -> None:
    schema = dict(LEAVES)[path]
    for value in _hostile(schema):
        status = copy.deepcopy(VALID)
        _set(status, path, value)
        fitted = conform(models.DirectUpdateStatus, status)
        _valid(fitted)
        if path != ("phase",):
            assert fitted["phase"] == "Running"  # one field's value does not cost the others


def test_the_walk_covers_every_field() -> None:
    names = {p[-1] for p, _ in LEAVES}
    assert {"attempts", "finishedAt", "step", "message", "sha256", "grantedAt", "reason", "lastTransitionTime",
            "progress", "hops", "total"} <= names


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "role", "phase", "step", "attempts", "message", "grant", "versions", "epoch",
                         "type", "status", "reason", "lastTransitionTime", "location", "x"]), children, max_size=4),
    max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*VALID, "other"]), json_values, max_size=8))
def test_any_status_conforms(status: dict[str, Any]) -> None:
    _valid(conform(models.DirectUpdateStatus, status))
