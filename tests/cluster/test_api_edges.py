"""The small API users at kupd's edges, against the real API server: `kupd enroll` and
`kupd plan --kubeconfig` (in-process), the host's ClusterView, and the control-plane pods gate.
The daemon's own API use is covered by the rollout tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kupd import enroll, health, k8s, planner
from kupd import protocol as p
from kupd.api.models import HealthGates, parse_directupdate_spec
from kupd.cli import main
from kupd.election import Elector
from kupd.grants import GrantLeases
from kupd.host.real import KubeClusterView
from kupd.sim.devcluster import ControlPlane
from kupd.versions import Version
from tests.cluster import harness

ROOT = Path(__file__).resolve().parents[2]
NODE = "edge-9"


@pytest.fixture
def api(crds: ControlPlane) -> Iterator[k8s.Client]:
    harness.cleanup(crds)
    client = k8s.api_client(str(crds.admin_kubeconfig))
    try:
        yield client
    finally:
        client.close()
        harness.cleanup(crds)


def make_node(api: k8s.Client, name: str, labels: dict[str, str], kubelet: str | None = None) -> None:
    api.create(k8s.node_path(), {"apiVersion": "v1", "kind": "Node",
                                              "metadata": {"name": name, "labels": labels}})
    if kubelet:
        api.patch(k8s.node_path(name, subresource="status"), {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}],
            "nodeInfo": {"kubeletVersion": kubelet}}}, kind="strategic")


def test_enroll_writes_a_kubeconfig_that_authenticates_as_the_node(crds: ControlPlane, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "etc" / "kupd" / "kubeconfig"
    args = ["enroll", NODE, "--kubeconfig", str(crds.admin_kubeconfig), "--node-kubeconfig", str(out),
            "--duration", "3600"]
    try:
        assert main(args) == 0
        # Again: the bindings exist now and are replaced, the ServiceAccount is kept.
        assert main(args) == 0
        assert f"enrolled {NODE} as {enroll.username(NODE)}" in capsys.readouterr().out
        assert out.stat().st_mode & 0o777 == 0o600
        doc = yaml.safe_load(out.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == crds.server
        node_api = k8s.api_client(str(out))
        review = node_api.create("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                 {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        node_api.close()
        assert review["status"]["userInfo"]["username"] == enroll.username(NODE)
    finally:
        crds.kubectl("delete", "clusterrolebindings,rolebindings,roles", "-A", "-l", f"{enroll.NODE_LABEL}={NODE}",
                     check=False)
        crds.kubectl("delete", "serviceaccount", "-n", enroll.NAMESPACE, enroll.service_account(NODE), check=False)


def test_plan_reads_nodes_and_member_leases(api: k8s.Client, crds: ControlPlane,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    make_node(api, "cp-1", {p.LABEL_CONTROL_PLANE: ""})
    make_node(api, "w-1", {})
    make_node(api, "w-2", {})
    leases = k8s.lease_path("kupd-system")
    for node, kubelet in (("cp-1", "v1.31.2"), ("w-1", "v1.30.4"), ("w-2", "v1.30.4")):
        api.create(leases, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {
            "name": p.member_lease_name(node), "annotations": {p.ANN_KUBELET: kubelet}}})
    rc = main(["plan", "-f", str(ROOT / "examples" / "directupdate-simple.yaml"),
               "--kubeconfig", str(crds.admin_kubeconfig), "-o", "json"])
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    # cp-1 is already at v1.31.2: only the workers are planned.
    assert [w["nodes"] for w in out["waves"]] == [["w-1"], ["w-2"]]


def test_cluster_view_reads_version_and_node(api: k8s.Client, crds: ControlPlane) -> None:
    view = KubeClusterView(str(crds.admin_kubeconfig))
    git = str(api.get("/version")["gitVersion"])
    assert view.apiserver_version() == Version.parse(git.split("+")[0].split("-")[0])
    make_node(api, "w-1", {})
    status = view.node_status("w-1")
    assert not status.ready and status.kubelet_version == ""
    api.patch(k8s.node_path("w-1", subresource="status"), {"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}],
        "nodeInfo": {"kubeletVersion": "v1.31.2"}}}, kind="strategic")
    status = view.node_status("w-1")
    assert status.ready and status.kubelet_version == "v1.31.2"


def test_cluster_view_reads_each_api_server_from_its_mirror_pod(api: k8s.Client, crds: ControlPlane) -> None:
    view = KubeClusterView(str(crds.admin_kubeconfig))
    pods = k8s.path("", "v1", "pods", namespace="kube-system")
    made = []
    for node, image in (("cp-1", "registry.k8s.io/kube-apiserver:v1.31.2"),
                        ("cp-2", "registry.k8s.io/kube-apiserver:v1.30.5"),
                        ("cp-3", "registry.example/kube-apiserver@sha256:" + "0" * 64)):
        name = f"kube-apiserver-{node}"
        api.create(pods, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "labels": {"component": "kube-apiserver", "tier": "control-plane"},
            "annotations": {"kubernetes.io/config.mirror": "0123"}},
            "spec": {"nodeName": node, "containers": [{"name": "kube-apiserver", "image": image}]}})
        made.append(name)
    try:
        assert view.apiserver_versions() == {"cp-1": Version.parse("v1.31.2"), "cp-2": Version.parse("v1.30.5")}
    finally:
        for name in made:
            api.delete(k8s.path("", "v1", "pods", name, "kube-system"), gracePeriodSeconds=0)


def test_control_plane_pods_gate(api: k8s.Client) -> None:
    pods = k8s.path("", "v1", "pods", namespace="kube-system")
    name = "kube-apiserver-edge"
    api.create(pods, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "labels": {"tier": "control-plane"}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}})
    try:
        assert health.evaluate(api, HealthGates()) == f"control-plane pod kube-system/{name} is not Ready"
        api.patch(k8s.path("", "v1", "pods", name, "kube-system", "status"), {"status": {
            "conditions": [{"type": "Ready", "status": "True"}]}}, kind="strategic")
        assert health.control_plane_pods(api) is None
        assert health.evaluate(api, HealthGates(control_plane_pods=False)) is None
    finally:
        api.delete(k8s.path("", "v1", "pods", name, "kube-system"), gracePeriodSeconds=0)


def test_removed_apis_still_requested_are_read_from_the_api_servers_metrics(api: k8s.Client) -> None:
    from kupd import hazards

    text = api.get_text("/metrics")
    assert "apiserver_request_total" in text
    # Whatever this release lists, every series parses into a removed release kupd can compare.
    for found in hazards.parse_deprecated_apis(text):
        assert found.resource and found.removed_release.count(".") == 1


def test_a_grant_record_that_is_not_a_grant_holds_back_its_own_node_only(api: k8s.Client) -> None:
    """The coordinator's grant delivery, against the real API server and its admission policy:
    a status entry whose record lacks grantedAt (the CRD allows that; a status written by hand)
    is not delivered (the planner says why: planner.invalid_grant), and the other node's turn is."""
    elector = Elector(api, "kupd-system", "cp-1", 15)
    assert elector.try_acquire_or_renew()
    leases = k8s.Informer("leases", api, k8s.lease_path("kupd-system"), lambda: None)
    grants = GrantLeases(api, "kupd-system", leases, elector)
    record = {"epoch": elector.epoch, "versions": ["v1.32.0"], "firstControlPlane": False, "backup": False,
              "grantedAt": "2026-12-01T10:00:00Z"}
    status = {"nodes": [
        {"name": "w-1", "phase": "Granted", "grant": record},
        {"name": "w-2", "phase": "Granted", "grant": {k: v for k, v in record.items() if k != "grantedAt"}}]}
    delivered: dict[str, str] = {}
    grants.deliver({"metadata": {"name": "op", "uid": "uid-1"}}, parse_directupdate_spec({"version": "v1.32.0"}),
                   status, delivered)
    assert planner.invalid_grant(status["nodes"][1]) and not planner.invalid_grant(status["nodes"][0])
    lease = api.get(k8s.lease_path("kupd-system", p.grant_lease_name("w-1")))
    g = p.Grant.decode(p.grant_value(lease))
    assert g is not None and (g.operation, g.granted_at, g.versions) == ("op", "2026-12-01T10:00:00Z", ["v1.32.0"])
    assert list(delivered) == ["w-1"] and grants.writes == 1
    with pytest.raises(k8s.ApiError) as e:
        api.get(k8s.lease_path("kupd-system", p.grant_lease_name("w-2")))
    assert e.value.status == 404
