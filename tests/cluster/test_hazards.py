"""Upgrade hazards reported by a node's member and evaluated before its turn, with real `kupd daemon`
processes on the real API server. The simulated host reports the facts a test gives it."""

from __future__ import annotations

from kupd.sim.simcluster import SimCluster
from tests.cluster.harness import apply_du, get_du, wait_phase

NO_BACKUP = {"policy": "Disabled"}


def test_swap_on_without_the_kubelet_allowing_it_is_refused_with_the_fix(sim: SimCluster) -> None:
    sim.add_node("cp-1", control_plane=True)
    w = sim.add_node("w-1")
    w.faults({"node_facts": {"swapOn": True}})
    apply_du(sim.cp, "swap", {"version": "v1.32.0", "backup": NO_BACKUP})
    st = wait_phase(sim.cp, "swap", ("RequiresAttention", "Succeeded", "Failed"), timeout=120)
    assert st["phase"] == "RequiresAttention", st
    cond = next(c for c in st["conditions"] if c["type"] == "UpgradeHazards")
    assert cond["status"] == "False" and cond["reason"] == "SwapWithoutFailSwapOnFalse"
    assert "swapoff -a" in cond["message"] and "failSwapOn: false" in cond["message"]
    entry = next(n for n in st["nodes"] if n["name"] == "w-1")
    assert entry["phase"] == "Pending" and entry["message"].startswith("refused: w-1 has swap on")
    assert w.state()["effects"] == [], "the refused node was not touched"
    assert next(n for n in st["nodes"] if n["name"] == "cp-1")["phase"] == "Succeeded"
    # The operator allows swap in the kubelet's configuration: the member reports it, the turn follows.
    w.faults({"node_facts": {"swapOn": True, "failSwapOn": False}})
    st = wait_phase(sim.cp, "swap", ("Succeeded", "Failed"), timeout=120)
    assert st["phase"] == "Succeeded", st
    assert next(c for c in st["conditions"] if c["type"] == "UpgradeHazards")["status"] == "True"
    assert get_du(sim.cp, "swap")["status"]["phase"] == "Succeeded"
