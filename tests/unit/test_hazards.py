"""Upgrade hazards (kupd/hazards.py): each refusal names the node, the release and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from kupd import hazards
from kupd.hazards import DeprecatedApi, NodeFacts
from kupd.versions import Version

V = Version.parse


@pytest.mark.parametrize(
    ("facts", "target", "rules"),
    [
        (NodeFacts(cgroup_version=1), "v1.35.0", [hazards.CGROUP_V1]),
        (NodeFacts(cgroup_version=1, fail_cgroup_v1=False), "v1.35.0", []),
        (NodeFacts(cgroup_version=1), "v1.34.3", []),
        (NodeFacts(cgroup_version=2), "v1.36.0", []),
        (NodeFacts(containerd=V("1.7.22")), "v1.36.0", [hazards.CONTAINERD_TOO_OLD]),
        (NodeFacts(containerd=V("1.7.22")), "v1.35.4", []),
        (NodeFacts(containerd=V("2.0.1")), "v1.36.0", []),
        (NodeFacts(kubelet_flags=("--node-ip", "--pod-infra-container-image")), "v1.35.0",
         [hazards.REMOVED_KUBELET_FLAG]),
        (NodeFacts(kubelet_flags=("--pod-infra-container-image",)), "v1.34.0", []),
        (NodeFacts(kubelet_flags=("--container-runtime", "--network-plugin")), "v1.30.0",
         [hazards.REMOVED_KUBELET_FLAG, hazards.REMOVED_KUBELET_FLAG]),
        (NodeFacts(swap_on=True), "v1.31.0", [hazards.SWAP_ON]),
        (NodeFacts(swap_on=True, fail_swap_on=False), "v1.31.0", []),
        (NodeFacts(), "v1.40.0", []),  # nothing known, nothing refused
    ],
)
def test_node_hazards(facts: NodeFacts, target: str, rules: list[str]) -> None:
    found = hazards.node_hazards("w-1", facts, V(target))
    assert [h.rule for h in found] == rules
    for h in found:
        assert h.subject == "w-1" and "w-1" in h.message and target in h.message


def test_a_containerd_upgrade_in_the_same_turn_clears_the_containerd_hazard() -> None:
    facts = NodeFacts(containerd=V("1.7.22"))
    assert hazards.node_hazards("w-1", facts, V("v1.36.0"), containerd_target=V("2.1.0")) == []
    msg = hazards.node_hazards("w-1", facts, V("v1.36.0"))[0].message
    assert "spec.containerdVersion" in msg


METRICS = (Path(__file__).parents[1] / "fixtures" / "apiserver-metrics-deprecated-apis.txt").read_text()


def test_deprecated_apis_from_the_metric() -> None:
    apis = hazards.parse_deprecated_apis(METRICS)
    assert apis == [DeprecatedApi("flowcontrol.apiserver.k8s.io", "v1beta3", "flowschemas", "1.32")]
    assert hazards.api_hazards(apis, V("v1.31.4")) == []
    found = hazards.api_hazards(apis, V("v1.32.0"))
    assert [h.subject for h in found] == ["flowschemas.flowcontrol.apiserver.k8s.io/v1beta3"]
    assert "removed in 1.32" in found[0].message


def test_host_file_parsers() -> None:
    env = 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock ' \
          '--pod-infra-container-image=registry.k8s.io/pause:3.9"\n'
    assert hazards.parse_kubeadm_flags(env) == ("--container-runtime-endpoint", "--pod-infra-container-image")
    assert hazards.parse_swaps("Filename\tType\tSize\tUsed\tPriority\n") is False
    assert hazards.parse_swaps("Filename\tType\tSize\tUsed\tPriority\n/swap.img file 2097148 0 -2\n") is True
    assert hazards.kubelet_config_bool("kind: KubeletConfiguration\nfailSwapOn: false\n", "failSwapOn") is False
    assert hazards.kubelet_config_bool("kind: KubeletConfiguration\n", "failCgroupV1") is None
    assert hazards.kubelet_config_bool(":\n  - [", "failSwapOn") is None


def test_facts_read_from_a_node_tree(tmp_path: Path) -> None:
    from kupd.host import hazardfacts

    (tmp_path / "sys/fs/cgroup/cpu").mkdir(parents=True)  # a v1 hierarchy: per-controller directories
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1024 0 -2\n")
    (tmp_path / "var/lib/kubelet").mkdir(parents=True)
    (tmp_path / "var/lib/kubelet/config.yaml").write_text("kind: KubeletConfiguration\nfailSwapOn: false\n")
    (tmp_path / "var/lib/kubelet/kubeadm-flags.env").write_text(
        'KUBELET_KUBEADM_ARGS="--pod-infra-container-image=registry.k8s.io/pause:3.9"\n')
    facts = hazardfacts.read(str(tmp_path), containerd="1.7.22")
    assert facts == NodeFacts(cgroup_version=1, fail_cgroup_v1=None, containerd=V("1.7.22"),
                              kubelet_flags=("--pod-infra-container-image",), swap_on=True, fail_swap_on=False)
    assert [h.rule for h in hazards.node_hazards("w-1", facts, V("v1.36.0"))] == [
        hazards.CGROUP_V1, hazards.CONTAINERD_TOO_OLD, hazards.REMOVED_KUBELET_FLAG]
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("cpu memory\n")
    assert hazardfacts.read(str(tmp_path)).cgroup_version == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert hazardfacts.read(str(empty)) == NodeFacts(), "nothing known, nothing held against the node"


def test_the_planner_refuses_a_hazardous_turn_with_the_fix_and_goes_on_with_the_others() -> None:
    from kupd.planner import MemberView
    from tests.unit.test_planner import cluster, finish, run

    nodes, members = cluster(1, 2, version="v1.34.2")
    members["w-1"] = MemberView("w-1", True, V("v1.34.2"), facts=NodeFacts(cgroup_version=1))
    spec = {"version": "v1.35.0", "backup": {"policy": "Disabled"}, "concurrency": 2}
    p = run(spec, nodes, members)
    finish(members, "cp-1", "v1.35.0", p)
    members["w-1"] = MemberView("w-1", True, V("v1.34.2"), facts=NodeFacts(cgroup_version=1))
    p = run(spec, nodes, members, status=p.status)
    entries = {e["name"]: e for e in p.status["nodes"]}
    assert entries["w-2"]["phase"] == "Granted"
    assert entries["w-1"]["phase"] == "Pending" and "failCgroupV1: false" in entries["w-1"]["message"]
    conds = {c["type"]: c for c in p.status["conditions"]}
    assert conds["UpgradeHazards"]["status"] == "False" and conds["UpgradeHazards"]["reason"] == hazards.CGROUP_V1
    assert p.status["phase"] == "RequiresAttention" and conds["RequiresAttention"]["reason"] == "UpgradeHazard"
    assert any(e.reason == hazards.CGROUP_V1 and e.node == "w-1" and e.warning for e in p.events)
    # Fixed on the host: the node gets its turn.
    members["w-1"] = MemberView("w-1", True, V("v1.34.2"), facts=NodeFacts(cgroup_version=2))
    p = run(spec, nodes, members, status=p.status)
    assert {e["name"]: e for e in p.status["nodes"]}["w-1"]["phase"] == "Granted"
    assert {c["type"]: c for c in p.status["conditions"]}["UpgradeHazards"]["status"] == "True"


@pytest.mark.parametrize("text", [None, "", "[]", "{", '{"cgroupVersion": true}', '{"kubeletFlags": ["$(reboot)"]}',
                                  "x" * 9000])
def test_reported_facts_are_untrusted(text: str | None) -> None:
    facts = hazards.decode(text)
    assert facts is None or (facts.cgroup_version is None and facts.kubelet_flags == ())


def test_reported_facts_round_trip() -> None:
    facts = NodeFacts(cgroup_version=1, fail_cgroup_v1=False, containerd=V("1.7.22"),
                      kubelet_flags=("--node-ip",), swap_on=True, fail_swap_on=None)
    assert hazards.decode(hazards.encode(facts)) == facts


def test_a_control_plane_hop_that_removes_apis_still_in_use_is_refused() -> None:
    from tests.unit.test_planner import cluster, run

    nodes, members = cluster(1, 1, version="v1.31.4")
    spec = {"version": "v1.32.0", "backup": {"policy": "Disabled"}}
    apis = [DeprecatedApi("flowcontrol.apiserver.k8s.io", "v1beta3", "flowschemas", "1.32")]
    p = run(spec, nodes, members, deprecated_apis=apis)
    assert not [e for e in p.status["nodes"] if e["phase"] == "Granted"]
    cond = {c["type"]: c for c in p.status["conditions"]}["UpgradeHazards"]
    assert cond["reason"] == hazards.DEPRECATED_API_IN_USE and "flowschemas" in cond["message"]
    assert p.status["phase"] == "RequiresAttention"
    p = run(spec, nodes, members, status=p.status, deprecated_apis=[])
    assert [e["name"] for e in p.status["nodes"] if e["phase"] == "Granted"] == ["cp-1"]
