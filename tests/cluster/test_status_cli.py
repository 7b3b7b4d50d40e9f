"""`kupd status` against the real API server: a DirectUpdate with a status written through the
status subresource (as the coordinator writes it), read back by the CLI as a subprocess, and the
kubectl commands of the operator docs run against the same object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kupd.devcluster import ControlPlane
from tests.cluster.harness import apply_du, get_du

ROOT = Path(__file__).resolve().parents[2]
NAME = "status-cli"


def ts(minutes_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_status() -> dict[str, Any]:
    def entry(name: str, role: str, phase: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "role": role, "phase": phase, "attempts": 1 if phase != "Pending" else 0,
                "fromVersion": "v1.31.3", "toVersion": "v1.32.1", **kw}

    return {
        "phase": "Running", "observedGeneration": 1, "coordinator": "cp-1", "epoch": 3, "hops": ["v1.32.1"],
        "progress": "2/4", "startedAt": ts(20), "message": "upgrading w-1",
        "summary": {"total": 4, "pending": 1, "upgrading": 1, "succeeded": 2, "failed": 0, "skipped": 0},
        "conditions": [{"type": "Progressing", "status": "True", "reason": "Upgrading", "message": "2/4 nodes done",
                        "observedGeneration": 1, "lastTransitionTime": ts(20)}],
        "backup": {"location": "file:///mnt/backups/etcd-cp-1.db", "size": 1234, "verified": True},
        "nodes": [
            entry("cp-1", "ControlPlane", "Succeeded", step="uncordon", startedAt=ts(20), finishedAt=ts(12)),
            entry("cp-2", "ControlPlane", "Succeeded", step="uncordon", startedAt=ts(12), finishedAt=ts(6)),
            entry("w-1", "Worker", "Upgrading", step="drain", startedAt=ts(2), message="evicting 3 pods",
                  grant={"epoch": 3, "versions": ["v1.32.1"], "grantedAt": ts(2)}),
            entry("w-2", "Worker", "Pending"),
        ],
    }


def write_status(cp: ControlPlane, name: str, status: dict[str, Any]) -> None:
    obj = get_du(cp, name)
    obj["status"] = status
    cp.kubectl("replace", "--subresource=status", "-f", "-", input_text=json.dumps(obj))


def kupd(cp: ControlPlane, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kupd", "status", *args, "--kubeconfig", str(cp.admin_kubeconfig)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


@pytest.fixture
def du(crds: ControlPlane) -> Iterator[ControlPlane]:
    """A DirectUpdate that no daemon plans: its status is what the test writes."""
    apply_du(crds, NAME, {"version": "v1.32.1", "concurrency": 2})
    write_status(crds, NAME, running_status())
    try:
        yield crds
    finally:
        crds.kubectl("delete", "directupdate", NAME, "--ignore-not-found", "--wait=true", check=False)


def test_status_table_json_and_printer_columns(du: ControlPlane) -> None:
    res = kupd(du, NAME)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"DirectUpdate {NAME}: Running"
    assert "  progress  [##########----------] 2/4 nodes  50%" in lines
    # Two measured nodes of 8m and 6m: median 7m. The workers go two at a time: w-1 has ~5m of its
    # turn left, w-2 a whole one: (5/7 + 1) / 2 turns x 7m = 6m.
    timing = next(ln for ln in lines if ln.startswith("  elapsed"))
    assert timing.startswith("  elapsed   20m") and "median node 7m00s" in timing
    assert " ETA 5m5" in timing or " ETA 6m0" in timing, timing
    assert "  backup    file:///mnt/backups/etcd-cp-1.db (verified)" in lines
    rows = {ln.split()[0]: ln.split() for ln in lines[lines.index("") + 2:]}
    assert rows["w-1"][:7] == ["w-1", "worker", "Upgrading", "drain", "1", "v1.31.3", "v1.32.1"]
    assert rows["w-1"][7].startswith("2m") and " ".join(rows["w-1"][8:]) == "evicting 3 pods"
    assert rows["w-2"][2:4] == ["Pending", "-"]

    res = kupd(du, "-o", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (op,) = [o for o in doc["operations"] if o["name"] == NAME]
    assert op["phase"] == "Running" and op["progress"] == {"done": 2, "total": 4, "percent": 50}
    assert op["medianNodeSeconds"] == 420.0 and 350 <= op["etaSeconds"] <= 370
    assert [n["phase"] for n in op["nodes"]] == ["Succeeded", "Succeeded", "Upgrading", "Pending"]

    res = kupd(du, "no-such-update")
    assert res.returncode == 1 and "not found" in res.stderr

    # `kubectl get directupdates` shows the same at a glance.
    out = du.kubectl("get", "directupdates").stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "TARGET", "PROGRESS", "AGE"]
    assert next(ln for ln in out if ln.startswith(NAME)).split()[:4] == [NAME, "Running", "v1.32.1", "2/4"]
    wide = du.kubectl("get", "du", NAME, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:5] == ["NAME", "PHASE", "TARGET", "PROGRESS", "MESSAGE"]
    assert "upgrading w-1" in wide[1]


def test_watch_exits_when_terminal(du: ControlPlane) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kupd", "status", NAME, "--watch", "--interval", "0.2", "-o", "json",
         "--kubeconfig", str(du.admin_kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["operations"][0]["phase"] == "Running"
        time.sleep(0.5)
        assert proc.poll() is None, "--watch must keep watching a Running operation"
        done = running_status()
        for n in done["nodes"]:
            n.update(phase="Succeeded", finishedAt=ts(0), startedAt=n.get("startedAt") or ts(1))
            n.pop("grant", None)
        done.update(phase="Succeeded", progress="4/4", finishedAt=ts(0), message="all 4 selected nodes are at v1.32.1",
                    summary={"total": 4, "pending": 0, "upgrading": 0, "succeeded": 4, "failed": 0, "skipped": 0})
        write_status(du, NAME, done)
        rc = proc.wait(timeout=30)
        rest = proc.stdout.read().splitlines()
        assert rc == 0, proc.stderr.read() if proc.stderr else ""
        last = json.loads(rest[-1])["operations"][0]
        assert last["phase"] == "Succeeded" and last["progress"]["percent"] == 100 and last["etaSeconds"] is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
