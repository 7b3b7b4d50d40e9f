"""NodeOps against a recording fake of kupd's API client: which requests cordon and uncordon send;
the drain's pure pod filters. The drain against the real API server and disruption controller
(PDBs, refusals, timeouts) is tests/cluster/test_drain.py."""

from __future__ import annotations

from typing import Any

import pytest

from kupd.api.models import DrainPolicy
from kupd.errors import PermanentError
from kupd.k8s import ApiError
from kupd.nodeops import NodeOps, _pdb_of_refusal, plan_drain
from kupd.protocol import ANN_CORDONED_BY

NODE_PATH = "/api/v1/nodes/w-1"


def pod(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": "default", "labels": labels or {}}
    md.update(extra.pop("metadata", {}))
    return {"metadata": md, "spec": {"nodeName": "w-1", **extra}}


class FakeApi:
    """Answers from dicts and records every write as (verb, path, body, query)."""

    def __init__(self, node: dict[str, Any] | None = None, pods: list[dict[str, Any]] | None = None,
                 pdbs: list[dict[str, Any]] | None = None, evict_status: int | None = None) -> None:
        self.node = node if node is not None else {"metadata": {"name": "w-1"}, "spec": {}}
        self.pods = pods or []
        self.pdbs = pdbs or []
        self.evict_status = evict_status
        self.writes: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.lists: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        assert path == NODE_PATH
        return self.node

    def list(self, path: str, **query: Any) -> dict[str, Any]:
        self.lists.append((path, query))
        if path == "/api/v1/pods":
            return {"items": list(self.pods)}
        if path == "/apis/policy/v1/namespaces/default/poddisruptionbudgets":
            return {"items": self.pdbs}
        raise AssertionError(path)

    def patch(self, path: str, body: Any, kind: str = "merge", **query: Any) -> dict[str, Any]:
        self.writes.append(("patch-" + kind, path, body, query))
        return {}

    def create(self, path: str, body: dict[str, Any], **query: Any) -> dict[str, Any]:
        self.writes.append(("create", path, body, query))
        if self.evict_status is not None:
            raise ApiError(self.evict_status, "TooManyRequests", "Cannot evict pod as it would violate the "
                           "pod's disruption budget.")
        self.pods = [p for p in self.pods if p["metadata"]["name"] != body["metadata"]["name"]]
        return {}

    def delete(self, path: str, body: dict[str, Any] | None = None, **query: Any) -> dict[str, Any]:
        self.writes.append(("delete", path, body, query))
        self.pods = [p for p in self.pods if not path.endswith("/pods/" + p["metadata"]["name"])]
        return {}


def ops(api: FakeApi) -> NodeOps:
    return NodeOps(api, "w-1")  # type: ignore[arg-type]  # the fake stands in for kubeapi.Client


def test_cordon_marks_the_node_and_uncordon_only_undoes_its_own_mark() -> None:
    api = FakeApi()
    ops(api).cordon()
    assert api.writes == [("patch-strategic", NODE_PATH, {"metadata": {"annotations": {ANN_CORDONED_BY: "kupd"}},
                                                          "spec": {"unschedulable": True}}, {})]
    api = FakeApi({"metadata": {"name": "w-1"}, "spec": {"unschedulable": True}})
    ops(api).cordon()
    ops(api).uncordon()
    assert api.writes == []  # cordoned by someone else: left alone both ways
    api = FakeApi({"metadata": {"name": "w-1", "annotations": {ANN_CORDONED_BY: "kupd"}},
                   "spec": {"unschedulable": True}})
    ops(api).uncordon()
    assert api.writes == [("patch-strategic", NODE_PATH, {"metadata": {"annotations": {ANN_CORDONED_BY: None}},
                                                          "spec": {"unschedulable": None}}, {})]


def test_drain_evicts_through_the_eviction_api_skipping_daemonsets_and_mirror_pods() -> None:
    api = FakeApi(pods=[
        pod("web", {"app": "web"}, metadata={"ownerReferences": [RS]}),
        pod("agent", metadata={"ownerReferences": [{"kind": "DaemonSet", "name": "agent", "controller": True}]}),
        pod("static", metadata={"annotations": {"kubernetes.io/config.mirror": "x"}}),
    ])
    ops(api).drain(DrainPolicy(grace_period_seconds=30), lambda reason, msg: None, sleep=lambda s: None)
    evictions = [w for w in api.writes if w[0] == "create"]
    assert evictions == [("create", "/api/v1/namespaces/default/pods/web/eviction", {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web", "namespace": "default"},
        "deleteOptions": {"gracePeriodSeconds": 30}}, {})]
    assert ("/api/v1/pods", {"fieldSelector": "spec.nodeName=w-1"}) in api.lists


RS = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": True}


def managed(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    md = extra.pop("metadata", {})
    return pod(name, labels, metadata={"ownerReferences": [RS], **md}, **extra)


def names(pods: Any) -> list[str]:
    return [p["metadata"]["name"] if isinstance(p, dict) else p.split("/")[1] for p in pods]


def test_plan_drain_follows_kubectl_drain() -> None:
    pods = [
        managed("web"),
        pod("bare"),
        managed("cache", volumes=[{"name": "scratch", "emptyDir": {}}]),
        pod("done", status={"phase": "Succeeded"}),
        pod("ds", metadata={"ownerReferences": [{"kind": "DaemonSet", "name": "x", "controller": True}]}),
        pod("static", metadata={"annotations": {"kubernetes.io/config.mirror": "x"}}),
        # An owner that is not the controller does not make a pod managed.
        pod("orphan", metadata={"ownerReferences": [{**RS, "controller": False}]}),
    ]
    for p in pods:
        p.setdefault("status", p["spec"].pop("status", {}))
    plan = plan_drain(pods, DrainPolicy())
    assert names(plan.evict) == ["web", "done"]
    assert [(n, why.split(" (")[0]) for n, why in plan.refused] == [
        ("default/bare", "no controller manages it"), ("default/cache", "it has emptyDir data"),
        ("default/orphan", "no controller manages it")]
    assert [n for n, _ in plan.skipped] == ["default/ds", "default/static"]
    assert names(plan_drain(pods, DrainPolicy(force=True)).evict) == ["web", "bare", "done", "orphan"]
    assert names(plan_drain(pods, DrainPolicy(force=True, delete_empty_dir_data=True)).evict) == [
        "web", "bare", "cache", "done", "orphan"]


def test_plan_drain_pod_selector_takes_the_set_based_grammar() -> None:
    pods = [managed("web-db", {"app": "web", "tier": "db"}), managed("web-front", {"app": "web", "tier": "front"}),
            managed("web", {"app": "web"}), managed("api", {"app": "api"})]
    policy = DrainPolicy(pod_selector="app=web,tier!=db")
    assert names(plan_drain(pods, policy).evict) == ["web-front", "web"]
    policy = DrainPolicy(pod_selector="app in (web,api),!tier")
    assert names(plan_drain(pods, policy).evict) == ["web", "api"]


def test_a_refused_eviction_names_the_pdb_from_the_api_servers_answer() -> None:
    err = ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.",
                   {"details": {"causes": [{"reason": "DisruptionBudget",
                                            "message": "The disruption budget web-pdb needs 1 healthy pods and "
                                                       "has 1 currently"}]}})
    assert _pdb_of_refusal(err) == "web-pdb"
    assert _pdb_of_refusal(ApiError(429, "TooManyRequests", "throttled")) == ""


def test_wait_ready_reads_ready_and_kubelet_version() -> None:
    node: dict[str, Any] = {"metadata": {"name": "w-1"}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.31.2"}}}
    ops(FakeApi(node)).wait_ready("v1.31.2", sleep=lambda s: None)
    with pytest.raises(PermanentError, match=r"Ready=True kubeletVersion=v1\.31\.2"):
        ops(FakeApi(node)).wait_ready("v1.32.0", timeout=0, sleep=lambda s: None)
    with pytest.raises(PermanentError, match=r"Ready=False kubeletVersion=\?"):
        ops(FakeApi({"metadata": {"name": "w-1"}})).wait_ready("v1.32.0", timeout=0, sleep=lambda s: None)
