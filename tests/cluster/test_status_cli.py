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

from kupd.sim.devcluster import ControlPlane
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
    assert res.returncode == 3 and "not found" in res.stderr  # exit code 3: not found

    # `kubectl get directupdates` shows the same at a glance.
    out = du.kubectl("get", "directupdates").stdout.splitlines()
    assert out[0].split()[:4] == ["NAME", "PHASE", "TARGET", "PROGRESS"] and "AGE" in out[0].split()
    assert next(ln for ln in out if ln.startswith(NAME)).split()[:4] == [NAME, "Running", "v1.32.1", "2/4"]
    wide = du.kubectl("get", "du", NAME, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:4] == ["NAME", "PHASE", "TARGET", "PROGRESS"] and "MESSAGE" in wide[0].split()
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


# -- the operator docs' kubectl and kupd status commands, run for real ----------------------------------
DOC_OP, DOC_NODE = "upgrade-132", "w-3"
DOCS = [ROOT / "docs" / "usage" / "runbook.md", ROOT / "docs" / "usage" / "quickstart.md"]
# Commands that cannot run here, with the reason. Every other kubectl command of DOCS runs.
NOT_RUN: dict[str, str] = {}
NL = '{"\\n"}'
# What some commands must print.
EXPECT = {
    "kubectl get directupdates": [DOC_OP, "RequiresAttention", "v1.32.1", "3/6"],
    f"kubectl get du {DOC_OP} -o wide": ["node w-3: step drain failed"],
    f"kubectl describe directupdate {DOC_OP}": ["RequiresAttention", "NodeFailed", "w-3 failed at step drain"],
    f"kubectl get events -n default --field-selector involvedObject.kind=DirectUpdate,involvedObject.name={DOC_OP}":
        ["NodeFailed"],
    f"kubectl get events -n default --field-selector involvedObject.kind=Node,involvedObject.name={DOC_NODE}":
        ["NodeFailed"],
    "kubectl -n kupd-system get leases": ["kupd-coordinator", f"kupd-node-{DOC_NODE}"],
    "kubectl -n kupd-system get lease kupd-coordinator -o jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}"
    + NL: ["cp-1 3"],
    f"kubectl -n kupd-system get lease kupd-node-{DOC_NODE} -o jsonpath={{.metadata.annotations.kupd\\.io/report}}"
    + NL: ['"phase":"Failed"'],
}


def _yaml_block(path: Path) -> str:
    import re

    blocks: list[str] = re.findall(r"^```yaml\n(.*?)^```", path.read_text(), re.S | re.M)
    return next(b for b in blocks if "kind: DirectUpdate" in b)


def attention_status() -> dict[str, Any]:
    st = running_status()
    nodes = [
        *st["nodes"][:2],
        {"name": "cp-3", "role": "ControlPlane", "phase": "Succeeded", "attempts": 1, "startedAt": ts(8),
         "finishedAt": ts(2), "fromVersion": "v1.31.3", "toVersion": "v1.32.1", "step": "uncordon"},
        {"name": "w-1", "role": "Worker", "phase": "Upgrading", "attempts": 1, "startedAt": ts(1), "step": "drain",
         "grant": {"epoch": 3, "versions": ["v1.32.1"]}},
        {"name": DOC_NODE, "role": "Worker", "phase": "Failed", "attempts": 3, "startedAt": ts(30),
         "finishedAt": ts(1), "step": "drain", "message": "step drain failed after 3 attempts: drain timed out"},
        {"name": "w-4", "role": "Worker", "phase": "Pending", "attempts": 0},
    ]
    msg = "node w-3: step drain failed after 3 attempts: drain timed out"
    st.update(phase="RequiresAttention", message=msg, progress="3/6", nodes=nodes,
              summary={"total": 6, "pending": 1, "upgrading": 1, "succeeded": 3, "failed": 1, "skipped": 0})
    st["conditions"].append({"type": "RequiresAttention", "status": "True", "reason": "NodeFailed", "message": msg,
                             "observedGeneration": 1, "lastTransitionTime": ts(1)})
    return st


def _restore(cp: ControlPlane, manifest: Path, events: bool = False) -> None:
    """The world the runbook talks about; idempotent, run again after every command that deletes."""
    cp.kubectl("apply", "-f", str(manifest))
    du = get_du(cp, DOC_OP)
    if not (du.get("status") or {}).get("phase"):
        du["status"] = attention_status()
        cp.kubectl("replace", "--subresource=status", "-f", "-", input_text=json.dumps(du))
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": DOC_NODE}}
    report = json.dumps({"operation": DOC_OP, "phase": "Failed", "step": "drain"}, separators=(",", ":"))
    leases = [
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
         "metadata": {"name": "kupd-coordinator", "namespace": "kupd-system"},
         "spec": {"holderIdentity": "cp-1", "leaseTransitions": 3, "leaseDurationSeconds": 15}},
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
         "metadata": {"name": f"kupd-node-{DOC_NODE}", "namespace": "kupd-system",
                      "annotations": {"kupd.io/report": report}},
         "spec": {"holderIdentity": DOC_NODE, "leaseDurationSeconds": 20}},
    ]
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": [node, *leases]}))
    if events:
        # As the coordinator records them: in default, on the DirectUpdate and on the Node.
        now = ts(0)
        for ref in ({"apiVersion": "kupd.io/v1alpha1", "kind": "DirectUpdate", "name": DOC_OP,
                     "uid": du["metadata"]["uid"]},
                    {"apiVersion": "v1", "kind": "Node", "name": DOC_NODE, "uid": DOC_NODE}):
            ev = {"apiVersion": "v1", "kind": "Event",
                  "metadata": {"generateName": f"{DOC_OP}.", "namespace": "default"},
                  "involvedObject": ref, "reason": "NodeFailed", "type": "Warning", "count": 1,
                  "message": "w-3 failed at step drain: drain timed out", "source": {"component": "kupd"},
                  "firstTimestamp": now, "lastTimestamp": now}
            cp.kubectl("create", "-f", "-", input_text=json.dumps(ev))


def test_docs_commands_run(crds: ControlPlane, tmp_path: Path) -> None:
    from tests.unit.test_docs_commands import doc_commands

    manifest = tmp_path / "directupdate.yaml"
    manifest.write_text(_yaml_block(ROOT / "docs" / "usage" / "quickstart.md"))
    kubectl_cmds: list[list[str]] = []
    for _, argv in doc_commands("kubectl", DOCS):
        if argv not in kubectl_cmds:
            kubectl_cmds.append(argv)
    status_cmds: list[list[str]] = []
    for _, argv in doc_commands("kupd", DOCS):
        if argv[1] == "status" and "--watch" not in argv and argv not in status_cmds:
            status_cmds.append(argv)
    assert len(kubectl_cmds) >= 10 and status_cmds
    seen_expect: set[str] = set()
    try:
        _restore(crds, manifest, events=True)
        for argv in kubectl_cmds:
            text = " ".join(argv)
            if text in NOT_RUN:
                continue
            args = [a.replace("/usr/share/kupd/crds/", str(ROOT / "crds")) for a in argv[1:]]
            args = [str(manifest) if a == "directupdate.yaml" else a for a in args]
            res = crds.kubectl(*args, check=False)
            ok = res.returncode == 0 or "AlreadyExists" in res.stderr
            assert ok, f"`{text}` failed ({res.returncode}): {res.stderr.strip()}"
            for want in EXPECT.get(text, []):
                assert want in res.stdout, f"`{text}` does not show {want!r}:\n{res.stdout}"
            if text in EXPECT:
                seen_expect.add(text)
            if args[0] == "annotate":
                key, _, value = args[3].partition("=")
                assert get_du(crds, DOC_OP)["metadata"]["annotations"][key] == value
            if args[0] == "delete":
                _restore(crds, manifest)
        assert seen_expect == set(EXPECT), f"EXPECT lists commands the docs no longer have: {set(EXPECT) - seen_expect}"
        for argv in status_cmds:
            out = kupd(crds, *argv[2:])
            assert out.returncode == 0, f"`{' '.join(argv)}`: {out.stderr}"
            assert DOC_OP in out.stdout
        table = kupd(crds, DOC_OP).stdout
        assert f"DirectUpdate {DOC_OP}: RequiresAttention" in table
        assert "ATTENTION NodeFailed: node w-3: step drain failed" in table
    finally:
        crds.kubectl("delete", "directupdate", DOC_OP, "--ignore-not-found", check=False)
        crds.kubectl("delete", "node", DOC_NODE, "--ignore-not-found", check=False)
        crds.kubectl("-n", "kupd-system", "delete", "lease", "kupd-coordinator", f"kupd-node-{DOC_NODE}",
                     "--ignore-not-found", check=False)
        crds.kubectl("delete", "events", "-n", "default", "--field-selector=reason=NodeFailed", check=False)
