"""metav1.Condition lists, built in one place for every status kupd writes. Pure.

A condition keeps its lastTransitionTime while its status stays the same; reason, message and
observedGeneration follow the latest observation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kupd.rfc3339 import format_time

# Status conditions stay small: the DirectUpdate status grows with the cluster already.
MESSAGE_LIMIT = 1000


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def set_condition(conditions: list[dict[str, Any]], c: Condition, now: datetime, generation: int | None,
                  message_limit: int = MESSAGE_LIMIT) -> None:
    """Record `c` in `conditions` (in place): the entry of its type is updated, or appended."""
    fields: dict[str, Any] = {"status": c.status, "reason": c.reason, "message": c.message[:message_limit]}
    if generation is not None:
        fields["observedGeneration"] = generation
    for entry in conditions:
        if entry.get("type") == c.type:
            if entry.get("status") != c.status or not entry.get("lastTransitionTime"):
                entry["lastTransitionTime"] = format_time(now)
            entry.update(fields)
            return
    conditions.append({"type": c.type, **fields, "lastTransitionTime": format_time(now)})


def merge(current: Sequence[Mapping[str, Any]], wanted: Sequence[Condition], now: datetime,
          generation: int | None, message_limit: int = MESSAGE_LIMIT) -> list[dict[str, Any]]:
    """The conditions after one pass, sorted by type: `wanted` replace those of the same type;
    other types are kept as they are."""
    out = [dict(c) for c in current]
    for c in wanted:
        set_condition(out, c, now, generation, message_limit)
    return sorted(out, key=lambda c: str(c.get("type")))
