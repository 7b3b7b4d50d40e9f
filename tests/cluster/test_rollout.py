"""Rolling upgrades on the real control plane with real `kupd daemon` processes on simulated hosts."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from kupd.sim.devcluster import ControlPlane
from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import Monitor, apply_du, effects_once, get_du, wait_members, wait_phase, wait_registered

NO_BACKUP = {"required": False}


def test_control_plane_first_then_workers_within_concurrency(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    for i in range(1, 6):
        sim.add_node(f"w-{i}")
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "roll", {"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "roll", ("Succeeded", "Failed", "RequiresAttention"))
    finally:
        mon.stop()
    assert st["phase"] == "Succeeded", st
    assert st["summary"] == {"total": 6, "pending": 0, "upgrading": 0, "succeeded": 6, "failed": 0, "skipped": 0}
    assert st["progress"] == "6/6"
    mon.assert_invariants(concurrency=2)
    assert mon.grant_order[0] == "cp-1"
    assert mon.max_workers_granted == 2, "concurrency 2 should have been used"
    for name in sim.nodes:
        assert sim.nodes[name].state()["versions"]["kubelet"] == "v1.32.0"
        effects = effects_once(sim, name)
        mode = "apply" if name == "cp-1" else "node"
        assert f"kubeadm upgrade {mode} v1.32.0" in effects
    # Nodes end uncordoned, and kupd's cordon mark is gone.
    nodes = json.loads(sim.cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert not [n["metadata"]["name"] for n in nodes if n["spec"].get("unschedulable")]
    assert not [n for n in nodes if "kupd.io/cordoned-by" in (n["metadata"].get("annotations") or {})]
    # Events were recorded on the CR.
    events = sim.cp.kubectl("get", "events", "-n", "default", "--field-selector",
                            "involvedObject.name=roll", "-o", "json").stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"NodeGranted", "NodeUpgraded", "Succeeded"} <= reasons


def test_canary_and_node_selector(sim: SimCluster) -> None:
    sel = {"simulated": {"node_labels": {"upgrade": "yes"}}}
    sim.add_node("cp-1", control_plane=True, extra=sel)
    for i in range(1, 4):
        sim.add_node(f"w-{i}", extra=sel)
    sim.add_node("w-out", extra={"simulated": {"node_labels": {"upgrade": "no"}}})
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "canary", {
            "version": "v1.31.3", "concurrency": 2, "backup": NO_BACKUP,
            "nodeSelector": {"matchLabels": {"upgrade": "yes"}},
            "canary": {"count": 1, "bakeSeconds": 3},
        })
        st = wait_phase(sim.cp, "canary", ("Succeeded", "Failed", "RequiresAttention"))
    finally:
        mon.stop()
    assert st["phase"] == "Succeeded", st
    mon.assert_invariants(concurrency=2)
    assert [n["name"] for n in st["nodes"]] == ["cp-1", "w-1", "w-2", "w-3"]
    assert [n["name"] for n in st["nodes"] if n.get("canary")] == ["w-1"]
    assert mon.grant_order[:2] == ["cp-1", "w-1"]
    # The other workers waited for the canary to finish and bake.
    later = min(mon.grant_times["w-2"], mon.grant_times["w-3"])
    assert later >= mon.done_times["w-1"] + 2.5
    # The node outside the selector was never touched.
    assert sim.nodes["w-out"].state()["effects"] == []
    assert sim.nodes["w-out"].state()["versions"]["kubelet"] == "v1.31.2"


def test_failed_step_stops_the_rollout(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    sim.add_node("w-2")
    sim.nodes["w-1"].faults({"fail": {"kubelet-package": 99}})
    apply_du(sim.cp, "fails", {"version": "v1.32.0", "concurrency": 1, "maxAttempts": 2, "backup": NO_BACKUP})
    st = wait_phase(sim.cp, "fails", ("RequiresAttention", "Failed", "Succeeded"))
    assert st["phase"] == "RequiresAttention"
    w1 = next(n for n in st["nodes"] if n["name"] == "w-1")
    assert w1["phase"] == "Failed" and w1["step"] == "kubelet-package" and w1["attempts"] == 2
    assert "w-1" in st["message"] and "kubelet-package" in st["message"]
    cond = next(c for c in st["conditions"] if c["type"] == "RequiresAttention")
    assert cond["status"] == "True" and cond["reason"] == "NodeFailed"
    time.sleep(3)  # give a wrong coordinator every chance to grant another node
    st = get_du(sim.cp, "fails")["status"]
    assert next(n for n in st["nodes"] if n["name"] == "w-2")["phase"] == "Pending"
    assert sim.nodes["w-2"].state()["effects"] == []


def test_agent_killed_at_step_boundaries_and_mid_step_resumes(sim: SimCluster) -> None:
    """SIGKILL before and right after the effect of every host step, and in the middle of every
    step: the node still finishes, and no effect is applied twice."""
    sim.step_seconds = 1.0
    sim.add_node("cp-1", control_plane=True)
    w = sim.add_node("w-1")
    host_steps = ["preflight", "repository", "kubeadm-package", "kubeadm-upgrade", "kubelet-package",
                  "restart", "verify"]
    # "after": killed once the step's effect is applied but before the checkpoint says done;
    # "before": killed once the checkpoint says started but before any effect.
    crashes: dict[str, str] = {s: "after" for s in host_steps}
    crashes.update(preflight="before", verify="before")
    w.faults({"crash": crashes})
    apply_du(sim.cp, "kills", {"version": "v1.32.0", "backup": NO_BACKUP})
    killed_mid: set[str] = set()
    restarts = 0

    def tick(st: dict[str, Any]) -> None:
        nonlocal restarts
        if not sim.alive("w-1"):
            restarts += 1
            sim.start("w-1")
            return
        entry = next((n for n in st.get("nodes") or [] if n["name"] == "w-1"), None)
        if entry and entry["phase"] == "Upgrading" and entry.get("step") and entry["step"] not in killed_mid:
            killed_mid.add(entry["step"])
            time.sleep(0.3)
            sim.kill("w-1", signal.SIGKILL)
            restarts += 1
            sim.start("w-1")

    # Crash loops may let the member lease lapse (RequiresAttention, NodeLost) for a while: wait it out.
    st = wait_phase(sim.cp, "kills", ("Succeeded", "Failed"), timeout=300, tick=tick)
    assert st["phase"] == "Succeeded", (st["message"], st["nodes"])
    effects = effects_once(sim, "w-1")
    assert effects == ["repository v1.32", "install kubeadm v1.32.0", "kubeadm upgrade node v1.32.0",
                       "install kubelet kubectl v1.32.0", "restart kubelet v1.32.0"]
    faults = json.loads((w.dir / "state" / "simulated-host.json.faults.json").read_text())
    assert faults["crash"] == {}, "every planned crash happened"
    assert restarts >= 8
    # Mid-step kills land where the watcher sees a step in time (host steps take 1 s; the API-only
    # drain and uncordon are often over before a kill arrives).
    assert len(killed_mid) >= 3, killed_mid


def test_coordinator_killed_mid_rollout_hands_over(sim: SimCluster) -> None:
    sim.step_seconds = 0.6
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("cp-2", control_plane=True)
    for i in range(1, 4):
        sim.add_node(f"w-{i}")
    mon = Monitor(sim.cp).start()
    try:
        apply_du(sim.cp, "handover", {"version": "v1.32.0", "concurrency": 2, "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "handover", ("Running",))
        holder = _holder(sim.cp)
        time.sleep(2)
        killed_at = time.monotonic()
        sim.kill(holder, signal.SIGKILL)
        new = holder
        while new in (holder, "") and time.monotonic() - killed_at < 60:
            time.sleep(0.2)
            new = _holder(sim.cp)
        took = time.monotonic() - killed_at
        assert new not in (holder, ""), "nobody took over"
        assert took <= sim.coordinator_seconds + 5, f"takeover took {took:.1f}s"
        sim.start(holder)  # its node's own turn resumes from the checkpoint
        # The killed daemon's own node may show Lost (RequiresAttention) until it is back.
        st = wait_phase(sim.cp, "handover", ("Succeeded", "Failed"), timeout=240)
    finally:
        mon.stop()
    assert st["phase"] == "Succeeded", st
    assert st["epoch"] >= 1
    mon.assert_invariants(concurrency=2)
    for name in sim.nodes:
        effects_once(sim, name)


def _holder(cp: ControlPlane) -> str:
    out = cp.kubectl("get", "lease", "-n", "kupd-system", "kupd-coordinator", "-o", "json", check=False)
    if out.returncode != 0:
        return ""
    return str(json.loads(out.stdout)["spec"].get("holderIdentity") or "")


def test_api_server_outage_while_control_plane_upgrades(sim: SimCluster) -> None:
    sim.step_seconds = 1.0
    cpn = sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    apply_du(sim.cp, "outage", {"version": "v1.32.0", "backup": NO_BACKUP})

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = get_du(sim.cp, "outage").get("status") or {}
        e = next((n for n in st.get("nodes") or [] if n["name"] == "cp-1"), {})
        if e.get("step") == "kubelet-package":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("cp-1 never reached kubelet-package")
    sim.cp.stop_apiserver()
    down_at = time.monotonic()
    try:
        # While the API is away the node goes on with its host steps.
        while time.monotonic() - down_at < 60:
            time.sleep(2)
        state = cpn.state()
        assert state["versions"]["kubelet"] == "v1.32.0"
        assert state["running_kubelet"] == "v1.32.0"
    finally:
        sim.cp.start_apiserver()
    st = wait_phase(sim.cp, "outage", ("Succeeded", "Failed"), timeout=180)
    assert st["phase"] == "Succeeded", st
    for name in sim.nodes:
        effects_once(sim, name)


def test_pdb_blocks_drain_until_it_allows(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    cp = sim.cp
    time.sleep(3)
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-rs",
                                          "uid": "0b7a3c1e-0000-4000-8000-000000000002", "controller": True}]},
        "spec": {"nodeName": "w-1", "containers": [{"name": "c", "image": "registry.example/web:1"}]},
    }))
    cp.kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web-pdb", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    }))
    # The budget allows no eviction until it is relaxed below: the preflight would hold the operation
    # for it (tests/cluster/test_preflight.py); here it only warns, so the drain meets it.
    apply_du(cp, "pdb", {"version": "v1.32.0", "backup": NO_BACKUP, "drain": {"timeoutSeconds": 300},
                         "preflight": {"warnOnly": ["EvictionsPossible"]}})
    deadline = time.monotonic() + 120
    msg = ""
    while time.monotonic() < deadline:
        st = get_du(cp, "pdb").get("status") or {}
        e = next((n for n in st.get("nodes") or [] if n["name"] == "w-1"), {})
        msg = e.get("message", "")
        if "web-pdb" in msg:
            break
        time.sleep(0.5)
    assert "PodDisruptionBudget default/web-pdb" in msg and "default/web" in msg, msg
    time.sleep(3)
    assert get_du(cp, "pdb")["status"]["phase"] == "Running"
    events = json.loads(cp.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "DrainBlocked" and "web-pdb" in e["message"] for e in events)
    cp.kubectl("patch", "pdb", "web-pdb", "-n", "default", "--type=merge", "-p", '{"spec":{"minAvailable":0}}')
    st = wait_phase(cp, "pdb", ("Succeeded", "Failed", "RequiresAttention"), timeout=120)
    assert st["phase"] == "Succeeded", st
    assert cp.kubectl("get", "pod", "web", "-n", "default", check=False).returncode != 0


def _backup_spec(cp: ControlPlane, store: str, endpoint: str | None = None) -> dict[str, Any]:
    pki = cp.etcd_pki
    return {"required": True, "store": {"type": "file", "path": store},
            "etcd": {"endpoints": [endpoint or cp.etcd_endpoint], "caFile": str(pki / "ca.crt"),
                     "certFile": str(pki / "healthcheck-client.crt"),
                     "keyFile": str(pki / "healthcheck-client.key")}}


def test_verified_backup_before_the_first_control_plane_change(sim: SimCluster, tmp_path: Any) -> None:
    store = tmp_path / "backups"
    store.mkdir()
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    apply_du(sim.cp, "backup", {"version": "v1.32.0", "backup": _backup_spec(sim.cp, str(store))})
    st = wait_phase(sim.cp, "backup", ("Succeeded", "Failed", "RequiresAttention"))
    assert st["phase"] == "Succeeded", st
    b = st["backup"]
    assert b["verified"] is True and b["node"] == "cp-1" and b["revision"] > 0 and len(b["sha256"]) == 64
    files = list(store.rglob("etcd-*.db"))
    assert len(files) == 1 and files[0].stat().st_size == b["size"]
    import hashlib

    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == b["sha256"]
    cond = next(c for c in st["conditions"] if c["type"] == "BackupSucceeded")
    assert cond["status"] == "True"
    # The snapshot came before any change on the node.
    effects = sim.nodes["cp-1"].state()["effects"]
    assert effects[0] == "repository v1.32"


def test_failed_backup_fails_the_operation_before_any_change(sim: SimCluster, tmp_path: Any) -> None:
    store = tmp_path / "backups"
    store.mkdir()
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("w-1")
    closed = "https://127.0.0.1:1"  # nothing listens there: etcd unreachable
    apply_du(sim.cp, "nobackup", {"version": "v1.32.0", "maxAttempts": 1,
                                  "backup": _backup_spec(sim.cp, str(store), closed)})
    st = wait_phase(sim.cp, "nobackup", ("Succeeded", "Failed"))
    assert st["phase"] == "Failed"
    assert "backup failed on cp-1" in st["message"]
    cond = next(c for c in st["conditions"] if c["type"] == "BackupSucceeded")
    assert cond["status"] == "False" and cond["reason"] == "BackupFailed"
    for name in sim.nodes:
        assert sim.nodes[name].state()["effects"] == [], f"{name} was changed"
    assert list(store.rglob("*.db")) == []


def test_multi_minor_target_goes_hop_by_hop_control_plane_first(sim: SimCluster) -> None:
    sim.step_seconds = 0.2
    sim.add_node("cp-1", control_plane=True)
    sim.add_node("cp-2", control_plane=True)
    sim.add_node("w-1")
    wait_registered(sim)  # cp-1 runs kubeadm upgrade apply only if it is there from the start
    mon = Monitor(sim.cp).start()
    try:
        wait_members(sim.cp, ["cp-1", "cp-2", "w-1"])
        apply_du(sim.cp, "hops", {"version": "v1.33.0", "backup": NO_BACKUP})
        st = wait_phase(sim.cp, "hops", ("Succeeded", "Failed", "RequiresAttention"), timeout=240)
    finally:
        mon.stop()
    assert st["phase"] == "Succeeded", st
    # The intermediate minor is its newest patch offered by the package source.
    assert st["hops"] == ["v1.32.1", "v1.33.0"]
    mon.assert_invariants(concurrency=1)
    cp1, cp2 = (sim.nodes[n].state()["effects"] for n in ("cp-1", "cp-2"))
    assert [e for e in cp1 if e.startswith("kubeadm upgrade")] == [
        "kubeadm upgrade apply v1.32.1", "kubeadm upgrade apply v1.33.0"]
    assert [e for e in cp2 if e.startswith("kubeadm upgrade")] == [
        "kubeadm upgrade node v1.32.1", "kubeadm upgrade node v1.33.0"]
    w = sim.nodes["w-1"].state()["effects"]
    assert [e for e in w if e.startswith("kubeadm upgrade")] == [
        "kubeadm upgrade node v1.32.1", "kubeadm upgrade node v1.33.0"]
    for name in sim.nodes:
        effects_once(sim, name)


def test_retry_a_failed_node(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    w = sim.add_node("w-1")
    w.faults({"fail": {"restart": 2}})
    apply_du(sim.cp, "retry", {"version": "v1.32.0", "maxAttempts": 2, "backup": NO_BACKUP})
    st = wait_phase(sim.cp, "retry", ("RequiresAttention", "Failed", "Succeeded"))
    assert st["phase"] == "RequiresAttention"
    assert next(n for n in st["nodes"] if n["name"] == "w-1")["step"] == "restart"
    # The fault is used up; the operator asks for a retry.
    sim.cp.kubectl("annotate", "directupdate", "retry", "kupd.io/retry-nodes=w-1")
    st = wait_phase(sim.cp, "retry", ("Succeeded", "Failed"))
    assert st["phase"] == "Succeeded", st
    entry = next(n for n in st["nodes"] if n["name"] == "w-1")
    assert entry["retryToken"] == "w-1"
    effects_once(sim, "w-1")
