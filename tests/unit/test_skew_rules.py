"""The version-skew policy (kupd/skew.py): a table per rule, then properties over all versions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kupd import skew
from kupd.versions import Version

V = Version.parse


@pytest.mark.parametrize(
    ("kubelet", "apiservers", "rule"),
    [
        ("v1.27.3", ["v1.30.0"], None),  # 3 behind 1.30: allowed since 1.28
        ("v1.27.3", ["v1.31.0"], skew.KUBELET_TOO_OLD),  # 4 behind
        ("v1.25.0", ["v1.28.0"], None),  # the oldest kubelet the wider skew covers
        ("v1.24.9", ["v1.27.0"], skew.KUBELET_TOO_OLD),  # before 1.28: 2 at most
        ("v1.24.9", ["v1.28.0"], skew.KUBELET_TOO_OLD),  # kubelet older than 1.25: 2 at most
        ("v1.25.0", ["v1.27.0"], None),
        ("v1.26.0", ["v1.26.5"], None),
        ("v1.27.0", ["v1.26.5"], skew.KUBELET_NOT_NEWER),
        ("v1.27.0", ["v1.27.1", "v1.26.5"], skew.KUBELET_NOT_NEWER),  # HA: any API server may answer
        ("v1.27.0", ["v1.30.0", "v1.29.0"], None),
        ("v1.26.0", ["v1.30.0", "v1.29.0"], skew.KUBELET_TOO_OLD),  # the newest API server counts
    ],
)
def test_kubelet(kubelet: str, apiservers: list[str], rule: str | None) -> None:
    got = skew.kubelet("w-1", V(kubelet), [V(a) for a in apiservers])
    assert (got.rule if got else None) == rule
    if got:
        assert "w-1" in got.message and f"(rule: {rule})" in str(got)


@pytest.mark.parametrize(
    ("proxy", "kubelet", "apiservers", "rule"),
    [
        ("v1.30.0", "v1.27.0", ["v1.30.0"], None),
        ("v1.31.0", "v1.27.0", ["v1.31.0"], skew.PROXY_VS_KUBELET),
        ("v1.27.0", "v1.30.0", ["v1.30.0"], None),  # older proxy than kubelet: also 3
        ("v1.26.0", "v1.24.0", ["v1.26.0"], None),
        ("v1.27.0", "v1.24.0", ["v1.27.0"], skew.PROXY_VS_KUBELET),  # kubelet < 1.25: 2 at most
        ("v1.31.0", "v1.30.0", ["v1.30.0"], skew.PROXY_NOT_NEWER),
    ],
)
def test_kube_proxy(proxy: str, kubelet: str, apiservers: list[str], rule: str | None) -> None:
    got = skew.kube_proxy("w-1", V(proxy), V(kubelet), [V(a) for a in apiservers])
    assert (got.rule if got else None) == rule


@pytest.mark.parametrize(
    ("kubectl", "apiservers", "rule"),
    [
        ("v1.30.0", ["v1.30.2"], None),
        ("v1.29.0", ["v1.30.2"], None),
        ("v1.31.0", ["v1.30.2"], None),
        ("v1.28.0", ["v1.30.2"], skew.KUBECTL_WITHIN_ONE),
        ("v1.32.0", ["v1.30.2"], skew.KUBECTL_WITHIN_ONE),
        ("v1.30.0", ["v1.30.0", "v1.31.0"], None),
        ("v1.29.0", ["v1.30.0", "v1.31.0"], skew.KUBECTL_WITHIN_ONE),
    ],
)
def test_kubectl(kubectl: str, apiservers: list[str], rule: str | None) -> None:
    got = skew.kubectl("cp-1", V(kubectl), [V(a) for a in apiservers])
    assert (got.rule if got else None) == rule


def test_apiservers_within_one_minor() -> None:
    assert skew.apiservers({"cp-1": V("v1.30.0"), "cp-2": V("v1.31.4")}) is None
    got = skew.apiservers({"cp-1": V("v1.29.0"), "cp-2": V("v1.31.4"), "cp-3": V("v1.30.0")})
    assert got is not None and got.rule == skew.APISERVERS_WITHIN_ONE
    assert "cp-1" in got.message and "cp-2" in got.message


@pytest.mark.parametrize(
    ("component", "apiserver", "ok"),
    [("v1.30.0", "v1.30.1", True), ("v1.29.0", "v1.30.1", True), ("v1.28.0", "v1.30.1", False),
     ("v1.31.0", "v1.30.1", False)],
)
def test_component_against_its_apiserver(component: str, apiserver: str, ok: bool) -> None:
    got = skew.component("cp-1", "kube-scheduler", V(component), V(apiserver))
    assert (got is None) == ok
    if got:
        assert got.rule == skew.COMPONENT_VS_APISERVER and "kube-scheduler" in got.message


def test_violations_of_a_whole_cluster() -> None:
    c = skew.ClusterVersions(apiservers={"cp-1": V("v1.31.0")},
                             kubelets={"cp-1": V("v1.31.0"), "w-1": V("v1.27.3"), "w-2": V("v1.30.0")},
                             kube_proxy=V("v1.31.0"), kubectls={"cp-1": V("v1.31.0"), "w-1": V("v1.27.3")})
    rules = [(v.rule, v.subject) for v in skew.violations(c)]
    assert rules == [(skew.KUBELET_TOO_OLD, "w-1"), (skew.PROXY_VS_KUBELET, "w-1"), (skew.KUBECTL_WITHIN_ONE, "w-1")]
    assert [v.rule for v in skew.violations(c.with_kubelet("w-1", V("v1.28.0")))] == [skew.KUBECTL_WITHIN_ONE]
    assert skew.violations(c.with_kubelet("w-1", V("v1.30.0"))) == []


# -- properties ---------------------------------------------------------------------------------

minors = st.integers(min_value=20, max_value=40)
versions = st.builds(lambda m, p: Version(1, m, p), minors, st.integers(min_value=0, max_value=20))


@given(versions, versions)
def test_oldest_kubelet_minor_is_the_kubelet_rule(apiserver: Version, kubelet: Version) -> None:
    ok = skew.kubelet("n", kubelet, [apiserver]) is None
    assert ok == (skew.oldest_kubelet_minor(apiserver) <= kubelet.minor <= apiserver.minor)


@given(versions, versions, versions)
def test_moving_a_kubelet_toward_the_apiserver_never_breaks_its_rule(apiserver: Version, a: Version,
                                                                     b: Version) -> None:
    lo, hi = sorted((a, b))
    if hi.minor_key <= apiserver.minor_key and skew.kubelet("n", lo, [apiserver]) is None:
        assert skew.kubelet("n", hi, [apiserver]) is None


@given(st.lists(versions, min_size=1, max_size=5), versions)
def test_rules_depend_on_the_set_of_apiservers_not_their_order(servers: list[Version], v: Version) -> None:
    rev = list(reversed(servers))
    assert skew.kubelet("n", v, servers) == skew.kubelet("n", v, rev)
    assert skew.kubectl("n", v, servers) == skew.kubectl("n", v, rev)
    names = {f"cp-{i}": s for i, s in enumerate(servers)}
    assert (skew.apiservers(names) is None) == (max(servers).minor - min(servers).minor <= 1)


@given(versions, versions)
def test_kubectl_rule_is_symmetric(a: Version, b: Version) -> None:
    assert (skew.kubectl("n", a, [b]) is None) == (skew.kubectl("n", b, [a]) is None)


@given(versions, versions, versions)
def test_a_cluster_at_one_minor_breaks_no_rule(a: Version, b: Version, c: Version) -> None:
    m = a.minor
    same = [Version(1, m, x.patch) for x in (a, b, c)]
    cluster = skew.ClusterVersions({"cp-1": same[0]}, {"cp-1": same[0], "w-1": same[1], "w-2": same[2]},
                                   kube_proxy=same[0], kubectls={"cp-1": same[0]})
    assert skew.violations(cluster) == []


def test_api_server_versions_from_mirror_pods() -> None:
    def pod(node: Any, image: Any, name: str = "kube-apiserver") -> dict[str, Any]:
        return {"spec": {"nodeName": node, "containers": [{"name": "etcd", "image": "registry.k8s.io/etcd:3.5.15-0"},
                                                          {"name": name, "image": image}]}}

    pods = [pod("cp-1", "registry.k8s.io/kube-apiserver:v1.31.2"),
            pod("cp-2", "mirror.example:5000/k8s/kube-apiserver:v1.30.5"),
            pod("cp-3", "registry.k8s.io/kube-apiserver@sha256:" + "a" * 64),  # no tag: unknown
            pod("cp-4", "registry.k8s.io/kube-apiserver:latest"),
            pod(7, "registry.k8s.io/kube-apiserver:v1.31.2"),  # hostile shapes are skipped
            {"spec": "x"}, pod("cp-5", "registry.k8s.io/kube-apiserver:v1.31.2", name="sidecar")]
    assert skew.apiservers_from_mirror_pods(pods) == {"cp-1": V("v1.31.2"), "cp-2": V("v1.30.5")}
