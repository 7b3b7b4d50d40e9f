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

import pydantic

from kupd.fsutil import atomic_write_json

log = logging.getLogger(__name__)

PHASES = ("", "Upgrading", "Succeeded", "Failed")
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
    operation: str = ""
    uid: str = ""
    epoch: int = 0
    granted_at: str = ""
    versions: list[str] = field(default_factory=list)
    first_control_plane: bool = False
    control_plane: bool = False
    backup: bool = False
    spec: dict[str, Any] = field(default_factory=dict)
    phase: str = ""  # "" (idle) | Upgrading | Succeeded | Failed
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
        return self.phase == "Upgrading"

    def step(self, key: str) -> StepRecord:
        return self.steps.setdefault(key, StepRecord())

    def same_grant(self, uid: str, versions: list[str]) -> bool:
        return self.uid == uid and self.versions == versions


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
            log.error("checkpoint %s is corrupt (%s); moved it to %s", self.path, str(e).splitlines()[0], aside)
            cp = Checkpoint(corrupt=str(aside))
            self.save(cp)
            return cp

    def save(self, cp: Checkpoint) -> None:
        atomic_write_json(self.path, asdict(cp))


_ADAPTER: pydantic.TypeAdapter[Checkpoint] = pydantic.TypeAdapter(Checkpoint)


def _decode(raw: bytes) -> Checkpoint:
    """Parse and check a checkpoint strictly: types as declared, phases and states known.
    Raises ValueError (pydantic's ValidationError is one) on anything else."""
    cp = _ADAPTER.validate_json(raw, strict=True)
    if cp.phase not in PHASES:
        raise ValueError(f"unknown phase {cp.phase[:40]!r}")
    for key, rec in cp.steps.items():
        if rec.state not in STEP_STATES:
            raise ValueError(f"step {key[:80]!r}: unknown state {rec.state[:40]!r}")
    if cp.phase == "Upgrading" and not (cp.uid and cp.versions):
        raise ValueError("an active checkpoint without its grant")
    return cp
