"""The planner keeps Kubernetes' version-skew policy at every moment of a multi-minor plan.

A table for the issue's case (1.27 -> 1.32), then a property: for random clusters (control-plane
and worker counts, mixed starting versions, concurrency, canaries) and targets, replay every wave
the dry run produces and check every rule in every state the cluster can pass through while the
turns of a wave are under way.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kupd import dryrun, skew
from kupd.api.models import DirectUpdateSpec
from kupd.planner import MemberView, NodeView
from kupd.versions import Version
from tests.unit.test_planner import run, typed

V = Version.parse
NO_BACKUP = {"policy": "Disabled"}


def spec_of(spec: dict[str, Any]) -> DirectUpdateSpec:
    parsed = typed(spec)
    assert isinstance(parsed, DirectUpdateSpec), parsed
    return parsed


def nodes_at(cps: dict[str, str], workers: dict[str, str]) -> tuple[list[NodeView], dict[str, MemberView]]:
    nodes = [NodeView(n, {}, True) for n in cps] + [NodeView(n, {}, False) for n in workers]
    members = {n: MemberView(n, True, V(v)) for n, v in {**cps, **workers}.items()}
    return nodes, members


def test_127_to_132_keeps_kubelets_within_three_minors_at_every_wave() -> None:
    nodes, members = nodes_at({"cp-1": "v1.27.3"}, {f"w-{i}": "v1.27.3" for i in (1, 2, 3)})
    status, waves = dryrun.simulate(spec_of({"version": "v1.32.0"}), nodes, members, 600)
    assert status["phase"] == "Succeeded", status
    assert [(w.nodes, [v[-1] for v in w.versions]) for w in waves] == [
        (["cp-1"], ["v1.28.0"]), (["cp-1"], ["v1.29.0"]), (["cp-1"], ["v1.30.0"]),
        (["w-1"], ["v1.30.0"]), (["w-2"], ["v1.30.0"]), (["w-3"], ["v1.30.0"]),
        (["cp-1"], ["v1.31.0"]), (["cp-1"], ["v1.32.0"]),
        (["w-1"], ["v1.32.0"]), (["w-2"], ["v1.32.0"]), (["w-3"], ["v1.32.0"])]
    # The worker waves between the hops say which rule put them there.
    assert "kubelet-too-old-for-apiserver" in waves[3].reasons[0] and "v1.31.0" in waves[3].reasons[0]
    assert_no_rule_broken(nodes, members, waves)


def test_before_128_two_minors_is_the_limit() -> None:
    nodes, members = nodes_at({"cp-1": "v1.24.0"}, {"w-1": "v1.24.0"})
    _, waves = dryrun.simulate(spec_of({"version": "v1.28.0", "backup": NO_BACKUP}), nodes, members, 600)
    assert [(w.nodes, [v[-1] for v in w.versions]) for w in waves] == [
        (["cp-1"], ["v1.25.0"]), (["cp-1"], ["v1.26.0"]), (["w-1"], ["v1.26.0"]),
        (["cp-1"], ["v1.27.0"]), (["cp-1"], ["v1.28.0"]), (["w-1"], ["v1.28.0"])]
    assert_no_rule_broken(nodes, members, waves)


def test_a_node_outside_the_selection_that_would_fall_behind_holds_the_control_plane() -> None:
    nodes, members = nodes_at({"cp-1": "v1.28.0"}, {"w-1": "v1.28.0", "w-out": "v1.28.0"})
    nodes = [NodeView(n.name, {"pool": "out" if n.name == "w-out" else "in"}, n.control_plane) for n in nodes]
    spec: dict[str, Any] = {"version": "v1.32.0", "backup": NO_BACKUP,
                            "nodeSelector": {"matchLabels": {"pool": "in"}}}
    for minor in (29, 30, 31):
        members["cp-1"] = MemberView("cp-1", True, V(f"v1.{minor}.0"))
    p = run(spec, nodes, members)
    assert p.status["phase"] == "RequiresAttention"
    cond = next(c for c in p.status["conditions"] if c["type"] == "RequiresAttention")
    assert cond["reason"] == "VersionSkew" and "w-out" in cond["message"], cond
    assert not [e for e in p.status["nodes"] if e["phase"] == "Granted"]


def test_a_node_that_is_not_ready_gets_no_turn() -> None:
    nodes, members = nodes_at({"cp-1": "v1.31.0"}, {"w-1": "v1.31.0"})
    nodes = [NodeView("cp-1", {}, True, ready=False), nodes[1]]
    p = run({"version": "v1.31.2", "backup": NO_BACKUP}, nodes, members)
    assert not [e for e in p.status["nodes"] if e["phase"] == "Granted"]


# -- the property -----------------------------------------------------------------------------------


def states_during(versions: dict[str, Version], cps: set[str], active: dict[str, list[Version]]
                  ) -> list[skew.ClusterVersions]:
    """Every cluster state reachable while the `active` turns run: a control-plane node's API
    server is at its old or new version, each node's kubelet anywhere along its turn's hops."""
    choices = {n: [versions[n], *hops] for n, hops in active.items()}
    names = sorted(choices)
    out = []
    for combo in itertools.product(*(choices[n] for n in names)):
        kubelets = {**versions, **dict(zip(names, combo, strict=True))}
        apiservers = {n: kubelets[n] for n in cps}
        newest = max(apiservers.values())
        out.append(skew.ClusterVersions(apiservers, kubelets, newest))
    return out


def assert_no_rule_broken(nodes: list[NodeView], members: dict[str, MemberView], waves: list[dryrun.Wave]) -> None:
    versions = {n: m.kubelet for n, m in members.items() if m.kubelet is not None}
    cps = {n.name for n in nodes if n.control_plane}
    turns = sorted(((w.start_seconds, w.end_seconds, n, [V(v) for v in vs])
                    for w in waves for n, vs in zip(w.nodes, w.versions, strict=True)), key=lambda t: t[0])
    moments = sorted({t for s, e, _, _ in turns for t in (s, e)})
    for t in moments:
        for _, end, node, hops in turns:
            if end == t:
                versions[node] = hops[-1]
        active = {node: hops for start, end, node, hops in turns if start <= t < end}
        for state in states_during(versions, cps, active):
            broken = [v for v in skew.violations(state, include_kubectl=False) if v.rule != skew.PROXY_NOT_NEWER]
            assert not broken, f"at {t}s with {sorted(active)} in flight: {broken[0]}"


@st.composite
def clusters(draw: Any) -> tuple[dict[str, str], dict[str, str], str, dict[str, Any]]:
    base = draw(st.integers(min_value=24, max_value=33))
    n_cp = draw(st.integers(min_value=1, max_value=3))
    n_w = draw(st.integers(min_value=0, max_value=4))
    cp_minor = base
    cps = {f"cp-{i}": f"v1.{cp_minor}.{draw(st.integers(0, 3))}" for i in range(1, n_cp + 1)}
    # Workers start anywhere the policy allows behind the control plane.
    lag = 3 if base >= 28 else 2
    workers = {f"w-{i}": f"v1.{base - draw(st.integers(0, lag if base - lag >= 25 else 2))}.{draw(st.integers(0, 3))}"
               for i in range(1, n_w + 1)}
    target = f"v1.{base + draw(st.integers(0, 6))}.{draw(st.integers(4, 9))}"
    spec: dict[str, Any] = {"version": target, "backup": NO_BACKUP,
                            "concurrency": draw(st.integers(1, 3))}
    canaries = draw(st.integers(0, 2))
    if canaries:
        spec["canary"] = {"count": canaries}
    return cps, workers, target, spec


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_no_plan_the_planner_produces_breaks_a_skew_rule(c: tuple[dict[str, str], dict[str, str], str,
                                                                   dict[str, Any]]) -> None:
    cps, workers, target, spec = c
    nodes, members = nodes_at(cps, workers)
    status, waves = dryrun.simulate(spec_of(spec), nodes, members, 600)
    assert status["phase"] == "Succeeded", status.get("message")
    assert_no_rule_broken(nodes, members, waves)
    # Every node below the target ends at it.
    finals = {n: vs[-1] for w in waves for n, vs in zip(w.nodes, w.versions, strict=True)}
    for n, start in {**cps, **workers}.items():
        assert V(start) >= V(target) or finals.get(n) == target, (n, start, finals.get(n))


def test_an_unresolvable_intermediate_minor_holds_the_operation_with_a_condition() -> None:
    nodes, members = nodes_at({"cp-1": "v1.30.2"}, {"w-1": "v1.30.2"})
    spec = {"version": "v1.32.1", "backup": NO_BACKUP}
    p = run(spec, nodes, members, resolved_minors={}, hop_errors={(1, 31): "mirror.example: connection refused"})
    assert "hops" not in p.status and p.status["phase"] == "Pending"
    cond = next(c for c in p.status["conditions"] if c["type"] == "HopsResolved")
    assert cond["status"] == "False" and cond["reason"] == "PackageSourceUnavailable"
    assert "v1.31" in cond["message"] and "connection refused" in cond["message"]
    assert not [e for e in p.status.get("nodes") or [] if e["phase"] == "Granted"]
    p = run(spec, nodes, members, status=p.status, resolved_minors={(1, 31): "v1.31.9"})
    assert p.status["hops"] == ["v1.31.9", "v1.32.1"]
    assert next(c for c in p.status["conditions"] if c["type"] == "HopsResolved")["status"] == "True"
