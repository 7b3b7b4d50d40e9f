"""The status stays small: compact node entries (planner.compact), under 1 MiB at 10,000 nodes,
and what the rules read (role, finish time, duration) survives compaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kupd import planner
from kupd.api.models import DirectUpdateStatus, parse_directupdate_spec
from kupd.versions import Version

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MIB = 1024 * 1024


def _size(status: dict[str, Any]) -> int:
    return len(json.dumps(status, separators=(",", ":")))


def _first_round(n: int) -> dict[str, Any]:
    names = ["cp-1"] + [f"w-{i:05d}" for i in range(1, n)]
    views = [planner.NodeView(x, {"kubernetes.io/hostname": x}, x == "cp-1") for x in names]
    members = {x: planner.MemberView(x, True, Version.parse("v1.31.2")) for x in names}
    spec = parse_directupdate_spec({"version": "v1.32.0", "concurrency": 50, "backup": {"required": False}})
    return planner.plan(planner.Operation("big", "uid-1", 1, spec, {}), views, members, epoch=1,
                        coordinator="cp-1", now=NOW).status


FULL_DONE = {"name": "w-00001", "role": "Worker", "canary": False, "phase": "Succeeded", "attempts": 1,
             "toVersion": "v1.32.0", "fromVersion": "v1.31.2", "message": "upgraded to v1.32.0",
             "startedAt": "2026-01-01T00:00:00Z", "step": "uncordon", "finishedAt": "2026-01-01T00:07:00Z"}


def test_ten_thousand_nodes_fit_in_one_mebibyte_pending_and_finished() -> None:
    status = _first_round(10_000)
    assert _size(status) < MIB, _size(status)
    DirectUpdateStatus.model_validate(status)  # the CRD's mirror accepts it (maxItems, optional role)
    done = dict(FULL_DONE)
    planner.compact(done)
    finished = {**status, "nodes": [{**done, "name": e["name"]} for e in status["nodes"]]}
    assert _size(finished) < MIB, _size(finished)
    assert done == {"name": "w-00001", "phase": "Succeeded", "finishedAt": "2026-01-01T00:07:00Z", "seconds": 420}


def test_a_compact_entry_keeps_what_the_rules_read() -> None:
    cp = {**FULL_DONE, "name": "cp-1", "role": "ControlPlane", "attempts": 3, "retryToken": "cp-1"}
    planner.compact(cp)
    assert cp["role"] == "ControlPlane" and cp["attempts"] == 3 and cp["retryToken"] == "cp-1"
    assert planner.node_seconds(cp) == 420.0
    pending = {"name": "w-1", "role": "Worker", "canary": True, "phase": "Pending", "attempts": 0}
    planner.compact(pending)
    assert pending == {"name": "w-1", "canary": True, "phase": "Pending"}
    # In flight: the turn's details stay (the grant record, the step, the start).
    flying = {"name": "w-2", "phase": "Upgrading", "step": "drain", "attempts": 1, "startedAt": "2026-01-01T00:00:00Z",
              "grant": {"epoch": 1, "versions": ["v1.32.0"]}}
    before = dict(flying)
    planner.compact(flying)
    assert flying == before


entries = st.fixed_dictionaries(
    {"name": st.sampled_from(["w-1", "cp-1"]), "phase": st.sampled_from([p.value for p in planner.NodePhase])},
    optional={"role": st.sampled_from(["Worker", "ControlPlane"]), "canary": st.booleans(),
              "attempts": st.integers(0, 100), "step": st.sampled_from(["drain", "verify"]),
              "startedAt": st.sampled_from(["2026-01-01T00:00:00Z", "garbage"]),
              "finishedAt": st.sampled_from(["2026-01-01T00:00:09Z"]), "message": st.text(max_size=5),
              "grant": st.just({"epoch": 1, "versions": ["v1.32.0"]}), "retryToken": st.just("t")})


@given(entries)
def test_compact_is_idempotent_and_keeps_name_phase_role_and_outcome(e: dict[str, Any]) -> None:
    once = dict(e)
    planner.compact(once)
    twice = dict(once)
    planner.compact(twice)
    assert twice == once
    assert once["name"] == e["name"] and once["phase"] == e["phase"]
    assert (once.get("role") == "ControlPlane") == (e.get("role") == "ControlPlane")
    if e["phase"] not in planner.DONE:
        assert {k: v for k, v in e.items() if k not in ("role", "canary", "attempts")} == {
            k: v for k, v in once.items() if k not in ("role", "canary", "attempts")}
    else:
        assert once.get("finishedAt") == e.get("finishedAt")
