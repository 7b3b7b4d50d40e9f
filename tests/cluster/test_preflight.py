"""Cluster preflight before the first grant, on the real API server and disruption controller with
real `kupd daemon` processes: one Condition per failing check naming the node or object; the first
grant waits until the checks pass; a check listed in spec.preflight.warnOnly only warns."""

from __future__ import annotations

import json
import time
from typing import Any

from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import apply_du, get_du, wait_phase, wait_registered

NO_BACKUP = {"policy": "Disabled"}
RS = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "db-rs", "uid": "0b7a3c1e-0000-4000-8000-000000000003",
      "controller": True}


def conds(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions") or []}


def wait_condition(sim: SimCluster, name: str, ctype: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = get_du(sim.cp, name).get("status") or {}
        c = conds(st).get(ctype)
        if c and c["status"] == status:
            return st
        time.sleep(0.5)
    raise AssertionError(f"{ctype}={status} not reached: {json.dumps(st)[:3000]}")


def test_a_budget_that_never_allows_an_eviction_holds_the_first_grant(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    cp = sim.cp
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and cp.kubectl("get", "node", "w-1", check=False).returncode:
        time.sleep(0.3)
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db-0", "namespace": "default", "labels": {"app": "db"}, "ownerReferences": [RS]},
        "spec": {"nodeName": "w-1", "containers": [{"name": "c", "image": "registry.example/db:1"}]}}))
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}}}))
    apply_du(cp, "pre", {"version": "v1.32.0", "backup": NO_BACKUP})
    st = wait_condition(sim, "pre", "PreflightEvictionsPossible", "False")
    c = conds(st)["PreflightEvictionsPossible"]
    assert "default/db" in c["message"] and "minAvailable 1 with 1 pods expected" in c["message"]
    assert "default/db-0" in c["message"]
    assert conds(st)["Preflight"]["status"] == "False"
    time.sleep(3)
    st = get_du(cp, "pre")["status"]
    assert st["phase"] == "Pending" and "preflight EvictionsPossible" in st["message"], st
    assert not [n for n in st.get("nodes") or [] if n.get("grant")], "nothing granted while a check fails"
    for name in sim.nodes:
        assert sim.nodes[name].state()["effects"] == [], f"{name} changed before the preflight passed"
    events = json.loads(cp.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "PreflightEvictionsPossible" and e["type"] == "Warning" for e in events)
    # Fix the budget: the checks pass and the rollout starts by itself.
    cp.kubectl("patch", "pdb", "db", "-n", "default", "--type=merge", "-p", '{"spec":{"minAvailable":0}}')
    st = wait_phase(cp, "pre", ("Succeeded", "Failed", "RequiresAttention"), timeout=180)
    assert st["phase"] == "Succeeded", st
    assert conds(st)["Preflight"]["status"] == "True"
    assert conds(st)["PreflightEvictionsPossible"]["status"] == "True"


def test_a_node_without_a_live_daemon_is_named_and_warn_only_lets_a_check_pass(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    # w-1 Ready and its member renewing first: the second operation's checks must pass on it.
    wait_registered(sim)
    cp = sim.cp
    # A Node with no kupd on it: not Ready (no kubelet either), no member Lease.
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "w-ghost", "labels": {"pool": "b"}}}))
    apply_du(cp, "ghost", {"version": "v1.32.0", "backup": NO_BACKUP})
    st = wait_condition(sim, "ghost", "PreflightNodesReady", "False")
    assert "node w-ghost is not Ready" in conds(st)["PreflightNodesReady"]["message"]
    assert "w-ghost" in conds(st)["PreflightDaemonsAlive"]["message"]
    assert not [n for n in st.get("nodes") or [] if n.get("grant")]
    cp.kubectl("delete", "directupdate", "ghost", "--wait=true")

    # Leave the node out of the selection: the checks are about the targeted nodes only.
    apply_du(cp, "ghost-out", {"version": "v1.32.0", "backup": NO_BACKUP,
                               "nodeSelector": {"matchExpressions": [{"key": "pool", "operator": "NotIn",
                                                                      "values": ["b"]}]}})
    st = wait_phase(cp, "ghost-out", ("Succeeded", "Failed", "RequiresAttention"), timeout=180)
    assert st["phase"] == "Succeeded", st
    assert "PreflightNodesReady" not in conds(st)
