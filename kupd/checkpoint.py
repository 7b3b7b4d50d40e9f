"""The agent's on-disk checkpoint: which grant it works on and which steps are done.

Written atomically (temp + fsync + rename) before and after every step, so after a kill -9
or a reboot the agent resumes at the first unfinished step. A step found "started" but not
"done" is run again; every step is idempotent, so a repeat finds its effect present and
returns without applying it twice.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kupd.fsutil import atomic_write_json, read_json


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
        if not self.path.exists():
            return Checkpoint()
        data = read_json(self.path)
        steps = {k: StepRecord(**v) for k, v in data.pop("steps", {}).items()}
        known = Checkpoint.__dataclass_fields__
        return Checkpoint(**{k: v for k, v in data.items() if k in known}, steps=steps)

    def save(self, cp: Checkpoint) -> None:
        atomic_write_json(self.path, asdict(cp))
