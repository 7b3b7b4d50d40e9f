"""Least privilege on the real API server: per-node ServiceAccount identities (kupd.enroll), the
RBAC roles and ValidatingAdmissionPolicies of packaging/rbac/, hostile custom resources, and
the backup credentials never leaking.

Every refusal here is the API server's (RBAC 403 or an admission denial), not kupd's own code.
Each refusal test has a positive control next to it (the same request for the node's own object
succeeds), so a policy that fails to compile (which would deny everything) cannot pass as a
working one.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kupd import enroll, k8s
from kupd import protocol as p
from kupd.api.models import parse_directupdate_spec
from kupd.errors import ValidationError
from kupd.sim.devcluster import ControlPlane
from kupd.sim.simcluster import SimCluster
from tests.cluster import harness
from tests.cluster.hostile import HOSTILE, hostile_strings
from tests.paths import CRD_DIR

RBAC_DIR = Path(__file__).resolve().parents[2] / "packaging" / "rbac"
NS = enroll.NAMESPACE
SECRET_NS, SECRET_NAME = "kupd-system", "kupd-backup-credentials"
# A value that must never show up anywhere but in the Secret itself.
CANARY = "kupdCANARY-8f3a1c9e2b7d4f60-secret"
NODES = {"cp-1": True, "cp-2": True, "w-1": False, "w-2": False}

# Test-only rights for the simulated kubelet, which shares the daemon's client: a real node's
# kubelet has its own credential. Not part of packaging/rbac.
SIMKUBELET_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
    "metadata": {"name": "kupd-test-simkubelet"},
    "rules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
    ],
}


class Identities:
    def __init__(self, cp: ControlPlane, workdir: Path) -> None:
        self.cp = cp
        self.workdir = workdir
        self.kubeconfigs: dict[str, Path] = {}
        self._clients: dict[str, client.ApiClient] = {}

    def client(self, node: str) -> client.ApiClient:
        if node not in self._clients:
            self._clients[node] = config.new_client_from_config(config_file=str(self.kubeconfigs[node]))
        return self._clients[node]

    def core(self, node: str) -> Any:
        return client.CoreV1Api(self.client(node))

    def coord(self, node: str) -> Any:
        return client.CoordinationV1Api(self.client(node))

    def custom(self, node: str) -> Any:
        return client.CustomObjectsApi(self.client(node))


def _admin(cp: ControlPlane) -> client.ApiClient:
    """The official client, as an independent check of what kupd's own client does."""
    return config.new_client_from_config(config_file=str(cp.admin_kubeconfig))


def _apply(cp: ControlPlane, obj: dict[str, Any] | list[dict[str, Any]]) -> None:
    docs = obj if isinstance(obj, list) else [obj]
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=yaml.safe_dump_all(docs))


def _refused(fn: Callable[[], Any]) -> ApiException:
    """Run fn and return the API server's refusal; fail if it was accepted."""
    try:
        fn()
    except ApiException as e:
        assert e.status in (403, 422), f"expected a refusal, got {e.status}: {e.body}"
        return e
    raise AssertionError("the API server accepted a request it must refuse")


def _lease_patch(node: str, holder: str | None = None, report: str = "") -> dict[str, Any]:
    return {"metadata": {"annotations": {p.ANN_REPORT: report}, "labels": {"kupd.io/node": node}},
            "spec": {"holderIdentity": holder or node, "leaseDurationSeconds": 20}}


def _lease(node: str, holder: str | None = None) -> dict[str, Any]:
    body = _lease_patch(node, holder)
    body["metadata"].update(name=p.member_lease_name(node), namespace=NS)
    return body


def _own_lease(ids: Identities, node: str) -> None:
    name = p.member_lease_name(node)
    body = _lease(node)
    try:
        ids.coord(node).create_namespaced_lease(NS, body)
    except ApiException as e:
        if e.status != 409:
            raise
        ids.coord(node).patch_namespaced_lease(name, NS, _lease_patch(node))


def _create(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except ApiException as e:
        if e.status != 409:
            raise


@pytest.fixture(scope="module")
def ids(crds: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identities]:
    cp = crds
    harness.cleanup(cp)
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RBAC_DIR))
    admin = _admin(cp)
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    _create(rbac.create_cluster_role, SIMKUBELET_ROLE)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME, "namespace": SECRET_NS},
              "type": "Opaque", "data": {
                  "accessKeyId": base64.b64encode(b"AKIAKUPDTESTKEY").decode(),
                  "secretAccessKey": base64.b64encode(CANARY.encode()).decode()}}
    _create(core.create_namespaced_secret, SECRET_NS, secret)
    workdir = tmp_path_factory.mktemp("identities")
    out = Identities(cp, workdir)
    ca = cp.ca_file.read_bytes()
    for node, control_plane in NODES.items():
        path = enroll.enroll(k8s.api_client(str(cp.admin_kubeconfig)), node, control_plane, cp.server, ca,
                             backup_secret=(SECRET_NS, SECRET_NAME) if control_plane else None,
                             output=workdir / node / "kubeconfig", seconds=3600)
        out.kubeconfigs[node] = path
        _create(rbac.create_cluster_role_binding, {
            "metadata": {"name": f"kupd-test-simkubelet:{node}", "labels": {"kupd.io/test": "security"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "kupd-test-simkubelet"},
            "subjects": [{"kind": "ServiceAccount", "name": enroll.service_account(node), "namespace": NS}]})
    # Policies and bindings reach the admission chain a moment after they are stored: wait until
    # a worker's write to another node's lease is denied while its own is accepted.
    deadline = time.monotonic() + 30
    last = ""
    while True:
        _own_lease(out, "w-1")
        _own_lease(out, "w-2")
        try:
            out.coord("w-1").patch_namespaced_lease(p.member_lease_name("w-2"), NS, _lease_patch("w-2"))
            last = "accepted"
        except ApiException as e:
            if e.status in (403, 422) and "kupd.io-leases" in str(e.body):
                break
            last = f"{e.status}: {e.body}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kupd admission policies were not enforced within 30s: {last}")
        time.sleep(0.3)
    try:
        yield out
    finally:
        harness.cleanup(cp)
        for sel in ("app.kubernetes.io/name=kupd", "kupd.io/test=security"):
            rbac.delete_collection_cluster_role_binding(label_selector=sel)
        for ns in (NS, "default"):
            rbac.delete_collection_namespaced_role_binding(ns, label_selector="app.kubernetes.io/name=kupd")
        core.delete_collection_namespaced_service_account(NS, label_selector="app.kubernetes.io/name=kupd")
        core.delete_namespaced_secret(SECRET_NAME, SECRET_NS)


def _du(cp: ControlPlane, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    harness.apply_du(cp, name, spec or {"version": "v1.32.0", "backup": {"required": False}})
    return harness.get_du(cp, name)


# -- enrollment -----------------------------------------------------------------------------


def test_enrollment_writes_a_private_kubeconfig_for_the_nodes_own_identity(ids: Identities) -> None:
    path = ids.kubeconfigs["w-1"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    review = client.AuthenticationV1Api(ids.client("w-1")).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    user = review.status.user_info.username
    assert user == "system:serviceaccount:kupd-system:kupd-node-w-1"
    assert enroll.node_of(user) == "w-1"


# -- a worker's identity --------------------------------------------------------------------


def test_worker_renews_its_own_lease_but_not_another_nodes(ids: Identities) -> None:
    _own_lease(ids, "w-1")
    _own_lease(ids, "cp-1")
    coord = ids.coord("w-1")
    e = _refused(lambda: coord.patch_namespaced_lease(p.member_lease_name("cp-1"), NS, _lease_patch("cp-1")))
    assert "may write only its own member Lease" in str(e.body)
    # Nor may it create a lease for a node that has none, or hold its own lease in another's name.
    _refused(lambda: coord.create_namespaced_lease(NS, _lease("w-9")))
    _refused(lambda: coord.patch_namespaced_lease(p.member_lease_name("w-1"), NS, _lease_patch("w-1", "cp-1")))
    # Nor delete a lease (RBAC grants no delete).
    _refused(lambda: coord.delete_namespaced_lease(p.member_lease_name("w-2"), NS))


def test_worker_cannot_write_another_nodes_progress(ids: Identities) -> None:
    _own_lease(ids, "w-2")
    fake = p.Report(operation="roll", uid="x", epoch=1, versions=["v1.32.0"], phase="Succeeded").encode()
    coord = ids.coord("w-1")
    _refused(lambda: coord.patch_namespaced_lease(p.member_lease_name("w-2"), NS, _lease_patch("w-2", report=fake)))
    lease = ids.coord("w-2").read_namespaced_lease(p.member_lease_name("w-2"), NS)
    assert (lease.metadata.annotations or {}).get(p.ANN_REPORT, "") == ""
    # Its own progress it may write.
    coord.patch_namespaced_lease(p.member_lease_name("w-1"), NS, _lease_patch("w-1", report=fake))


def test_worker_cannot_grant_itself_or_others_a_turn(ids: Identities) -> None:
    du = _du(ids.cp, "sec-grant")
    body = {"status": {"phase": "Running", "nodes": [
        {"name": "w-1", "role": "Worker", "phase": "Granted",
         "grant": {"epoch": 99, "versions": ["v1.32.0"], "firstControlPlane": False, "backup": False}}]}}
    custom = ids.custom("w-1")
    e = _refused(lambda: custom.patch_cluster_custom_object_status(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                   "sec-grant", body))
    assert e.status == 403
    # Nor can it take the coordinator lease, whose epoch every grant carries.
    coord = ids.coord("w-1")
    lease = {"metadata": {"name": p.COORDINATOR_LEASE, "namespace": NS},
             "spec": {"holderIdentity": "w-1", "leaseDurationSeconds": 15, "leaseTransitions": 100}}
    _refused(lambda: coord.create_namespaced_lease(NS, lease))
    assert (harness.get_du(ids.cp, "sec-grant").get("status") or {}).get("nodes") is None
    assert du["metadata"]["name"] == "sec-grant"


def test_no_node_identity_can_change_a_directupdate_spec(ids: Identities) -> None:
    _du(ids.cp, "sec-spec")
    patch = {"spec": {"version": "v1.33.0", "concurrency": 100}}
    e = _refused(lambda: ids.custom("w-1").patch_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                        "sec-spec", patch))
    assert e.status == 403
    # A control-plane identity may patch DirectUpdates (the scheduler moves windows) but never the spec.
    e = _refused(lambda: ids.custom("cp-1").patch_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                         "sec-spec", patch))
    assert "spec" in str(e.body)
    ids.custom("cp-1").patch_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "sec-spec", {
        "metadata": {"annotations": {p.ANN_WINDOW_END: "2030-01-01T00:00:00Z"}}})
    assert harness.get_du(ids.cp, "sec-spec")["spec"]["version"] == "v1.32.0"
    # Nor create one from nothing, nor delete a user's.
    rogue = {"apiVersion": k8s.API_VERSION, "kind": "DirectUpdate", "metadata": {"name": "sec-rogue"},
             "spec": {"version": "v1.33.0", "backup": {"required": False}}}
    _refused(lambda: ids.custom("cp-1").create_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, rogue))
    _refused(lambda: ids.custom("cp-1").delete_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                      "sec-spec"))
    _refused(lambda: ids.custom("w-1").delete_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                     "sec-spec"))


def test_only_control_plane_identities_read_the_backup_secret(ids: Identities) -> None:
    e = _refused(lambda: ids.core("w-1").read_namespaced_secret(SECRET_NAME, SECRET_NS))
    assert e.status == 403
    _refused(lambda: ids.core("w-1").list_namespaced_secret(SECRET_NS))
    secret = ids.core("cp-1").read_namespaced_secret(SECRET_NAME, SECRET_NS)
    assert base64.b64decode(secret.data["secretAccessKey"]).decode() == CANARY
    # Only that one Secret, and no listing (which would reveal every Secret of the namespace).
    _refused(lambda: ids.core("cp-1").list_namespaced_secret(SECRET_NS))


def test_worker_changes_only_its_own_node_and_only_the_cordon(ids: Identities) -> None:
    admin = client.CoreV1Api(_admin(ids.cp))
    for node in ("w-1", "w-2"):
        try:
            admin.create_node({"metadata": {"name": node, "annotations": {"other": "x"}}})
        except ApiException as e:
            if e.status != 409:
                raise
    core = ids.core("w-1")
    cordon = {"metadata": {"annotations": {p.ANN_CORDONED_BY: "kupd"}}, "spec": {"unschedulable": True}}
    core.patch_node("w-1", cordon)
    core.patch_node("w-1", {"metadata": {"annotations": {p.ANN_CORDONED_BY: None}}, "spec": {"unschedulable": None}})
    _refused(lambda: core.patch_node("w-2", cordon))
    _refused(lambda: core.patch_node("w-1", {"metadata": {"labels": {p.LABEL_CONTROL_PLANE: ""}}}))
    _refused(lambda: core.patch_node("w-1", {"metadata": {"annotations": {"other": "changed"}}}))
    _refused(lambda: core.patch_node("w-1", {"metadata": {"annotations": {p.ANN_CORDONED_BY: "$(reboot)"}}}))
    _refused(lambda: core.patch_node("w-1", {"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}))
    _refused(lambda: core.delete_node("w-1"))
    assert not admin.read_node("w-2").spec.unschedulable


def test_worker_deletes_only_pods_on_its_own_node(ids: Identities) -> None:
    admin = client.CoreV1Api(_admin(ids.cp))
    for name, node in (("sec-mine", "w-1"), ("sec-other", "w-2")):
        admin.create_namespaced_pod("default", {
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}})
    core = ids.core("w-1")
    _refused(lambda: core.delete_namespaced_pod("sec-other", "default", grace_period_seconds=0))
    core.delete_namespaced_pod("sec-mine", "default", grace_period_seconds=0)
    admin.delete_namespaced_pod("sec-other", "default", grace_period_seconds=0)


# -- a control-plane identity ---------------------------------------------------------------


def test_control_plane_identity_coordinates_and_others_are_fenced(ids: Identities) -> None:
    ids.cp.kubectl("delete", "lease", "-n", NS, p.COORDINATOR_LEASE, "--ignore-not-found")
    du = _du(ids.cp, "sec-coord")
    coord = ids.coord("cp-1")
    coord.create_namespaced_lease(NS, {"metadata": {"name": p.COORDINATOR_LEASE, "namespace": NS},
                                       "spec": {"holderIdentity": "cp-1", "leaseDurationSeconds": 15,
                                                "leaseTransitions": 0}})
    grant = {"status": {"phase": "Running", "coordinator": "cp-1", "epoch": 0, "nodes": [
        {"name": "cp-1", "role": "ControlPlane", "phase": "Granted",
         "grant": {"epoch": 0, "versions": ["v1.32.0"], "firstControlPlane": True, "backup": False}}]}}

    def write(node: str, body: dict[str, Any]) -> Any:
        return ids.custom(node).patch_cluster_custom_object_status(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                   "sec-coord", body)

    # The coordinator lease may hold only the writer itself.
    _refused(lambda: ids.coord("cp-2").patch_namespaced_lease(p.COORDINATOR_LEASE, NS,
                                                              {"spec": {"holderIdentity": "w-1"}}))
    # Deadline for the status policy's parameter (the Lease) to reach its informer.
    deadline = time.monotonic() + 10
    while True:
        try:
            write("cp-1", grant)
            break
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    ids.coord("cp-1").list_namespaced_lease(NS)
    ids.core("cp-1").list_node()
    ids.core("cp-1").create_namespaced_event("default", {
        "metadata": {"generateName": "sec-coord.", "namespace": "default"},
        "involvedObject": {"apiVersion": k8s.API_VERSION, "kind": "DirectUpdate", "name": "sec-coord",
                           "uid": du["metadata"]["uid"]},
        "reason": "NodeGranted", "message": "cp-1 granted", "type": "Normal"})
    # A second control-plane node that does not hold the lease cannot write grants (an API-side
    # fence), nor release or steal the lease while it is held.
    other = {"status": {**grant["status"], "coordinator": "cp-2"}}
    e = _refused(lambda: write("cp-2", other))
    assert "does not hold it" in str(e.body)
    _refused(lambda: write("cp-1", other))
    _refused(lambda: ids.coord("cp-2").patch_namespaced_lease(p.COORDINATOR_LEASE, NS,
                                                              {"spec": {"holderIdentity": ""}}))
    # Workers cannot list leases or nodes (the coordinator's view), nor create Events.
    _refused(lambda: ids.coord("w-1").list_namespaced_lease(NS))
    _refused(lambda: ids.core("w-1").list_node())
    # Handing over: the holder releases, then cp-2 takes it and may write.
    ids.coord("cp-1").patch_namespaced_lease(p.COORDINATOR_LEASE, NS, {"spec": {"holderIdentity": ""}})
    ids.coord("cp-2").patch_namespaced_lease(p.COORDINATOR_LEASE, NS, {"spec": {"holderIdentity": "cp-2",
                                                                                "leaseTransitions": 1}})
    deadline = time.monotonic() + 10
    while True:
        try:
            write("cp-2", other)
            break
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    ids.cp.kubectl("delete", "lease", "-n", NS, p.COORDINATOR_LEASE)


def _grant_lease(node: str, holder: str | None = None, epoch: int = 0) -> dict[str, Any]:
    work = parse_directupdate_spec({"version": "v1.32.0"}).node_work(
        ["v1.32.0"], control_plane=False, first_control_plane=False, backup=False)
    grant = p.Grant(operation="sec-grants", uid="u-1", epoch=0, granted_at="2026-11-27T00:00:00Z", work=work)
    return {"metadata": {"name": p.grant_lease_name(node), "namespace": NS,
                         "annotations": {p.ANN_GRANT: grant.encode(), p.ANN_EPOCH: str(epoch)}},
            "spec": {"holderIdentity": holder or node}}


def test_only_the_coordinator_writes_grant_leases_and_a_node_watches_only_its_own(ids: Identities) -> None:
    ids.cp.kubectl("delete", "lease", "-n", NS, p.COORDINATOR_LEASE, "--ignore-not-found")
    ids.coord("cp-1").create_namespaced_lease(NS, {"metadata": {"name": p.COORDINATOR_LEASE, "namespace": NS},
                                                   "spec": {"holderIdentity": "cp-1", "leaseDurationSeconds": 15,
                                                            "leaseTransitions": 0}})
    try:
        # A worker cannot give itself (or anyone) a turn.
        e = _refused(lambda: ids.coord("w-1").create_namespaced_lease(NS, _grant_lease("w-1")))
        # Refused by both kupd.io-leases and kupd.io-grants; the API server names either.
        assert "may write only its own member Lease" in str(e.body) or "w-1 does not hold it" in str(e.body)
        # The coordinator writes grants (once the policy's parameter, the Lease, reached its informer).
        deadline = time.monotonic() + 10
        while True:
            try:
                _create(ids.coord("cp-1").create_namespaced_lease, NS, _grant_lease("w-1"))
                break
            except ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        # A control-plane node that does not hold the coordinator Lease cannot (an API-side fence).
        e = _refused(lambda: ids.coord("cp-2").create_namespaced_lease(NS, _grant_lease("w-2")))
        assert "does not hold it" in str(e.body)
        e = _refused(lambda: ids.coord("cp-2").patch_namespaced_lease(p.grant_lease_name("w-1"), NS,
                                                                      {"metadata": {"annotations": {p.ANN_GRANT: ""}}}))
        assert "does not hold it" in str(e.body)
        # A grant of another epoch than the coordinator Lease's (a deposed holder's late write).
        e = _refused(lambda: ids.coord("cp-1").create_namespaced_lease(NS, _grant_lease("w-2", epoch=1)))
        assert "current coordinator epoch" in str(e.body)
        # A grant Lease names its own node as holder.
        e = _refused(lambda: ids.coord("cp-1").create_namespaced_lease(NS, _grant_lease("w-2", holder="w-1")))
        assert "must be the node it is named after" in str(e.body)
        # The worker watches its own grant Lease by name, and no other node's.
        own = ids.coord("w-1").list_namespaced_lease(NS, field_selector=f"metadata.name={p.grant_lease_name('w-1')}")
        assert [i.metadata.name for i in own.items] == [p.grant_lease_name("w-1")]
        assert p.Grant.decode(own.items[0].metadata.annotations[p.ANN_GRANT]) is not None
        _refused(lambda: ids.coord("w-1").list_namespaced_lease(
            NS, field_selector=f"metadata.name={p.grant_lease_name('w-2')}"))
    finally:
        ids.cp.kubectl("delete", "lease", "-n", NS, p.COORDINATOR_LEASE, p.grant_lease_name("w-1"),
                       "--ignore-not-found")


# -- hostile custom resources ---------------------------------------------------------------


def test_hostile_custom_resources_are_refused_by_the_api_and_by_the_daemon(ids: Identities) -> None:
    assert len(HOSTILE) >= 20
    custom = client.CustomObjectsApi(_admin(ids.cp))
    accepted = []
    for h in HOSTILE:
        obj = {"apiVersion": k8s.API_VERSION, "kind": "DirectUpdate",
               "metadata": {"name": f"hostile-{h.id}"}, "spec": h.spec}
        try:
            custom.create_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, obj)
            accepted.append(h.id)
        except ApiException as e:
            assert e.status == 422, f"{h.id}: {e.status} {e.body[:400]}"
            assert h.field.split("[")[0] in e.body, f"{h.id}: refused for another reason: {e.body[:600]}"
        with pytest.raises(ValidationError) as refused:
            parse_directupdate_spec(h.spec)
        assert refused.value.field.startswith(h.field.split("[")[0]), f"{h.id}: daemon named {refused.value}"
    assert not accepted, f"the API server stored hostile DirectUpdates: {accepted}"


# -- real daemons with per-node identities --------------------------------------------------


@pytest.fixture(scope="module")
def daemons(ids: Identities, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    """Real daemons (a control-plane node and a worker), each with its own identity from `ids`,
    every subprocess they start written to the runner's audit log."""
    harness.cleanup(ids.cp)
    workdir = tmp_path_factory.mktemp("daemons")
    audit = workdir / "audit.jsonl"
    sim = SimCluster(ids.cp, workdir / "sim", step_seconds=0.2, extra_env={"KUPD_AUDIT_LOG": str(audit)})
    try:
        for node in ("cp-1", "w-1"):
            sim.add_node(node, control_plane=NODES[node], extra={"kubeconfig": str(ids.kubeconfigs[node])})
        yield sim
    finally:
        for name in list(sim.nodes):
            sim.kill(name)  # SIGKILL: a graceful stop only waits out leases nobody needs here
        for name, sim_node in sim.nodes.items():
            if sim_node.log.exists():
                print(f"==== {name} daemon log (tail)\n{sim_node.log.read_text(errors='replace')[-4000:]}")


def _audit_argvs(sim: SimCluster) -> list[list[str]]:
    path = Path(sim.extra_env["KUPD_AUDIT_LOG"])
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["argv"] for line in text.splitlines() if line.strip()]


def _assert_no_hostile_argv(sim: SimCluster) -> None:
    strings = hostile_strings()
    for argv in _audit_argvs(sim):
        joined = "\x00".join(argv)
        for s in strings:
            assert s not in joined, f"hostile string {s!r} reached argv {argv}"


def _phase(cp: ControlPlane, custom: Any, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = custom.get_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, name)
        st = obj.get("status") or {}
        if st.get("phase") in ("Succeeded", "Failed", "RequiresAttention"):
            return st
        time.sleep(0.1)
    raise AssertionError(f"{name} not finished in {timeout}s: {json.dumps(st)[:2000]}")


def test_loosened_schema_hostile_crs_never_reach_a_subprocess(ids: Identities, daemons: SimCluster) -> None:
    """A DirectUpdate stored under an older, looser schema is refused by the daemon itself: the
    coordinator marks it Failed (InvalidSpec, naming the field), grants no node, and nothing from
    it reaches argv."""
    cp = ids.cp
    custom = client.CustomObjectsApi(_admin(cp))
    crd = json.loads(cp.kubectl("get", "crd", "directupdates.kupd.io", "-o", "json").stdout)
    loose = json.loads(json.dumps(crd))
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        loose["metadata"].pop(key, None)
    loose.pop("status", None)
    for v in loose["spec"]["versions"]:
        v["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    effects = {name: node.state()["effects"] if node.state_file.exists() else [] for name, node in
               daemons.nodes.items()}
    try:
        cp.kubectl("replace", "-f", "-", input_text=json.dumps(loose))
        deadline = time.monotonic() + 15
        first = HOSTILE[0]
        body = {"apiVersion": k8s.API_VERSION, "kind": "DirectUpdate",
                "metadata": {"name": f"loose-{first.id}"}, "spec": first.spec}
        while True:  # the API server serves the new schema a moment after the CRD changes
            try:
                custom.create_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, body)
                break
            except ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        # One at a time: each is refused and the next created, as an operator retrying would.
        for i, h in enumerate(HOSTILE):
            name = f"loose-{h.id}"
            if i:
                custom.create_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, {
                    "apiVersion": k8s.API_VERSION, "kind": "DirectUpdate",
                    "metadata": {"name": name}, "spec": h.spec})
            st = _phase(cp, custom, name, timeout=30)
            assert st["phase"] == "Failed", f"{h.id}: {st}"
            valid = next(c for c in st["conditions"] if c["type"] == "Valid")
            assert valid["status"] == "False" and valid["reason"] == "InvalidSpec", f"{h.id}: {valid}"
            assert h.field.split("[")[0] in valid["message"], f"{h.id}: {valid['message']}"
            assert not [n for n in st.get("nodes") or [] if n.get("grant")], f"{h.id} granted a node"
    finally:
        cp.kubectl("delete", "directupdates", "--all", "--wait=true", check=False)
        # Back to the real schema: replace what was replaced, then the usual apply.
        current = json.loads(cp.kubectl("get", "crd", "directupdates.kupd.io", "-o", "json").stdout)
        crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        crd.pop("status", None)
        cp.kubectl("replace", "-f", "-", input_text=json.dumps(crd))
        cp.install_crds(CRD_DIR)
    for name, node in daemons.nodes.items():
        assert node.state()["effects"] == effects[name], f"{name} changed by a hostile CR"
    _assert_no_hostile_argv(daemons)


def test_daemons_with_per_node_identities_roll_out_and_never_leak_the_backup_secret(
        ids: Identities, daemons: SimCluster) -> None:
    """A rollout by real daemons, each with its own identity: first a backup whose store
    credentials are the canary Secret (the store is unreachable, so the backup fails after the
    credentials were read), then a clean upgrade. The daemons' output (which journald receives on a
    real node), statuses, Events, Leases and the runner's audit log are searched afterwards."""
    cp = ids.cp
    harness.apply_du(cp, "sec-backup", {
        "version": "v1.32.0", "maxAttempts": 1,
        "backup": {"required": True,
                   "store": {"type": "s3", "bucket": "kupd-backups", "endpoint": "http://127.0.0.1:1",
                             "credentialsSecret": {"namespace": SECRET_NS, "name": SECRET_NAME}},
                   "etcd": {"endpoints": [cp.etcd_endpoint], "caFile": str(cp.etcd_pki / "ca.crt"),
                            "certFile": str(cp.etcd_pki / "healthcheck-client.crt"),
                            "keyFile": str(cp.etcd_pki / "healthcheck-client.key")}}})
    st = harness.wait_phase(cp, "sec-backup", ("Succeeded", "Failed", "RequiresAttention"), timeout=60)
    assert st["phase"] != "Succeeded"
    assert "backup" in st.get("message", ""), st
    # The failure came from the store, after the snapshot and after the Secret was read and used.
    assert "etcd" not in st["message"].split("backup failed", 1)[-1].split(":", 1)[0], st["message"]
    for name in daemons.nodes:
        assert daemons.nodes[name].state()["effects"] == [], f"{name} changed without a backup"
    cp.kubectl("delete", "directupdate", "sec-backup")

    harness.apply_du(cp, "sec-roll", {"version": "v1.32.0", "backup": {"required": False}})
    st = harness.wait_phase(cp, "sec-roll", ("Succeeded", "Failed", "RequiresAttention"), timeout=90)
    assert st["phase"] == "Succeeded", st
    assert st["coordinator"] == "cp-1"
    for name in daemons.nodes:
        assert daemons.nodes[name].state()["versions"]["kubelet"] == "v1.32.0"
    nodes = json.loads(cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert not [n["metadata"]["name"] for n in nodes if n["spec"].get("unschedulable")]
    events = cp.kubectl("get", "events", "-A", "-o", "json").stdout
    assert {"NodeGranted", "Succeeded"} <= {e["reason"] for e in json.loads(events)["items"]}

    logs = {name: node.log.read_text(errors="replace") for name, node in daemons.nodes.items()}
    everything = {
        **{f"daemon log of {k}": v for k, v in logs.items()},
        "DirectUpdates": cp.kubectl("get", "directupdates", "-o", "json").stdout,
        "Events": events,
        "Leases": cp.kubectl("get", "leases", "-n", NS, "-o", "json").stdout,
        "audit log": json.dumps(_audit_argvs(daemons)),
        "state files": "".join(f.read_text(errors="replace") for node in daemons.nodes.values()
                               for f in node.dir.rglob("*") if f.is_file() and f.suffix == ".json"),
    }
    encoded = base64.b64encode(CANARY.encode()).decode()
    for where, text in everything.items():
        assert CANARY not in text, f"the backup secret leaked into the {where}"
        assert encoded not in text, f"the base64 of the backup secret leaked into the {where}"
    _assert_no_hostile_argv(daemons)
    # Least privilege is enough for the daemons' ordinary work: the API server refused them nothing.
    for name, text in logs.items():
        assert "forbidden" not in text.lower(), f"{name} was refused by the API server:\n{text[-3000:]}"


def test_a_worker_cannot_fake_the_verified_backup(ids: Identities, daemons: SimCluster, tmp_path: Path) -> None:
    """The worker writes only its own Lease (allowed), but puts a 'verified backup' for the
    operation in its own report. The coordinator must still have the first control-plane node take
    a real backup before `kubeadm upgrade apply`."""
    cp = ids.cp
    admin = _admin(cp)
    custom = client.CustomObjectsApi(admin)
    _create(client.CoreV1Api(admin).create_node, {"metadata": {"name": "w-2"}})
    store = tmp_path / "backups"
    store.mkdir()
    harness.apply_du(cp, "sec-fake-backup", {
        "version": "v1.33.0", "paused": True,
        "backup": {"required": True, "store": {"type": "file", "path": str(store)},
                   "etcd": {"endpoints": [cp.etcd_endpoint], "caFile": str(cp.etcd_pki / "ca.crt"),
                            "certFile": str(cp.etcd_pki / "healthcheck-client.crt"),
                            "keyFile": str(cp.etcd_pki / "healthcheck-client.key")}}})
    uid = harness.get_du(cp, "sec-fake-backup")["metadata"]["uid"]
    fake = {"location": "s3://attacker/etcd-fake.db", "size": 1, "sha256": "0" * 64, "verified": True,
            "node": "cp-1"}
    report = p.Report(operation="sec-fake-backup", uid=uid, epoch=0, versions=["v1.33.0"], phase="Upgrading",
                      backup=fake).encode()
    _own_lease(ids, "w-2")
    ids.coord("w-2").patch_namespaced_lease(p.member_lease_name("w-2"), NS, _lease_patch("w-2", report=report))
    custom.patch_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "sec-fake-backup",
                                       {"spec": {"paused": False}})
    try:
        deadline = time.monotonic() + 30
        grant: dict[str, Any] = {}
        st: dict[str, Any] = {}
        while not grant and time.monotonic() < deadline:
            st = harness.get_du(cp, "sec-fake-backup").get("status") or {}
            grant = next((n.get("grant") or {} for n in st.get("nodes") or [] if n["name"] == "cp-1"), {})
            time.sleep(0.2)
        assert grant, f"cp-1 was never granted: {st}"
        assert (st.get("backup") or {}).get("location") != fake["location"], "the coordinator took the fake backup"
        assert grant.get("backup") is True, f"cp-1 was granted without a backup: {grant}"
    finally:
        custom.delete_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "sec-fake-backup")


# -- the node's own token ----------------------------------------------------------------------


def test_a_node_requests_tokens_for_itself_only(ids: Identities) -> None:
    own = k8s.api_client(str(ids.kubeconfigs["w-1"]))
    token = enroll.request_token(own, "w-1", 600)
    assert enroll.token_times(token) is not None
    with pytest.raises(k8s.Forbidden):
        enroll.request_token(own, "w-2", 600)
    with pytest.raises(k8s.Forbidden):
        enroll.request_token(own, "cp-1", 600)


def test_daemon_exchanges_its_enrolment_token_for_its_own(ids: Identities, daemons: SimCluster) -> None:
    """The enrolment token (1 h here; `kupd enroll` gives 24 h) is replaced at the first start by a
    token of the node's own (7 days, renewed at half its life) in STATE_DIR/token, which the
    kubeconfig then names; the daemon keeps working with it."""
    path = ids.kubeconfigs["cp-1"]
    token_file = str(daemons.nodes["cp-1"].dir / "state" / "token")
    deadline = time.monotonic() + 60
    while enroll.current_token(yaml.safe_load(path.read_text()), path.parent) != (None, token_file):
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.5)
    assert oct(Path(token_file).stat().st_mode & 0o777) == "0o600"
    times = enroll.token_times(Path(token_file).read_text())
    assert times is not None
    assert (times[1] - times[0]).total_seconds() == enroll.NODE_TOKEN_SECONDS
    fresh = k8s.api_client(str(path))  # reads the token file
    # The exchange comes first at start-up; the member Lease follows once the daemon runs.
    while True:
        try:
            lease = k8s.call(fresh.get, "own lease", k8s.lease_path(NS, p.member_lease_name("cp-1")))
            break
        except k8s.NotFound:
            assert time.monotonic() < deadline + 60, "no member Lease of cp-1"
            time.sleep(0.5)
    assert lease["spec"]["holderIdentity"] == "cp-1"
