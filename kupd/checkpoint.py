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

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kupd import untrusted as u
from kupd.api.models import parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.fsutil import atomic_write_json
from kupd.protocol import Grant, TurnPhase

log = logging.getLogger(__name__)


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
        """The checkpoint on disk; an empty one if there is none. One that cannot be read (corrupt,
        or not what kupd writes) is moved aside, each to a name of its own (never deleted: it is
        evidence), and the empty checkpoint returned says where (`corrupt`): the agent reports its
        next turn Failed with reason CheckpointCorrupt, so an operator looks before a retry runs
        every step again (each is idempotent)."""
        try:
            with open(self.path, encoding="utf-8", errors="strict") as f:
                text = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return Checkpoint()
        except UnicodeDecodeError as e:
            return self._aside(e)
        try:
            return decode_checkpoint(text)
        except u.Invalid as e:
            return self._aside(e)

    def _aside(self, err: Exception) -> Checkpoint:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}")
        os.replace(self.path, aside)
        log.error("the checkpoint %s is corrupt (%s); it is kept as %s", self.path, str(err)[:300], aside)
        cp = Checkpoint(corrupt=str(aside))
        self.save(cp)
        return cp

    def save(self, cp: Checkpoint) -> None:
        data = asdict(cp)
        data["grant"] = cp.grant.wire() if cp.grant is not None else None
        atomic_write_json(self.path, data)


MAX_BYTES = 1024 * 1024
STEP_STATES = ("pending", "started", "done")


def decode_checkpoint(text: str) -> Checkpoint:
    """A checkpoint from its JSON, every field checked (kupd.untrusted); raises `untrusted.Invalid`."""
    data = u.bounded_json(text, "checkpoint", max_bytes=MAX_BYTES)
    if not isinstance(data, dict):
        raise u.Invalid("checkpoint", "must be a JSON object")
    raw_steps = data.get("steps") or {}
    if not isinstance(raw_steps, dict) or len(raw_steps) > 1024:
        raise u.Invalid("checkpoint.steps", "must be an object of at most 1024 steps")
    steps = {}
    for key, v in raw_steps.items():
        field_ = f"checkpoint.steps[{str(key)[:60]}]"
        if len(key) > 128 or not isinstance(v, dict):
            raise u.Invalid(field_, "must be a step record")
        state = u.text(v, "state", f"{field_}.state", 16, default="pending")
        if state not in STEP_STATES:
            raise u.Invalid(f"{field_}.state", f"{state!r} is not one of {', '.join(STEP_STATES)}")
        seconds = v.get("seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 1e9:
            raise u.Invalid(f"{field_}.seconds", "must be a number of seconds")
        steps[key] = StepRecord(state=state, attempts=u.integer(v, "attempts", f"{field_}.attempts", 0, 10_000),
                                started_at=u.time_text(v, "started_at", f"{field_}.started_at"),
                                finished_at=u.time_text(v, "finished_at", f"{field_}.finished_at"),
                                seconds=float(seconds), boot_id=u.text(v, "boot_id", f"{field_}.boot_id", 128),
                                message=u.message(v, "message", f"{field_}.message", 32768))
    if "grant" in data:
        grant = Grant.from_wire(data["grant"]) if data["grant"] is not None else None
        if data["grant"] is not None and grant is None:
            raise u.Invalid("checkpoint.grant", "is not a grant kupd can read")
    else:
        try:
            grant = _legacy_grant(data)
        except (TypeError, ValueError, AttributeError) as e:
            raise u.Invalid("checkpoint", f"an old-style grant of the wrong shape: {e}") from e
    phase = u.text(data, "phase", "checkpoint.phase", 16)
    if phase and phase not in tuple(TurnPhase):
        raise u.Invalid("checkpoint.phase", f"{phase!r} is not one of {', '.join(TurnPhase)}")
    if phase == TurnPhase.UPGRADING and grant is None:
        raise u.Invalid("checkpoint.grant", "a turn in progress without its grant")
    return Checkpoint(grant=grant, phase=phase, started_at=u.time_text(data, "started_at", "checkpoint.started_at"),
                      finished_at=u.time_text(data, "finished_at", "checkpoint.finished_at"),
                      message=u.message(data, "message", "checkpoint.message", 32768),
                      reason=u.text(data, "reason", "checkpoint.reason", 64, u.REASON), steps=steps,
                      backup_record=u.backup(data.get("backup_record"), "checkpoint.backup_record"),
                      max_epoch_seen=u.integer(data, "max_epoch_seen", "checkpoint.max_epoch_seen"),
                      corrupt=u.text(data, "corrupt", "checkpoint.corrupt", 4096))


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
