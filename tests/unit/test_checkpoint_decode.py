"""The agent's checkpoint is decoded and checked (kupd.checkpoint.decode_checkpoint): one kupd wrote
reads back unchanged; anything else is refused naming the field, and an unreadable file on disk is
moved aside and the agent starts clean (its grant is still in its grant Lease; steps are idempotent)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kupd import untrusted
from kupd.checkpoint import Checkpoint, CheckpointStore, StepRecord, decode_checkpoint
from kupd.protocol import TurnPhase
from tests.unit.test_grant_wire import grant

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=15)


def _checkpoint() -> Checkpoint:
    return Checkpoint(grant=grant(), phase=TurnPhase.UPGRADING, started_at="2026-11-27T12:00:01Z", message="m",
                      steps={"v1.32.0/preflight": StepRecord("done", 1, "2026-11-27T12:00:01Z",
                                                             "2026-11-27T12:00:02Z", 1.0, "b", "ok"),
                             "v1.32.0/backup": StepRecord("started", 1, "2026-11-27T12:00:02Z")},
                      backup_record={"location": "file:///srv/backups/x.db", "size": 3, "verified": True},
                      max_epoch_seen=4)


def test_a_checkpoint_kupd_wrote_reads_back_unchanged(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_checkpoint())
    assert store.load() == _checkpoint()


@pytest.mark.parametrize("text", ["{", "[" * 50_000, "[]", '{"steps": {"x": {"state": "rm -rf /"}}}',
                                  '{"phase": "Exploded"}', '{"max_epoch_seen": -1}', '{"grant": {"uid": 1}}',
                                  '{"steps": {"x": {"attempts": "3"}}}', "\udcff"])
def test_an_unreadable_checkpoint_is_moved_aside_and_the_agent_starts_clean(tmp_path: Path, text: str) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text(text, errors="surrogateescape")
    raw = path.read_bytes()
    cp = CheckpointStore(tmp_path).load()
    aside = list(tmp_path.glob("checkpoint.json.corrupt-*"))
    # Clean, remembering where the unreadable one went (its next turn reports CheckpointCorrupt).
    assert len(aside) == 1 and aside[0].read_bytes() == raw
    assert cp == Checkpoint(corrupt=str(aside[0]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["grant", "phase", "started_at", "finished_at", "message", "reason", "steps",
                            "backup_record", "max_epoch_seen"]), value=json_values)
@example(key="steps", value={"v1.32.0/drain": {"state": "done", "seconds": 1e300}})
def test_any_value_in_any_field_is_read_or_named(key: str, value: Any) -> None:
    data = json.loads(json.dumps({**_wire(), key: value}))
    try:
        cp = decode_checkpoint(json.dumps(data))
    except untrusted.Invalid as e:
        assert e.field.startswith("checkpoint")
        return
    assert isinstance(cp, Checkpoint)


def _wire() -> dict[str, Any]:
    """The checkpoint as CheckpointStore.save writes it."""
    cp = _checkpoint()
    data = asdict(cp)
    assert cp.grant is not None
    data["grant"] = cp.grant.wire()
    return data
