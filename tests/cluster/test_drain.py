"""Drains with kubectl drain's semantics, on the real API server and disruption controller, run by
real `kupd daemon` processes whose simulated kubelets run the pods and finish their deletion."""

from __future__ import annotations

import json
import time
from typing import Any

from kupd.sim.devcluster import ControlPlane
from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import apply_du, get_du, wait_phase

NO_BACKUP = {"policy": "Disabled"}
# A controller owner: the pod counts as managed (kubectl drain's test). Nothing checks that the
# ReplicaSet exists: the test control plane runs no garbage collector.
RS = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-rs", "uid": "0b7a3c1e-0000-4000-8000-000000000001",
      "controller": True}
DS = {**RS, "kind": "DaemonSet", "name": "agent-ds"}


def make_pod(cp: ControlPlane, name: str, node: str, labels: dict[str, str] | None = None,
             owner: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
             volumes: list[dict[str, Any]] | None = None) -> None:
    md: dict[str, Any] = {"name": name, "namespace": "default", "labels": labels or {}}
    if owner:
        md["ownerReferences"] = [owner]
    if annotations:
        md["annotations"] = annotations
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "c", "image": "registry.example/app:1"}]}
    if volumes:
        spec["volumes"] = volumes
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": md,
                                                          "spec": spec}))


def pods_left(cp: ControlPlane) -> set[str]:
    items = json.loads(cp.kubectl("get", "pods", "-n", "default", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"] for p in items}


def node(cp: ControlPlane, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cp.kubectl("get", "node", name, "-o", "json").stdout)
    return out


def entry(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in st.get("nodes") or [] if n["name"] == name)


def wait_running(cp: ControlPlane, names: set[str], timeout: float = 30) -> None:
    """Until the simulated kubelet reports the pods Running (a PDB counts only healthy pods)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(cp.kubectl("get", "pods", "-n", "default", "-o", "json").stdout)["items"]
        running = {p["metadata"]["name"] for p in items if (p.get("status") or {}).get("phase") == "Running"}
        if names <= running:
            return
        time.sleep(0.3)
    raise AssertionError(f"pods {names} not Running in {timeout}s")


def two_nodes(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sim.cp.kubectl("get", "node", "w-1", check=False).returncode:
        time.sleep(0.3)


def test_unmanaged_pods_and_emptydir_data_stop_the_drain_with_the_node_cordoned(sim: SimCluster) -> None:
    two_nodes(sim)
    cp = sim.cp
    make_pod(cp, "bare", "w-1")
    make_pod(cp, "cache", "w-1", owner=RS, volumes=[{"name": "scratch", "emptyDir": {}}])
    make_pod(cp, "web", "w-1", owner=RS)
    wait_running(cp, {"bare", "cache", "web"})
    apply_du(cp, "guard", {"version": "v1.32.0", "backup": NO_BACKUP})
    st = wait_phase(cp, "guard", ("RequiresAttention", "Failed", "Succeeded"), timeout=120)
    assert st["phase"] == "RequiresAttention", st
    w = entry(st, "w-1")
    assert w["phase"] == "Failed" and w["reason"] == "DrainRefused" and w["attempts"] == 1, w
    assert "default/bare: no controller manages it" in w["message"]
    assert "default/cache: it has emptyDir data" in w["message"]
    cond = next(c for c in st["conditions"] if c["type"] == "RequiresAttention")
    assert cond["status"] == "True" and cond["reason"] == "DrainRefused"
    # Nothing was evicted: kubectl drain checks every pod before it evicts any.
    assert pods_left(cp) == {"bare", "cache", "web"}
    n = node(cp, "w-1")
    assert n["spec"].get("unschedulable") is True
    attention = n["metadata"]["annotations"]["kupd.io/attention"]
    assert attention.startswith("DrainRefused: ") and "default/bare" in attention


def test_force_and_delete_emptydir_data_opt_in_and_daemonset_and_mirror_pods_stay(sim: SimCluster) -> None:
    two_nodes(sim)
    cp = sim.cp
    make_pod(cp, "bare", "w-1")
    make_pod(cp, "cache", "w-1", owner=RS, volumes=[{"name": "scratch", "emptyDir": {}}])
    make_pod(cp, "agent", "w-1", owner=DS)
    make_pod(cp, "static", "w-1", annotations={"kubernetes.io/config.mirror": "0123abcd"})
    wait_running(cp, {"bare", "cache", "agent", "static"})
    apply_du(cp, "optin", {"version": "v1.32.0", "backup": NO_BACKUP,
                           "drain": {"force": True, "deleteEmptyDirData": True}})
    st = wait_phase(cp, "optin", ("RequiresAttention", "Failed", "Succeeded"), timeout=120)
    assert st["phase"] == "Succeeded", st
    assert pods_left(cp) == {"agent", "static"}
    n = node(cp, "w-1")
    assert not n["spec"].get("unschedulable")
    assert "kupd.io/attention" not in (n["metadata"].get("annotations") or {})


def test_pod_selector_takes_the_set_based_grammar(sim: SimCluster) -> None:
    two_nodes(sim)
    cp = sim.cp
    make_pod(cp, "web-db", "w-1", {"app": "web", "tier": "db"}, owner=RS)
    make_pod(cp, "web-front", "w-1", {"app": "web", "tier": "front"}, owner=RS)
    make_pod(cp, "web", "w-1", {"app": "web"}, owner=RS)
    make_pod(cp, "api", "w-1", {"app": "api"}, owner=RS)
    wait_running(cp, {"web-db", "web-front", "web", "api"})
    apply_du(cp, "sel", {"version": "v1.32.0", "backup": NO_BACKUP, "drain": {"podSelector": "app=web,tier!=db"}})
    st = wait_phase(cp, "sel", ("RequiresAttention", "Failed", "Succeeded"), timeout=120)
    assert st["phase"] == "Succeeded", st
    assert pods_left(cp) == {"web-db", "api"}


def test_a_drain_that_outlasts_its_timeout_needs_attention_naming_the_pdb(sim: SimCluster) -> None:
    two_nodes(sim)
    cp = sim.cp
    make_pod(cp, "web", "w-1", {"app": "web"}, owner=RS)
    wait_running(cp, {"web"})
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web-pdb", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    }))
    started = time.monotonic()
    apply_du(cp, "stuck", {"version": "v1.32.0", "backup": NO_BACKUP, "maxAttempts": 3,
                           "drain": {"timeoutSeconds": 30}, "preflight": {"warnOnly": ["EvictionsPossible"]}})
    st = wait_phase(cp, "stuck", ("RequiresAttention", "Failed", "Succeeded"), timeout=150)
    took = time.monotonic() - started
    assert st["phase"] == "RequiresAttention", st
    w = entry(st, "w-1")
    # One attempt, not maxAttempts drains of 30 s each: more time cannot help a PDB that forbids it.
    assert w["reason"] == "DrainTimedOut" and w["attempts"] == 1, w
    assert "refused by PodDisruptionBudget default/web-pdb" in w["message"], w
    assert "left cordoned" in w["message"]
    assert took < 90, f"{took:.0f}s: the drain was tried more than once"
    cond = next(c for c in st["conditions"] if c["type"] == "RequiresAttention")
    assert cond["reason"] == "DrainTimedOut" and "web-pdb" in cond["message"]
    n = node(cp, "w-1")
    assert n["spec"].get("unschedulable") is True
    assert "web-pdb" in n["metadata"]["annotations"]["kupd.io/attention"]
    assert pods_left(cp) == {"web"}
    # The status on the API server names the blocker while it blocks, too (checked after the fact
    # through the Event the coordinator recorded).
    events = json.loads(cp.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "DrainBlocked" and "default/web-pdb" in e["message"] for e in events)
    assert get_du(cp, "stuck")["status"]["phase"] == "RequiresAttention"
