"""The dry run behind `kupd plan`: the planner run to the end on a simulated clock. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kupd.api.models import DirectUpdateSpec
from kupd.planner import (
    GRANTED,
    OP_ATTENTION,
    OP_FAILED,
    OP_PENDING,
    OP_SUCCEEDED,
    MemberView,
    NodeView,
    Operation,
    plan,
)
from kupd.protocol import Report, Step, TurnPhase
from kupd.rfc3339 import format_time
from kupd.versions import Version


@dataclass(frozen=True)
class Wave:
    """Nodes granted together in a dry run, with when they start and end."""

    nodes: list[str]
    versions: list[list[str]]
    start_seconds: float
    end_seconds: float


def simulate(spec: DirectUpdateSpec, nodes: Sequence[NodeView], members: Mapping[str, MemberView],
             node_seconds: float, resolved_minors: Mapping[tuple[int, int], str] | None = None,
             now: datetime | None = None) -> tuple[dict[str, Any], list[Wave]]:
    """Dry-run the planner to the end: every granted node finishes after `node_seconds`.

    Returns the final status and the waves in order; what `kupd plan` prints. Pure.
    """
    t0 = now or datetime(2000, 1, 1, tzinfo=UTC)
    members = dict(members)
    op = Operation("plan", "plan", 1, spec, {})
    clock = 0.0
    waves: list[Wave] = []
    running: dict[str, float] = {}
    for _ in range(100 * (len(nodes) + 10)):
        result = plan(op, nodes, members, epoch=0, coordinator="plan", now=t0 + timedelta(seconds=clock),
                      resolved_minors=resolved_minors)
        status = result.status
        new = [e for e in status.get("nodes", []) if e["phase"] == GRANTED and e["name"] not in running]
        if new:
            if waves and waves[-1].start_seconds == clock:
                # Several slots freed at the same moment are one wave.
                last = waves.pop()
                new_names, new_versions = last.nodes, last.versions
            else:
                new_names, new_versions = [], []
            waves.append(Wave(new_names + [e["name"] for e in new],
                              new_versions + [e["grant"]["versions"] for e in new], clock, clock + node_seconds))
            for e in new:
                running[e["name"]] = clock + node_seconds
        stuck = status.get("phase") == OP_PENDING and not status.get("nodes")
        if (stuck or status.get("phase") in (OP_SUCCEEDED, OP_FAILED, OP_ATTENTION)) and not running:
            return status, waves
        if not running:
            # Nothing in flight and nothing granted: waiting on time (a canary bake) — step the clock.
            clock += 15.0
            op = Operation("plan", "plan", 1, spec, status)
            continue
        name = min(running, key=lambda n: running[n])
        clock = running.pop(name)
        entry = next(e for e in status["nodes"] if e["name"] == name)
        versions = entry["grant"]["versions"]
        members[name] = MemberView(name, True, Version.parse(versions[-1]),
                                   Report("plan", "plan", 0, versions, TurnPhase.SUCCEEDED, Step.UNCORDON,
                                          finished_at=format_time(t0 + timedelta(seconds=clock))))
        op = Operation("plan", "plan", 1, spec, status)
    raise RuntimeError("dry run did not converge")
