"""The agent's on-disk checkpoint: which grant it works on and which steps are done.

Written atomically (temp + fsync + rename) before and after every step, so after a kill -9
or a reboot the agent resumes at the first unfinished step. A step found "started" but not
"done" is run again; every step is idempotent, so a repeat finds its effect present and
returns without applying it twice.

The file is local state, but still untrusted: a disk error, an operator's edit or a torn copy can
leave it empty, truncated or of the wrong shape. Such a file is moved aside (never deleted: it
is evidence), the daemon starts from an empty checkpoint that remembers where the old one went,
and the agent reports its next turn Failed with reason CheckpointCorrupt naming both paths.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kupd.api.models import parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.fsutil import atomic_write_json
from kupd.protocol import Grant, TurnPhase

log = logging.getLogger(__name__)

STEP_STATES = ("pending", "started", "done")


@dataclass
class StepRecord:
    state: str = "pending"  # pending | started | done
    attempts: int = 0
    started_at: str = ""
    finished_at: str = ""
    seconds: float = 0.0
    boot_id: str = ""  # boot the step started in; a reboot step is done once this differs
    message: str = ""


@dataclass
class Checkpoint:
    """The turn this node works on (its grant, as delivered) and how far it got."""

    grant: Grant | None = None
    phase: str = ""  # "" (idle) or a TurnPhase
    started_at: str = ""
    finished_at: str = ""
    message: str = ""
    reason: str = ""
    steps: dict[str, StepRecord] = field(default_factory=dict)
    backup_record: dict[str, Any] = field(default_factory=dict)
    max_epoch_seen: int = 0
    corrupt: str = ""  # where an unreadable checkpoint was moved, until a turn reports it

    @property
    def active(self) -> bool:
        return self.grant is not None and self.phase == TurnPhase.UPGRADING

    def step(self, key: str) -> StepRecord:
        return self.steps.setdefault(key, StepRecord())

    def same_work(self, grant: Grant) -> bool:
        """Whether `grant` is a turn for the same work (operation and versions) as this one."""
        return self.grant is not None and self.grant.uid == grant.uid and self.grant.versions == grant.versions


class CheckpointStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "checkpoint.json"

    def load(self) -> Checkpoint:
        """The stored checkpoint; an empty one if there is none. A corrupt file is moved aside and
        the empty checkpoint returned says where (`corrupt`)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Checkpoint()
        try:
            return _decode(raw)
        except ValueError as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}")
            os.replace(self.path, aside)
            log.error("checkpoint %s is corrupt (%s); moved it to %s", self.path, str(e)[:200], aside)
            cp = Checkpoint(corrupt=str(aside))
            self.save(cp)
            return cp

    def save(self, cp: Checkpoint) -> None:
        data = asdict(cp)
        data["grant"] = cp.grant.wire() if cp.grant is not None else None
        atomic_write_json(self.path, data)


def _legacy_grant(data: dict[str, Any]) -> Grant | None:
    """The grant of a checkpoint written before grants carried NodeWork (its fields flat, with the
    DirectUpdate's whole spec): a node upgraded mid-turn carries on with the same work."""
    if not data.get("uid"):
        return None
    try:
        spec = parse_directupdate_spec(data.get("spec") or {})
        work = spec.node_work(list(data.get("versions") or []), control_plane=bool(data.get("control_plane")),
                              first_control_plane=bool(data.get("first_control_plane")),
                              backup=bool(data.get("backup")))
    except ValidationError:
        return None
    return Grant(operation=str(data.get("operation") or ""), uid=str(data["uid"]), epoch=int(data.get("epoch") or 0),
                 granted_at=str(data.get("granted_at") or ""), work=work)


# The types of a checkpoint's fields as stored (JSON), checked before anything is built from them.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "phase": str, "started_at": str, "finished_at": str, "message": str, "reason": str,
    "backup_record": dict, "max_epoch_seen": int, "corrupt": str}
_STEP_FIELDS: dict[str, type | tuple[type, ...]] = {
    "state": str, "attempts": int, "started_at": str, "finished_at": str, "seconds": (int, float),
    "boot_id": str, "message": str}


def _check(data: dict[str, Any], types: dict[str, type | tuple[type, ...]], where: str) -> dict[str, Any]:
    out = {}
    for key, want in types.items():
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, want):
                raise ValueError(f"{where}{key}: {type(value).__name__}, not {want}")
            out[key] = value
    return out


def _decode(raw: bytes) -> Checkpoint:
    """A checkpoint from its file, checked: JSON object, fields of their types, a known phase and
    step states, a valid grant when one is recorded. Raises ValueError on anything else; fields a
    newer kupd added are ignored."""
    data = json.loads(raw)  # ValueError on bad JSON or bad UTF-8
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    fields = _check(data, _FIELDS, "")
    if fields.get("phase", "") not in ("", *TurnPhase):
        raise ValueError(f"unknown phase {str(fields['phase'])[:40]!r}")
    steps_raw = data.get("steps", {})
    if not isinstance(steps_raw, dict):
        raise ValueError("steps: not an object")
    steps = {}
    for key, rec in steps_raw.items():
        if not isinstance(rec, dict):
            raise ValueError(f"steps[{key[:80]!r}]: not an object")
        checked = _check(rec, _STEP_FIELDS, f"steps[{key[:80]!r}].")
        if checked.get("state", "pending") not in STEP_STATES:
            raise ValueError(f"steps[{key[:80]!r}]: unknown state {str(checked['state'])[:40]!r}")
        steps[key] = StepRecord(**checked)
    if "grant" in data:
        grant = Grant.from_wire(data["grant"]) if data["grant"] is not None else None
        if data["grant"] is not None and grant is None:
            raise ValueError("grant: not a valid grant")
    else:
        try:
            grant = _legacy_grant(data)
        except (TypeError, AttributeError) as e:
            raise ValueError(f"an old-style grant of the wrong shape: {e}") from e
    if fields.get("phase") == TurnPhase.UPGRADING and grant is None:
        raise ValueError("a turn in progress without its grant")
    return Checkpoint(**fields, grant=grant, steps=steps)
