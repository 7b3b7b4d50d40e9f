"""The grant from planner to agent: one frozen type, parsed once, its wire form in the grant
Lease and in the agent's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kupd.api.models import parse_directupdate_spec
from kupd.checkpoint import Checkpoint, CheckpointStore
from kupd.protocol import Grant, GrantRecord, TurnPhase
from kupd.untrusted import Invalid

SPEC = {"version": "v1.32.0", "maxAttempts": 5, "reboot": "Never", "containerdVersion": "1.7.22",
        "drain": {"timeoutSeconds": 900, "podSelector": "app=web"},
        "packageSource": {"type": "mirror", "mirror": {"url": "https://mirror.example.com/k8s"}},
        "backup": {"required": True, "store": {"type": "file", "path": "/srv/backups"}}}
ENTRY = {"name": "cp-1", "role": "ControlPlane",
         "grant": {"epoch": 4, "versions": ["v1.32.0"], "firstControlPlane": True, "backup": True,
                   "grantedAt": "2026-11-27T12:00:00Z"}}


def grant() -> Grant:
    return Grant.from_record("op", "uid-1", ENTRY, parse_directupdate_spec(SPEC))


def test_a_grant_carries_the_work_not_the_spec() -> None:
    g = grant()
    wire = json.loads(g.encode())
    assert "spec" not in wire
    assert {k: wire[k] for k in ("operation", "uid", "epoch", "versions", "granted_at", "first_control_plane",
                                 "backup", "control_plane")} == {
        "operation": "op", "uid": "uid-1", "epoch": 4, "versions": ["v1.32.0"], "granted_at": "2026-11-27T12:00:00Z",
        "first_control_plane": True, "backup": True, "control_plane": True}
    assert wire["work"]["maxAttempts"] == 5 and wire["work"]["reboot"] == "Never"
    assert wire["work"]["drain"]["timeoutSeconds"] == 900
    assert wire["work"]["backupConfig"]["store"] == {"type": "file", "path": "/srv/backups", "retention": 10}
    back = Grant.decode(g.encode())
    assert back == g
    assert back is not None and back.work.drain.pod_selector == "app=web"
    assert back.record().wire() == ENTRY["grant"]


def test_defaults_come_from_the_spec_model() -> None:
    g = Grant.from_record("op", "uid-1", ENTRY, parse_directupdate_spec({"version": "v1.32.0"}))
    assert (g.work.max_attempts, g.work.reboot, g.work.drain.timeout_seconds) == (3, "IfRequired", 600)


def test_malformed_or_old_grants_read_as_none() -> None:
    wire = json.loads(grant().encode())
    old = {k: v for k, v in wire.items() if k != "work"} | {"spec": SPEC}
    assert Grant.decode(json.dumps(old)) is None  # re-delivered in the new form by the coordinator
    assert Grant.decode(json.dumps({**wire, "epoch": "4"})) is None
    assert Grant.decode(json.dumps({**wire, "work": {**wire["work"], "reboot": "Sometimes"}})) is None
    assert Grant.decode(json.dumps({**wire, "versions": []})) is None
    assert Grant.decode("[]") is None and Grant.decode("{") is None and Grant.decode("") is None


def test_a_checkpoint_keeps_the_grant_and_reads_an_older_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    cp = Checkpoint(grant=grant(), phase=TurnPhase.UPGRADING, started_at="2026-11-27T12:00:01Z")
    store.save(cp)
    assert store.load() == cp
    # Written by a kupd before NodeWork: the turn's fields flat, with the DirectUpdate's spec.
    (tmp_path / "checkpoint.json").write_text(json.dumps({
        "operation": "op", "uid": "uid-1", "epoch": 4, "granted_at": "2026-11-27T12:00:00Z", "versions": ["v1.32.0"],
        "first_control_plane": True, "control_plane": True, "backup": True, "spec": SPEC, "phase": "Upgrading",
        "started_at": "2026-11-27T12:00:01Z", "steps": {"v1.32.0/preflight": {"state": "done", "attempts": 1}}}))
    legacy = store.load()
    assert legacy.grant == grant() and legacy.active
    assert legacy.steps["v1.32.0/preflight"].state == "done"


@pytest.mark.parametrize(("record", "field"), [
    ({k: v for k, v in ENTRY["grant"].items() if k != "grantedAt"}, "grant.grantedAt"),
    ({k: v for k, v in ENTRY["grant"].items() if k != "epoch"}, "grant.epoch"),
    ({**ENTRY["grant"], "versions": "v1.32.0"}, "grant.versions"),
    ({**ENTRY["grant"], "versions": ["1.32"]}, "grant.versions[0]"),
    ({**ENTRY["grant"], "backup": "yes"}, "grant.backup"),
    ({**ENTRY["grant"], "grantedAt": "yesterday"}, "grant.grantedAt"),
    ("granted", "grant"),
])
def test_a_record_that_is_not_a_grant_is_refused_naming_the_field(record: object, field: str) -> None:
    """The status may have been written by hand (the CRD leaves grantedAt optional): a clear
    Invalid the coordinator reports for that node alone, never a KeyError that fails the round."""
    with pytest.raises(Invalid) as e:
        Grant.from_record("op", "uid-1", {**ENTRY, "grant": record}, parse_directupdate_spec(SPEC))
    assert e.value.field == field


def test_the_record_has_one_wire_form() -> None:
    rec = GrantRecord.from_wire(ENTRY["grant"])
    assert rec == GrantRecord(4, ("v1.32.0",), True, True, "2026-11-27T12:00:00Z")
    assert rec.wire() == ENTRY["grant"] and grant().record() == rec
