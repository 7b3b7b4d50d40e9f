"""NodeOps against a recording fake of kupd's API client: which requests cordon, drain and
uncordon send, and what a refused eviction is reported as. The real API server's side (PDBs
enforced by the Eviction API) is covered by tests/cluster/test_rollout.py."""

from __future__ import annotations

from typing import Any

import pytest

from kupd.api.models import DrainPolicy
from kupd.errors import PermanentError, RetryableError
from kupd.k8s import ApiError
from kupd.nodeops import NodeOps
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
    return NodeOps(api, "w-1")  # type: ignore[arg-type]  # the fake stands in for k8s.Client


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
        pod("web", {"app": "web"}),
        pod("agent", metadata={"ownerReferences": [{"kind": "DaemonSet", "name": "agent"}]}),
        pod("static", metadata={"annotations": {"kubernetes.io/config.mirror": "x"}}),
    ])
    ops(api).drain(DrainPolicy.model_construct(grace_period_seconds=30), lambda reason, msg: None, sleep=lambda s: None)
    evictions = [w for w in api.writes if w[0] == "create"]
    assert evictions == [("create", "/api/v1/namespaces/default/pods/web/eviction", {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web", "namespace": "default"},
        "deleteOptions": {"gracePeriodSeconds": 30}}, {})]
    assert ("/api/v1/pods", {"fieldSelector": "spec.nodeName=w-1"}) in api.lists


def test_a_refused_eviction_is_reported_with_the_blocking_pdb() -> None:
    pdbs = [
        {"metadata": {"name": "db-pdb", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"app": "db"}}}},
        {"metadata": {"name": "web-pdb", "namespace": "default"},
         "spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}}},
    ]
    api = FakeApi(pods=[pod("web", {"app": "web"})], pdbs=pdbs, evict_status=429)
    reports: list[tuple[str, str]] = []
    with pytest.raises(PermanentError) as caught:
        ops(api).drain(DrainPolicy.model_construct(timeout_seconds=0),
                       lambda reason, msg: reports.append((reason, msg)), sleep=lambda s: None)
    msg = "eviction of pod default/web refused by PodDisruptionBudget default/web-pdb"
    assert reports == [("DrainBlocked", msg)]
    assert msg in str(caught.value)
    # No grace period asked for: the eviction carries no deleteOptions.
    assert "deleteOptions" not in next(w for w in api.writes if w[0] == "create")[2]


def test_force_delete_on_timeout() -> None:
    api = FakeApi(pods=[pod("web", {"app": "web"})], evict_status=429)
    ops(api).drain(DrainPolicy.model_construct(timeout_seconds=0, on_timeout="ForceDelete"), lambda r, m: None,
                   sleep=lambda s: None)
    assert api.pods == []
    assert ("delete", "/api/v1/namespaces/default/pods/web", None, {"gracePeriodSeconds": 0}) in api.writes


def test_emptydir_data_needs_consent() -> None:
    api = FakeApi(pods=[pod("cache", volumes=[{"name": "scratch", "emptyDir": {}}])])
    with pytest.raises(PermanentError, match="default/cache uses emptyDir"):
        ops(api).drain(DrainPolicy.model_construct(), lambda r, m: None, sleep=lambda s: None)
    api = FakeApi(pods=[pod("cache", volumes=[{"name": "scratch", "emptyDir": {}}])])
    ops(api).drain(DrainPolicy.model_construct(delete_empty_dir_data=True), lambda r, m: None, sleep=lambda s: None)
    assert api.pods == []


def test_an_eviction_failing_otherwise_is_mapped() -> None:
    api = FakeApi(pods=[pod("web")], evict_status=500)
    with pytest.raises(RetryableError, match="evict web"):
        ops(api).drain(DrainPolicy.model_construct(), lambda r, m: None, sleep=lambda s: None)


def test_wait_ready_reads_ready_and_kubelet_version() -> None:
    node: dict[str, Any] = {"metadata": {"name": "w-1"}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.31.2"}}}
    ops(FakeApi(node)).wait_ready("v1.31.2", sleep=lambda s: None)
    with pytest.raises(PermanentError, match=r"Ready=True kubeletVersion=v1\.31\.2"):
        ops(FakeApi(node)).wait_ready("v1.32.0", timeout=0, sleep=lambda s: None)
    with pytest.raises(PermanentError, match=r"Ready=False kubeletVersion=\?"):
        ops(FakeApi({"metadata": {"name": "w-1"}})).wait_ready("v1.32.0", timeout=0, sleep=lambda s: None)
