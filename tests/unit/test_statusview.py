"""kupd.statusview: the `kupd status` table and JSON document, from DirectUpdate objects. Pure."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kupd import statusview as sv
from kupd.commands import status as status_cmd
from kupd.errors import RetryableError

NOW = datetime(2026, 11, 27, 4, 30, 0, tzinfo=UTC)


def node(name: str, phase: str, *, role: str = "Worker", started: str | None = None,
         finished: str | None = None, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"name": name, "role": role, "phase": phase, "toVersion": "v1.32.1",
                         "fromVersion": "v1.31.3", "attempts": 1 if phase != "Pending" else 0}
    if started:
        e["startedAt"] = started
    if finished:
        e["finishedAt"] = finished
    e.update(extra)
    return e


def du(name: str, phase: str, nodes: list[dict[str, Any]], *, concurrency: int = 1,
       created: str = "2026-11-27T04:00:00Z", **status: Any) -> dict[str, Any]:
    done = sum(1 for n in nodes if n["phase"] in ("Succeeded", "Skipped"))
    st: dict[str, Any] = {"phase": phase, "nodes": nodes, "progress": f"{done}/{len(nodes)}",
                          "summary": {"total": len(nodes),
                                      "pending": sum(n["phase"] == "Pending" for n in nodes),
                                      "upgrading": sum(n["phase"] in sv.IN_FLIGHT for n in nodes),
                                      "succeeded": sum(n["phase"] == "Succeeded" for n in nodes),
                                      "failed": sum(n["phase"] == "Failed" for n in nodes),
                                      "skipped": sum(n["phase"] == "Skipped" for n in nodes)},
                          "coordinator": "cp-1", "epoch": 2, "hops": ["v1.32.1"],
                          "startedAt": "2026-11-27T04:00:00Z"}
    st.update(status)
    return {"apiVersion": "kupd.io/v1alpha1", "kind": "DirectUpdate",
            "metadata": {"name": name, "creationTimestamp": created, "generation": 1, "resourceVersion": "7"},
            "spec": {"version": "v1.32.1", "concurrency": concurrency}, "status": st}


# Two control-plane nodes took 4 and 6 minutes (median 5m); the rest is to come.
RUNNING = du("upgrade-132", "Running", [
    node("cp-1", "Succeeded", role="ControlPlane", started="2026-11-27T04:00:00Z", finished="2026-11-27T04:04:00Z",
         step="uncordon"),
    node("cp-2", "Succeeded", role="ControlPlane", started="2026-11-27T04:04:00Z", finished="2026-11-27T04:10:00Z",
         step="uncordon"),
    node("cp-3", "Upgrading", role="ControlPlane", started="2026-11-27T04:28:00Z", step="drain"),
    node("w-1", "Pending"), node("w-2", "Pending"), node("w-3", "Pending"), node("w-4", "Skipped"),
], concurrency=2, message="upgrading cp-3")


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0s"), (9.4, "9s"), (59.6, "1m00s"), (245, "4m05s"), (3600, "1h00m"), (3720 + 59, "1h02m"),
    (-3, "0s"),
])
def test_format_duration(seconds: float | None, text: str) -> None:
    assert sv.format_duration(seconds) == text


@pytest.mark.parametrize(("done", "total", "width", "bar"), [
    (0, 4, 8, "[--------]"), (1, 4, 8, "[##------]"), (3, 4, 8, "[######--]"), (4, 4, 8, "[########]"),
    (0, 0, 4, "[####]"), (5, 4, 4, "[####]"), (1, 3, 10, "[###-------]"),
])
def test_progress_bar(done: int, total: int, width: int, bar: str) -> None:
    assert sv.progress_bar(done, total, width) == bar


@pytest.mark.parametrize(("entry", "seconds"), [
    (node("a", "Pending"), None),
    (node("a", "Upgrading", started="2026-11-27T04:29:00Z"), 60.0),
    (node("a", "Lost", started="2026-11-27T04:20:00Z"), 600.0),
    (node("a", "Succeeded", started="2026-11-27T04:00:00Z", finished="2026-11-27T04:02:30Z"), 150.0),
    (node("a", "Failed", started="2026-11-27T04:00:00Z", finished="2026-11-27T04:00:10Z"), 10.0),
    # A finished entry without finishedAt has no duration rather than a growing one.
    (node("a", "Succeeded", started="2026-11-27T04:00:00Z"), None),
    (node("a", "Upgrading", started="not a time"), None),
])
def test_node_seconds(entry: dict[str, Any], seconds: float | None) -> None:
    assert sv.node_seconds(entry, NOW) == seconds


def _ok(name: str, minutes: int, role: str = "Worker") -> dict[str, Any]:
    return node(name, "Succeeded", role=role, started="2026-11-27T03:00:00Z",
                finished=f"2026-11-27T03:{minutes:02d}:00Z")


@pytest.mark.parametrize(("nodes", "concurrency", "phase", "eta"), [
    # Nothing measured yet: no ETA.
    ([node("w-1", "Pending"), node("w-2", "Pending")], 1, "Running", None),
    # Median 10m; 4 workers left at concurrency 2: two turns.
    ([_ok("w-0", 10)] + [node(f"w-{i}", "Pending") for i in range(1, 5)], 2, "Running", 1200.0),
    # The brief's formula: remaining / concurrency x median, fractional turns included.
    ([_ok("w-0", 10)] + [node(f"w-{i}", "Pending") for i in range(1, 4)], 2, "Running", 900.0),
    # Control-plane nodes go one at a time whatever the concurrency.
    ([_ok("cp-1", 6, "ControlPlane"), node("cp-2", "Pending", role="ControlPlane"),
      node("w-1", "Pending"), node("w-2", "Pending")], 2, "Running", 720.0),
    # Median of 4, 6, 20 is 6m; a node 2 minutes into its turn has 4 left.
    ([_ok("w-a", 4), _ok("w-b", 6), _ok("w-c", 20), node("w-d", "Upgrading", started="2026-11-27T04:28:00Z")],
     1, "Running", 240.0),
    # Overdue in-flight nodes count as nearly done, never negative.
    ([_ok("w-a", 1), node("w-d", "Upgrading", started="2026-11-27T04:00:00Z")], 1, "Running", 0.0),
    # Skipped nodes are done.
    ([_ok("w-a", 5), node("w-b", "Skipped")], 1, "Running", 0.0),
    # Only a Running operation has an ETA.
    ([_ok("w-0", 10), node("w-1", "Pending")], 1, "Paused", None),
    ([_ok("w-0", 10), node("w-1", "Failed")], 1, "RequiresAttention", None),
    ([_ok("w-0", 10)], 1, "Succeeded", None),
])
def test_eta(nodes: list[dict[str, Any]], concurrency: int, phase: str, eta: float | None) -> None:
    assert sv.eta_seconds(du("x", phase, nodes, concurrency=concurrency), NOW) == eta


def test_document_running() -> None:
    doc = sv.document([RUNNING], NOW)
    assert doc["kind"] == "Status" and doc["generatedAt"] == "2026-11-27T04:30:00Z"
    (op,) = doc["operations"]
    assert op["name"] == "upgrade-132" and op["phase"] == "Running" and op["target"] == "v1.32.1"
    assert op["progress"] == {"done": 3, "total": 7, "percent": 42}
    assert op["durationSeconds"] == 1800.0
    assert op["medianNodeSeconds"] == 300.0
    # cp-3: 5m median - 2m elapsed = 3m; 3 workers / 2 x 5m = 7m30s.
    assert op["etaSeconds"] == 630.0 and op["etaAt"] == "2026-11-27T04:40:30Z"
    assert op["coordinator"] == "cp-1" and op["epoch"] == 2
    rows = {n["name"]: n for n in op["nodes"]}
    assert rows["cp-3"]["durationSeconds"] == 120.0 and rows["cp-3"]["step"] == "drain"
    assert rows["w-1"]["durationSeconds"] is None
    assert [n["name"] for n in op["nodes"]] == ["cp-1", "cp-2", "cp-3", "w-1", "w-2", "w-3", "w-4"]
    json.dumps(doc)  # serialisable as is


def test_document_orders_oldest_first_and_tolerates_empty_status() -> None:
    new = {"metadata": {"name": "b", "creationTimestamp": "2026-11-27T05:00:00Z"}, "spec": {"version": "v1.32.0"}}
    old = du("a", "Succeeded", [_ok("w-1", 3)], finishedAt="2026-11-27T04:10:00Z")
    doc = sv.document([new, old], NOW)
    assert [o["name"] for o in doc["operations"]] == ["a", "b"]
    b = doc["operations"][1]
    assert b["phase"] == "Pending" and b["progress"] == {"done": 0, "total": 0, "percent": 100}
    assert b["nodes"] == [] and b["durationSeconds"] is None and b["etaSeconds"] is None
    assert doc["operations"][0]["durationSeconds"] == 600.0  # finishedAt bounds it


def test_render_running_table() -> None:
    text = sv.render([RUNNING], NOW)
    lines = text.splitlines()
    assert lines[0] == "DirectUpdate upgrade-132: Running"
    assert "  target    v1.32.1  (hops: v1.32.1; concurrency 2)" in lines
    assert "  progress  [########------------] 3/7 nodes  42%" in lines
    assert ("  elapsed   30m00s  ETA 10m30s (at 2026-11-27T04:40:30Z)  median node 5m00s") in lines
    assert "  coordinator cp-1 (epoch 2)" in lines
    header = next(i for i, ln in enumerate(lines) if ln.startswith("NODE"))
    assert lines[header].split() == list(sv.NODE_COLUMNS)
    row = lines[header + 3].split()
    assert row == ["cp-3", "control-plane", "Upgrading", "drain", "1", "v1.31.3", "v1.32.1", "2m00s"]
    assert lines[header + 4].split()[:3] == ["w-1", "worker", "Pending"]
    # Columns line up.
    col = lines[header].index("PHASE")
    assert all(ln[col:].split()[0] in ("Succeeded", "Upgrading", "Pending", "Skipped") for ln in lines[header + 1:])


def test_render_attention_backup_canary_and_long_message() -> None:
    failed = node("w-1", "Failed", started="2026-11-27T04:00:00Z", finished="2026-11-27T04:01:00Z",
                  step="drain", attempts=3, canary=True, message="pod default/db blocked by PDB db-pdb " * 5)
    obj = du("u", "RequiresAttention", [failed], message="node w-1: drain failed",
             backup={"location": "s3://b/k/etcd.db", "verified": True},
             conditions=[{"type": "RequiresAttention", "status": "True", "reason": "NodeFailed",
                          "message": "node w-1: drain failed"}])
    text = sv.render([obj], NOW)
    assert "  backup    s3://b/k/etcd.db (verified)" in text
    assert "  ATTENTION NodeFailed: node w-1: drain failed" in text
    assert "  elapsed   30m00s  ETA -" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("w-1"))
    assert "worker (canary)" in row and "Failed" in row and " 3 " in row
    assert row.endswith("...") and len(row.split("1m00s", 1)[1].strip()) == sv.MESSAGE_WIDTH


def test_render_terminal_has_no_eta_and_empty_list_says_so() -> None:
    obj = du("done", "Succeeded", [_ok("w-1", 3)], finishedAt="2026-11-27T04:03:00Z")
    text = sv.render([obj], NOW)
    assert "ETA" not in text and "elapsed   3m00s" in text
    assert sv.render([], NOW) == "No DirectUpdates found."


def test_watch_prints_changes_and_exits_on_terminal() -> None:
    failed = du("u", "Failed", [node("w-1", "Failed")])
    failed["metadata"]["resourceVersion"] = "8"
    frames: list[list[dict[str, Any]] | Exception] = [
        [du("u", "Running", [node("w-1", "Upgrading", started="2026-11-27T04:29:00Z")])],
        RetryableError("API unreachable"),
        [du("u", "Running", [node("w-1", "Upgrading", started="2026-11-27T04:29:00Z")])],
        [failed],
    ]

    def fetch(name: str | None) -> list[dict[str, Any]]:
        f = frames.pop(0)
        if isinstance(f, Exception):
            raise f
        return f

    out = io.StringIO()
    rc = status_cmd.watch(fetch, "u", "json", 0.1, out, sleep=lambda s: None)
    assert rc == 1 and not frames
    docs = [json.loads(ln) for ln in out.getvalue().splitlines()]
    # Unchanged resourceVersion: no second frame for the repeat.
    assert [d["operations"][0]["phase"] for d in docs] == ["Running", "Failed"]
