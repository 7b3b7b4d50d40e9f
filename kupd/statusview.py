"""What `kupd status` shows, computed from DirectUpdate objects. Pure: no I/O, `now` is passed in.

`document(objs, now)` is the `-o json` document; `render(objs, now)` is the table. Both take the
objects as the API returns them (dicts with metadata, spec and status).

Durations come from the node entries' startedAt/finishedAt (a node still upgrading is measured
up to `now`). The ETA is the measured median node duration times the turns still to come:
control-plane nodes go one at a time, workers `spec.concurrency` at a time, so

    ETA = (control-plane nodes left + workers left / concurrency) x median node duration

A node already upgrading counts with what is left of its median. There is no ETA before the first
node has succeeded (nothing measured yet) or while the operation is not Running.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from kupd.api.models import DirectUpdateSpec, parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.rfc3339 import format_time, parse_or_none

TERMINAL = ("Succeeded", "Failed")
DONE = ("Succeeded", "Skipped")
IN_FLIGHT = ("Granted", "Upgrading", "Lost")
BAR_WIDTH = 20
MESSAGE_WIDTH = 60


# -- small pure helpers -------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    """1h02m, 4m05s, 9s; `-` for unknown."""
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[########------------]`; an empty selection reads as complete."""
    frac = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = int(frac * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def percent(done: int, total: int) -> int:
    return 100 if total <= 0 else int(100 * done / total)


def is_terminal(obj: Mapping[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in TERMINAL


def node_seconds(entry: Mapping[str, Any], now: datetime) -> float | None:
    """How long the node has been (or was) upgrading; None if it has not started."""
    if isinstance(entry.get("seconds"), int):
        return float(entry["seconds"])  # a finished node's compact entry
    start = parse_or_none(entry.get("startedAt"))
    if start is None:
        return None
    end = parse_or_none(entry.get("finishedAt"))
    if end is None:
        if entry.get("phase") not in IN_FLIGHT:
            return None
        end = now
    return max((end - start).total_seconds(), 0.0)


def median_node_seconds(entries: Iterable[Mapping[str, Any]]) -> float | None:
    """Median duration of the nodes that succeeded with both timestamps recorded."""
    measured = [s for e in entries
                if e.get("phase") == "Succeeded" and e.get("finishedAt")
                and (s := node_seconds(e, datetime.min)) is not None]
    return statistics.median(measured) if measured else None


def eta_seconds(obj: Mapping[str, Any], now: datetime) -> float | None:
    status = obj.get("status") or {}
    if status.get("phase") != "Running":
        return None
    entries = _entries(status)
    median = median_node_seconds(entries)
    if median is None:
        return None
    spec = _spec(obj)
    concurrency = spec.concurrency if spec is not None else 1
    cp_turns = 0.0
    worker_turns = 0.0
    for e in entries:
        if e.get("phase") in DONE:
            continue
        turn = 1.0
        if e.get("phase") in IN_FLIGHT:
            elapsed = node_seconds(e, now) or 0.0
            turn = max(median - elapsed, 0.0) / median if median > 0 else 0.0
        if e.get("role") == "ControlPlane":
            cp_turns += turn
        else:
            worker_turns += turn
    return (cp_turns + worker_turns / concurrency) * median


def _entries(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    nodes = status.get("nodes") or []
    return [e for e in nodes if isinstance(e, Mapping)]


def _counts(status: Mapping[str, Any]) -> tuple[int, int]:
    """(nodes done, nodes selected). The summary is authoritative; the entries are the fallback."""
    summary = status.get("summary") or {}
    if summary.get("total") is not None:
        done = int(summary.get("succeeded") or 0) + int(summary.get("skipped") or 0)
        return done, int(summary["total"])
    entries = _entries(status)
    return sum(1 for e in entries if e.get("phase") in DONE), len(entries)


# -- the JSON document ----------------------------------------------------------------------------
def node_view(entry: Mapping[str, Any], now: datetime, target: str = "") -> dict[str, Any]:
    """Every field of a node's entry, the compact entry's absent ones filled in (role Worker,
    toVersion the operation's target)."""
    return {
        "name": entry.get("name", ""),
        "role": entry.get("role", "Worker"),
        "canary": bool(entry.get("canary", False)),
        "phase": entry.get("phase", ""),
        "step": entry.get("step", ""),
        "attempts": int(entry.get("attempts") or (1 if entry.get("phase") == "Succeeded" else 0)),
        "fromVersion": entry.get("fromVersion", ""),
        "toVersion": entry.get("toVersion", target),
        "startedAt": entry.get("startedAt"),
        "finishedAt": entry.get("finishedAt"),
        "durationSeconds": _round(node_seconds(entry, now)),
        "message": entry.get("message") or _finished_message(entry, target),
    }


def _finished_message(entry: Mapping[str, Any], target: str) -> str:
    """What a finished node's compact entry no longer stores, said again."""
    if entry.get("phase") == "Succeeded" and target:
        return f"upgraded to {target}"
    if entry.get("phase") == "Skipped":
        return "already at the target"
    return ""


def _spec(obj: Mapping[str, Any]) -> DirectUpdateSpec | None:
    """The parsed spec; None for one that fails validation (its status says why)."""
    try:
        return parse_directupdate_spec(obj.get("spec") or {})
    except ValidationError:
        return None


def operation_view(obj: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    spec = _spec(obj)
    status = obj.get("status") or {}
    done, total = _counts(status)
    started = parse_or_none(status.get("startedAt"))
    finished = parse_or_none(status.get("finishedAt"))
    duration = None if started is None else max(((finished or now) - started).total_seconds(), 0.0)
    eta = eta_seconds(obj, now)
    entries = _entries(status)
    target = spec.version if spec is not None else ""
    return {
        "name": md.get("name", ""),
        "phase": status.get("phase") or "Pending",
        "target": target,
        "hops": list(status.get("hops") or []),
        "concurrency": spec.concurrency if spec is not None else 1,
        "paused": spec.paused if spec is not None else False,
        "progress": {"done": done, "total": total, "percent": percent(done, total)},
        "summary": dict(status.get("summary") or {}),
        "startedAt": status.get("startedAt"),
        "finishedAt": status.get("finishedAt"),
        "durationSeconds": _round(duration),
        "medianNodeSeconds": _round(median_node_seconds(entries)),
        "etaSeconds": _round(eta),
        "etaAt": format_time(now + timedelta(seconds=eta)) if eta is not None else None,
        "coordinator": status.get("coordinator", ""),
        "epoch": status.get("epoch"),
        "message": status.get("message", ""),
        "conditions": [dict(c) for c in status.get("conditions") or []],
        "backup": dict(status["backup"]) if status.get("backup") else None,
        "observedGeneration": status.get("observedGeneration"),
        "generation": md.get("generation"),
        "nodes": [node_view(e, now, target) for e in entries],
    }


def _sort_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    md = obj.get("metadata") or {}
    return str(md.get("creationTimestamp") or ""), str(md.get("name") or "")


def document(objs: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """The `kupd status -o json` document: every operation, oldest first."""
    return {
        "apiVersion": "kupd.io/v1alpha1",
        "kind": "Status",
        "generatedAt": format_time(now),
        "operations": [operation_view(o, now) for o in sorted(objs, key=_sort_key)],
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# -- the table --------------------------------------------------------------------------------------
NODE_COLUMNS = ("NODE", "ROLE", "PHASE", "STEP", "ATTEMPTS", "FROM", "TO", "DURATION", "MESSAGE")


def _clip(s: str, width: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= width else s[: width - 3] + "..."


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, like kubectl; trailing spaces stripped."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_operation(view: Mapping[str, Any], wide: bool = False) -> str:
    """One operation's block; `wide` (`-o wide`) keeps messages whole."""
    width = 1 << 20 if wide else MESSAGE_WIDTH
    prog = view["progress"]
    lines = [f"DirectUpdate {view['name']}: {view['phase']}"
             + ("  (spec.paused)" if view["paused"] and view["phase"] != "Paused" else "")]
    hops = ", ".join(view["hops"]) if view["hops"] else "-"
    lines.append(f"  target    {view['target'] or '-'}  (hops: {hops}; concurrency {view['concurrency']})")
    lines.append(f"  progress  {progress_bar(prog['done'], prog['total'])} {prog['done']}/{prog['total']} "
                 f"nodes  {prog['percent']}%")
    timing = f"  elapsed   {format_duration(view['durationSeconds'])}"
    if view["phase"] not in TERMINAL:
        eta = view["etaSeconds"]
        timing += f"  ETA {format_duration(eta)}" + (f" (at {view['etaAt']})" if eta is not None else "")
    if view["medianNodeSeconds"] is not None:
        timing += f"  median node {format_duration(view['medianNodeSeconds'])}"
    lines.append(timing)
    if view["coordinator"]:
        lines.append(f"  coordinator {view['coordinator']} (epoch {view['epoch']})")
    backup = view["backup"]
    if backup:
        verified = "verified" if backup.get("verified") else "NOT verified"
        lines.append(f"  backup    {backup.get('location', '')} ({verified})")
    if view["message"]:
        lines.append(f"  message   {_clip(str(view['message']), 200)}")
    for c in view["conditions"]:
        if c.get("type") == "RequiresAttention" and c.get("status") == "True":
            lines.append(f"  ATTENTION {c.get('reason', '')}: {_clip(str(c.get('message', '')), 200)}")
    if view["nodes"]:
        rows: list[tuple[str, ...]] = [NODE_COLUMNS]
        for n in view["nodes"]:
            role = "control-plane" if n["role"] == "ControlPlane" else "worker"
            if n["canary"]:
                role += " (canary)"
            rows.append((n["name"], role, n["phase"], n["step"] or "-", str(n["attempts"]),
                         n["fromVersion"] or "-", n["toVersion"] or "-", format_duration(n["durationSeconds"]),
                         _clip(str(n["message"] or ""), width)))
        lines.append("")
        lines.extend(table(rows))
    return "\n".join(lines)


def render(objs: Sequence[Mapping[str, Any]], now: datetime, wide: bool = False) -> str:
    """The `kupd status` table: one block per operation, oldest first."""
    doc = document(objs, now)
    if not doc["operations"]:
        return "No DirectUpdates found."
    return "\n\n".join(render_operation(v, wide) for v in doc["operations"])
