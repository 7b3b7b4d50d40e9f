"""Cluster preflight (kupd/preflight.py): one finding per failing check and object."""

from __future__ import annotations

import pytest

from kupd import preflight, selectors
from kupd.preflight import Budget, ClusterFacts, MemberHealth, NodeHealth, PodHealth

WEB = selectors.parse("app=web")


def healthy(*names: str) -> ClusterFacts:
    return ClusterFacts(nodes={n: NodeHealth(n, True) for n in names},
                        members={n: MemberHealth(n, True, "0.1.0") for n in names})


def test_a_healthy_cluster_passes() -> None:
    assert preflight.evaluate({"cp-1", "w-1"}, healthy("cp-1", "w-1"), "0.1.3") == []


def test_every_check_names_its_node_or_object() -> None:
    facts = ClusterFacts(
        nodes={"cp-1": NodeHealth("cp-1", True), "w-1": NodeHealth("w-1", False),
               "w-2": NodeHealth("w-2", True, ("DiskPressure", "MemoryPressure")), "w-9": NodeHealth("w-9", False)},
        members={"cp-1": MemberHealth("cp-1", True, "0.2.0"), "w-1": MemberHealth("w-1", False, "0.1.0"),
                 "w-2": MemberHealth("w-2", True, "0.1.0")},
        control_plane_pods=[PodHealth("kube-system", "kube-apiserver-cp-1", "cp-1", False)],
        etcd_problem="[-]etcd failed: reason withheld",
        budgets=[Budget("shop", "web", WEB, min_available=2, expected_pods=2),
                 Budget("shop", "other", WEB, max_unavailable=1, expected_pods=2)],
        pods=[PodHealth("shop", "web-1", "w-2", True, {"app": "web"}),
              PodHealth("shop", "web-2", "w-9", True, {"app": "web"})],
    )
    found = [(f.check, f.subject) for f in preflight.evaluate({"cp-1", "w-1", "w-2"}, facts, "0.1.0")]
    assert found == [
        ("NodesReady", "node/w-1"),
        ("DaemonsAlive", "node/w-1"),
        ("KupdVersions", "node/cp-1"),
        ("NodePressure", "node/w-2"),
        ("ControlPlanePods", "pod/kube-system/kube-apiserver-cp-1"),
        ("EtcdHealthy", "etcd"),
        ("EvictionsPossible", "pdb/shop/web"),  # guards shop/web-1 on w-2; w-9 is not targeted
    ]


@pytest.mark.parametrize(
    ("budget", "never"),
    [(Budget("a", "b", WEB, max_unavailable=0, expected_pods=3), True),
     (Budget("a", "b", WEB, max_unavailable="0%", expected_pods=3), True),
     (Budget("a", "b", WEB, min_available="100%", expected_pods=3), True),
     (Budget("a", "b", WEB, min_available=1, expected_pods=1), True),
     (Budget("a", "b", WEB, min_available=1, expected_pods=2), False),
     (Budget("a", "b", WEB, min_available="50%", expected_pods=2), False),
     (Budget("a", "b", WEB, max_unavailable=1, expected_pods=1), False)],
)
def test_a_budget_that_can_never_allow_an_eviction(budget: Budget, never: bool) -> None:
    assert (preflight.never_allows_eviction(budget) is not None) == never


def test_warn_only_checks_do_not_hold_the_first_grant() -> None:
    facts = ClusterFacts(nodes={"w-1": NodeHealth("w-1", True, ("DiskPressure",))},
                         members={"w-1": MemberHealth("w-1", True, "0.1.0")}, etcd_problem="slow")
    verdict = preflight.judge(preflight.evaluate({"w-1"}, facts, "0.1.0"), {"NodePressure"})
    assert [f.check for f in verdict.blocking] == ["EtcdHealthy"]
    assert [f.check for f in verdict.warnings] == ["NodePressure"]
    assert set(verdict.by_check()) == {"EtcdHealthy", "NodePressure"}


def test_the_planner_holds_the_first_grant_until_the_checks_pass() -> None:
    from kupd import __version__
    from tests.unit.test_planner import cluster, run

    nodes, members = cluster(1, 1)
    spec = {"version": "v1.32.0", "backup": {"policy": "Disabled"}}
    sick = ClusterFacts(nodes={"cp-1": NodeHealth("cp-1", True), "w-1": NodeHealth("w-1", True, ("DiskPressure",))},
                        members={n: MemberHealth(n, True, __version__) for n in ("cp-1", "w-1")})
    p = run(spec, nodes, members, preflight_facts=sick)
    conds = {c["type"]: c for c in p.status["conditions"]}
    assert conds["PreflightNodePressure"]["status"] == "False" and "w-1" in conds["PreflightNodePressure"]["message"]
    assert conds["Preflight"]["status"] == "False" and p.status["phase"] == "Pending"
    assert not [e for e in p.status["nodes"] if e["phase"] == "Granted"]
    assert [e.reason for e in p.events if e.warning] == ["PreflightNodePressure"]
    # Only warned about: the first grant goes out, and the check stays reported.
    p = run({**spec, "preflight": {"warnOnly": ["NodePressure"]}}, nodes, members, preflight_facts=sick)
    assert [e["name"] for e in p.status["nodes"] if e["phase"] == "Granted"] == ["cp-1"]
    conds = {c["type"]: c for c in p.status["conditions"]}
    assert conds["PreflightNodePressure"]["reason"] == "WarnOnly" and conds["Preflight"]["status"] == "True"
    # Once passed, never asked again: a later pressure is the health gates' business.
    p = run(spec, nodes, members, status=run(spec, nodes, members, preflight_facts=healthy("cp-1", "w-1")).status,
            preflight_facts=sick)
    assert {c["type"]: c for c in p.status["conditions"]}["Preflight"]["status"] == "True"


def test_check_names_match_the_crd() -> None:
    from typing import get_args

    from kupd.api import models

    assert get_args(models.PreflightCheck) == preflight.CHECKS
