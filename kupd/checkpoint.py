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

from kupd.api.models import parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.fsutil import atomic_write_json, read_json
from kupd.protocol import Grant, TurnPhase


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
        if not self.path.exists():
            return Checkpoint()
        data = read_json(self.path)
        steps = {k: StepRecord(**v) for k, v in data.pop("steps", {}).items()}
        grant = Grant.from_wire(data.pop("grant", None)) if "grant" in data else _legacy_grant(data)
        known = Checkpoint.__dataclass_fields__
        return Checkpoint(**{k: v for k, v in data.items() if k in known and k != "grant"}, grant=grant, steps=steps)

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
