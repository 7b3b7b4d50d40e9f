"""Untrusted input against the real API server: what a node, an annotation, a schedule, a health
gate's server or a backup store can do to the coordinator (issue #16's findings, each numbered as
there), and the admission policies that narrow what a non-coordinator control-plane identity may
write.

The hostile node is played by the test with the worker identity `w-2` from `kupd enroll` (so every
write is one the API server's RBAC and admission policies let a stolen worker credential make);
the coordinator and a worker are real daemons (`cp-1`, `w-1`) with their own identities.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

import kupd
from kupd import k8s, scheduler
from kupd import protocol as p
from kupd.api.conform import conform
from kupd.api.models import DirectUpdateStatus
from kupd.clock import ManualClock
from kupd.scheduler import Scheduler
from kupd.sim.simcluster import SimCluster
from kupd.windows import format_time
from tests.cluster import harness, test_security
from tests.cluster.test_security import NODES, NS, SECRET_NAME, SECRET_NS, Identities, _admin, _refused
from tests.unit import test_conform

# The per-node identities from `kupd enroll`, the RBAC and the admission policies: test_security's fixture.
ids = test_security.ids

# Patch releases only: every test upgrades the daemons' nodes by one patch, so no hop needs resolving.
VERSIONS = [f"v1.31.{i}" for i in range(2, 40)]
HOSTILE = "w-2"
ROLLOUT_SECONDS = 60


def _now(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Fleet:
    """Real daemons on cp-1 and w-1, and the hostile worker w-2 played by the test."""

    def __init__(self, ids: Identities, sim: SimCluster) -> None:
        self.ids = ids
        self.cp = ids.cp
        self.sim = sim
        self.admin = _admin(ids.cp)
        self.custom = client.CustomObjectsApi(self.admin)
        self.core = client.CoreV1Api(self.admin)
        self._patch = 2

    def target(self) -> str:
        """The next patch release: what this test upgrades the daemons' nodes to."""
        self._patch += 1
        return f"v1.31.{self._patch}"

    def current(self) -> str:
        return f"v1.31.{self._patch}"

    # -- the hostile worker -----------------------------------------------------------------
    def hostile_node(self, kubelet: str) -> None:
        """The Node of w-2 as its kubelet (not kupd) reports it: Ready, at `kubelet`."""
        try:
            self.core.create_node({"metadata": {"name": HOSTILE, "labels": {"kubernetes.io/hostname": HOSTILE}}})
        except ApiException as e:
            if e.status != 409:
                raise
        self.core.patch_node_status(HOSTILE, {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok",
                            "lastHeartbeatTime": _now()[:19] + "Z", "lastTransitionTime": _now()[:19] + "Z"}],
            "nodeInfo": {"kubeletVersion": kubelet, "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "",
                         "operatingSystem": "linux", "architecture": "amd64"}}})

    def hostile_lease(self, annotations: dict[str, str]) -> None:
        """w-2 writes its own member Lease (which the policies allow): alive, with `annotations`."""
        # It claims this kupd's version, as a member the preflight accepts does; the hostile parts
        # are `annotations`.
        anns = {p.ANN_BOOT_ID: "b", p.ANN_KUPD_VERSION: kupd.__version__, p.ANN_PACKAGE_MANAGER: "apt",
                p.ANN_CONTROL_PLANE: "false", p.ANN_KUBELET: "v1.31.2", p.ANN_REPORT: ""}
        anns.update(annotations)
        body = {"metadata": {"name": p.member_lease_name(HOSTILE), "namespace": NS, "annotations": anns,
                             "labels": {"app.kubernetes.io/name": "kupd", "kupd.io/node": HOSTILE,
                                        p.LABEL_LEASE_KIND: p.LEASE_KIND_MEMBER}},
                "spec": {"holderIdentity": HOSTILE, "leaseDurationSeconds": 300, "renewTime": _now()}}
        coord = self.ids.coord(HOSTILE)
        try:
            coord.create_namespaced_lease(NS, body)
        except ApiException as e:
            if e.status != 409:
                raise
            coord.patch_namespaced_lease(p.member_lease_name(HOSTILE), NS, body)

    def hostile_grant(self, timeout: float = 30) -> p.Grant:
        """The grant w-2 receives in its own grant Lease (read with its own identity)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                lease = self.ids.coord(HOSTILE).read_namespaced_lease(p.grant_lease_name(HOSTILE), NS)
                g = p.Grant.decode((lease.metadata.annotations or {}).get(p.ANN_GRANT))
                if g is not None:
                    return g
            except ApiException as e:
                if e.status != 404:
                    raise
            time.sleep(0.2)
        raise AssertionError(f"{HOSTILE} was never granted: {json.dumps(self.status_all())[:3000]}")

    def report(self, grant: p.Grant, **fields: Any) -> str:
        """A report on `grant` as JSON, with `fields` overriding (any JSON value, hostile ones too)."""
        data: dict[str, Any] = json.loads(p.Report(operation=grant.operation, uid=grant.uid, epoch=grant.epoch,
                                                   versions=grant.versions, phase="Upgrading", step="drain",
                                                   attempts=1, started_at=_now()[:19] + "Z",
                                                   granted_at=grant.granted_at).encode())
        data.update(fields)
        return json.dumps(data)

    # -- operations -------------------------------------------------------------------------
    def apply(self, name: str, target: str, nodes: list[str], **spec: Any) -> None:
        body = {"version": target, "backup": {"required": False},
                "nodeSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}, **spec}
        harness.apply_du(self.cp, name, body)

    def status(self, name: str) -> dict[str, Any]:
        return harness.get_du(self.cp, name).get("status") or {}

    def status_all(self) -> list[Any]:
        return [(o["metadata"]["name"], o.get("status")) for o in
                self.custom.list_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES)["items"]]

    def wait(self, what: str, check: Callable[[], Any], timeout: float = ROLLOUT_SECONDS) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.3)
        raise AssertionError(f"{what} not seen in {timeout}s; DirectUpdates: {json.dumps(self.status_all())[:4000]}")

    def entry(self, name: str, node: str) -> dict[str, Any]:
        return next((e for e in self.status(name).get("nodes") or [] if e["name"] == node), {})

    def events(self, reason: str) -> list[dict[str, Any]]:
        items = json.loads(self.cp.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
        return [e for e in items if e["reason"] == reason]


@pytest.fixture(scope="module")
def fleet(ids: Identities, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    harness.cleanup(ids.cp)
    sim = SimCluster(ids.cp, tmp_path_factory.mktemp("untrusted"), step_seconds=0.1, available=VERSIONS)
    out = Fleet(ids, sim)
    try:
        for node in ("cp-1", "w-1"):
            sim.add_node(node, control_plane=NODES[node], extra={"kubeconfig": str(ids.kubeconfigs[node])})
        out.wait("the daemons' Nodes", lambda: len(out.core.list_node().items) >= 2)
        yield out
    finally:
        for name in list(sim.nodes):
            sim.kill(name)
        for name, node in sim.nodes.items():
            if node.log.exists():
                print(f"==== {name} daemon log (tail)\n{node.log.read_text(errors='replace')[-6000:]}")


@pytest.fixture
def f(fleet: Fleet) -> Iterator[Fleet]:
    """One test's view of the fleet; its operations and the hostile node are gone afterwards."""
    yield fleet
    fleet.cp.kubectl("delete", "directupdates", "--all", "--wait=true", check=False)
    fleet.cp.kubectl("delete", "lease", "-n", NS, p.member_lease_name(HOSTILE), p.grant_lease_name(HOSTILE),
                     "--ignore-not-found")
    fleet.cp.kubectl("delete", "node", HOSTILE, "--ignore-not-found")


def _succeeded(f: Fleet, name: str) -> Callable[[], bool]:
    return lambda: f.status(name).get("phase") == "Succeeded"


# -- 7. the control-plane policies (before the daemons start: these tests write the coordinator Lease)


def _coordinator_lease(holder: str, renew: str, transitions: int) -> dict[str, Any]:
    return {"metadata": {"name": p.COORDINATOR_LEASE, "namespace": NS},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": renew,
                     "renewTime": renew, "leaseTransitions": transitions}}


@pytest.fixture
def coordinator_lease(ids: Identities) -> Iterator[Callable[[str, str, int], dict[str, Any]]]:
    """A coordinator Lease held by cp-1 (written with its identity), outside the daemons' run."""
    def hold(holder: str, renew: str, transitions: int) -> dict[str, Any]:
        coord = ids.coord(holder)
        body = _coordinator_lease(holder, renew, transitions)
        try:
            cur = coord.read_namespaced_lease(p.COORDINATOR_LEASE, NS)
            body["metadata"]["resourceVersion"] = cur.metadata.resource_version
            out = coord.replace_namespaced_lease(p.COORDINATOR_LEASE, NS, body)
        except ApiException as e:
            if e.status != 404:
                raise
            out = coord.create_namespaced_lease(NS, body)
        return client.ApiClient().sanitize_for_serialization(out)  # type: ignore[no-any-return]

    ids.cp.kubectl("delete", "lease", "-n", NS, p.COORDINATOR_LEASE, "--ignore-not-found")
    yield hold
    ids.cp.kubectl("delete", "lease", "-n", NS, p.COORDINATOR_LEASE, "--ignore-not-found")


def _wait_admitted(fn: Callable[[], Any], timeout: float = 15) -> Any:
    """Policies with a parameter see a new parameter object a moment after it is stored."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_policy_only_the_coordinator_sets_directupdate_owners(
        ids: Identities, coordinator_lease: Callable[..., dict[str, Any]]) -> None:
    coordinator_lease("cp-1", _now(), 3)
    admin = client.CustomObjectsApi(_admin(ids.cp))
    su = admin.create_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.SCHEDULEDUPDATES, {
        "apiVersion": f"{k8s.GROUP}/{k8s.VERSION}", "kind": "ScheduledUpdate", "metadata": {"name": "unt-owner"},
        "spec": {"startTime": "2099-01-01T00:00:00Z", "template": {"version": "v1.31.3"}}})
    real_owner = {"apiVersion": f"{k8s.GROUP}/{k8s.VERSION}", "kind": "ScheduledUpdate", "name": "unt-owner",
                  "uid": su["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False}
    fake_owner = {**real_owner, "name": "made-up", "uid": "00000000-0000-0000-0000-000000000000"}

    def du(name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
        md: dict[str, Any] = {"name": name}
        if owner:
            md["ownerReferences"] = [owner]
        return {"apiVersion": f"{k8s.GROUP}/{k8s.VERSION}", "kind": "DirectUpdate", "metadata": md,
                "spec": {"version": "v1.31.3", "backup": {"required": False}}}

    try:
        # A non-coordinator control-plane identity cannot create an "owned" DirectUpdate at all.
        e = _refused(lambda: ids.custom("cp-2").create_cluster_custom_object(
            k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, du("unt-fake-owned", fake_owner)))
        assert "coordinator" in str(e.body)
        # Nor add an owner to an administrator's DirectUpdate (and then delete it).
        admin.create_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, du("unt-admins", None))
        for who in ("cp-2", "cp-1"):
            e = _refused(lambda who=who: ids.custom(who).patch_cluster_custom_object(  # type: ignore[misc]
                k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "unt-admins",
                {"metadata": {"ownerReferences": [fake_owner]}}))
            assert "owner" in str(e.body)
        _refused(lambda: ids.custom("cp-2").delete_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                          "unt-admins"))
        # The coordinator (the scheduler's identity) creates and deletes children: the positive control.
        _wait_admitted(lambda: ids.custom("cp-1").create_cluster_custom_object(
            k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, du("unt-child", real_owner)))
        e = _refused(lambda: ids.custom("cp-2").delete_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                              "unt-child"))
        assert "coordinator" in str(e.body)
        ids.custom("cp-1").delete_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "unt-child")
    finally:
        ids.cp.kubectl("delete", "directupdates", "unt-admins", "unt-child", "unt-fake-owned", "--ignore-not-found")
        ids.cp.kubectl("delete", "scheduledupdate", "unt-owner", "--ignore-not-found")


def test_policy_a_live_coordinator_cannot_be_replaced(
        ids: Identities, coordinator_lease: Callable[..., dict[str, Any]]) -> None:
    lease = coordinator_lease("cp-1", _now(), 3)
    spec = lease["spec"]
    take = _coordinator_lease("cp-2", _now(), spec["leaseTransitions"] + 1)
    take["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
    e = _refused(lambda: ids.coord("cp-2").replace_namespaced_lease(p.COORDINATOR_LEASE, NS, take))
    assert "expired" in str(e.body)
    # Once the holder stopped renewing for a whole lease duration, a takeover is admitted.
    lease = coordinator_lease("cp-1", _now(-60), 3)
    take = _coordinator_lease("cp-2", _now(), 4)
    take["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
    ids.coord("cp-2").replace_namespaced_lease(p.COORDINATOR_LEASE, NS, take)


def test_policy_lease_transitions_only_increase(
        ids: Identities, coordinator_lease: Callable[..., dict[str, Any]]) -> None:
    lease = coordinator_lease("cp-1", _now(), 7)
    # The holder itself cannot reset the epoch fence while renewing...
    renew = _coordinator_lease("cp-1", _now(), 0)
    renew["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
    e = _refused(lambda: ids.coord("cp-1").replace_namespaced_lease(p.COORDINATOR_LEASE, NS, renew))
    assert "leaseTransitions" in str(e.body)
    # ...nor can a successor of an expired holder take over without counting a new epoch.
    lease = coordinator_lease("cp-1", _now(-60), 7)
    for transitions in (0, 7):
        take = _coordinator_lease("cp-2", _now(), transitions)
        take["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        e = _refused(lambda take=take: ids.coord("cp-2").replace_namespaced_lease(  # type: ignore[misc]
            p.COORDINATOR_LEASE, NS, take))
        assert "leaseTransitions" in str(e.body)
    take = _coordinator_lease("cp-2", _now(), 8)
    take["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
    ids.coord("cp-2").replace_namespaced_lease(p.COORDINATOR_LEASE, NS, take)


# -- 4. one ScheduledUpdate cannot stop the scheduler (before the daemons start: theirs would race)


def test_a_scheduled_update_out_of_range_is_contained_to_itself(ids: Identities) -> None:
    """startTime 9999-12-31T23:59:59-01:00 passes the schema but is beyond year 9999 in UTC. The
    scheduler, as the coordinator's own identity, still fires the others and says why on that one."""
    def path(plural: str, name: str | None = None) -> str:
        return k8s.kupd_path(plural, name)

    api = k8s.api_client(str(ids.kubeconfigs["cp-1"]))
    admin = harness.api_for(ids.cp)
    now = datetime.now(UTC).replace(microsecond=0)
    good = {"startTime": format_time(now - timedelta(minutes=1)),
            "template": {"version": "v1.31.3", "backup": {"required": False},
                         "nodeSelector": {"matchLabels": {"kupd.io/none": "x"}}}}
    bad = {**good, "startTime": "9999-12-31T23:59:59-01:00"}
    try:
        for name, spec in (("unt-a-bad", bad), ("unt-b-good", good)):
            admin.create(path(k8s.SCHEDULEDUPDATES), {"apiVersion": f"{k8s.GROUP}/{k8s.VERSION}",
                                                    "kind": "ScheduledUpdate", "metadata": {"name": name},
                                                    "spec": spec})
        Scheduler(api, ManualClock(now), lambda minor: minor + ".0").reconcile()
        assert admin.get(path(k8s.DIRECTUPDATES, "unt-b-good"))["metadata"]["name"] == "unt-b-good"
        st = admin.get(path(k8s.SCHEDULEDUPDATES, "unt-a-bad")).get("status") or {}
        valid = next(c for c in st.get("conditions") or [] if c["type"] == "Valid")
        assert valid["status"] == "False" and "spec.startTime" in valid["message"], st
    finally:
        for name in ("unt-a-bad", "unt-b-good"):
            ids.cp.kubectl("delete", "scheduledupdate,directupdate", name, "--ignore-not-found")
        api.close()


def test_a_crash_in_one_schedules_evaluation_is_contained_to_it(ids: Identities,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever kupd cannot foresee: evaluating one object raises. That object gets a Condition
    saying so; the others of the same pass still fire."""
    def path(plural: str, name: str | None = None) -> str:
        return k8s.kupd_path(plural, name)

    real = scheduler.decide_scheduled_update

    def decide(obj: dict[str, Any], child: Any, now: datetime) -> Any:
        if obj["metadata"]["name"] == "unt-a-crash":
            raise KeyError("something kupd did not foresee")
        return real(obj, child, now)

    monkeypatch.setattr(scheduler, "decide_scheduled_update", decide)
    api = k8s.api_client(str(ids.kubeconfigs["cp-1"]))
    admin = harness.api_for(ids.cp)
    now = datetime.now(UTC).replace(microsecond=0)
    spec = {"startTime": format_time(now - timedelta(minutes=1)),
            "template": {"version": "v1.31.3", "backup": {"required": False},
                         "nodeSelector": {"matchLabels": {"kupd.io/none": "x"}}}}
    try:
        for name in ("unt-a-crash", "unt-b-fires"):
            admin.create(path(k8s.SCHEDULEDUPDATES), {"apiVersion": f"{k8s.GROUP}/{k8s.VERSION}",
                                                    "kind": "ScheduledUpdate", "metadata": {"name": name},
                                                    "spec": spec})
        Scheduler(api, ManualClock(now), lambda minor: minor + ".0").reconcile()
        assert admin.get(path(k8s.DIRECTUPDATES, "unt-b-fires"))["metadata"]["name"] == "unt-b-fires"
        st = admin.get(path(k8s.SCHEDULEDUPDATES, "unt-a-crash")).get("status") or {}
        valid = next(c for c in st.get("conditions") or [] if c["type"] == "Valid")
        assert valid["status"] == "False" and valid["reason"] == "EvaluationFailed", st
        assert "something kupd did not foresee" in valid["message"]
    finally:
        for name in ("unt-a-crash", "unt-b-fires"):
            ids.cp.kubectl("delete", "scheduledupdate,directupdate", name, "--ignore-not-found")
        api.close()


# -- status valid by construction, checked by the API server itself ----------------------------------


def test_a_conformed_status_is_accepted_by_the_api_server_whatever_its_values(ids: Identities) -> None:
    """For every field of the DirectUpdate status, values beyond its bounds or of another type are
    refused by the API server as they are, and accepted once kupd.api.conform fitted them."""
    custom = client.CustomObjectsApi(_admin(ids.cp))
    du = custom.create_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, {
        "apiVersion": f"{k8s.GROUP}/{k8s.VERSION}", "kind": "DirectUpdate", "metadata": {"name": "unt-conform"},
        "spec": {"version": "v1.31.3", "paused": True, "backup": {"required": False}}})
    refused = written = 0
    try:
        for path, schema in test_conform.LEAVES:
            for value in test_conform._hostile(schema):
                status = copy.deepcopy(test_conform.VALID)
                test_conform._set(status, path, value)
                du["status"] = status
                try:
                    du = custom.replace_cluster_custom_object_status(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                     "unt-conform", du)
                except ApiException as e:
                    assert e.status == 422, e.body
                    refused += 1
                du["status"] = conform(DirectUpdateStatus, status)
                du = custom.replace_cluster_custom_object_status(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES,
                                                                 "unt-conform", du)
                written += 1
    finally:
        custom.delete_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "unt-conform")
    assert refused > 100 and written == sum(len(test_conform._hostile(s)) for _, s in test_conform.LEAVES)


# -- 1. a worker's own member Lease must not stop other nodes' rollouts --------------------------

NESTED = "[" * 50_000


@pytest.mark.parametrize("annotations", [
    {p.ANN_KUBELET: "junk"},
    {p.ANN_REPORT: NESTED},
    {p.ANN_KUBELET: "v1.31.2" + "9" * 5000},
    {p.ANN_REPORT: json.dumps({"uid": {"a": 1}, "versions": "v1.31.3", "phase": ["x"], "epoch": "1"})},
], ids=["junk-kubelet-version", "nested-report", "huge-kubelet-version", "mistyped-report"])
def test_a_hostile_member_lease_does_not_stop_a_rollout_that_does_not_select_it(
        f: Fleet, annotations: dict[str, str]) -> None:
    f.hostile_node("v1.31.2")
    f.hostile_lease(annotations)
    target = f.target()
    f.apply("unt-other", target, ["cp-1", "w-1"])
    f.wait("the rollout of cp-1 and w-1", _succeeded(f, "unt-other"))


def test_a_hostile_report_of_a_granted_node_is_that_nodes_fact_only(f: Fleet) -> None:
    """w-2 is granted, then reports `message: 12345`: the round goes on, w-1 finishes, and w-2's
    entry and a Warning Event name the invalid field."""
    f.hostile_node("v1.31.2")
    f.hostile_lease({})
    target = f.target()
    f.apply("unt-inflight", target, ["cp-1", "w-1", HOSTILE], concurrency=2)
    grant = f.hostile_grant()
    f.hostile_lease({p.ANN_REPORT: f.report(grant, message=12345)})
    f.wait("w-1 recorded Succeeded", lambda: f.entry("unt-inflight", "w-1").get("phase") == "Succeeded")
    e = f.wait("w-2's invalid report in its entry",
               lambda: "invalid report" in (x := f.entry("unt-inflight", HOSTILE)).get("message", "") and x)
    assert "message" in e["message"], e
    assert e["phase"] in ("Granted", "Upgrading"), e  # it still holds its slot: the node may be working
    events = f.wait("a Warning Event about w-2", lambda: [
        ev for ev in f.events("InvalidReport") if HOSTILE in ev["message"] and ev["type"] == "Warning"])
    assert "message" in events[0]["message"]


# -- 2. report fields are normalised before they reach status -----------------------------------


@pytest.mark.parametrize("fields", [{"attempts": 1000}, {"finished_at": "not-a-time", "phase": "Failed"},
                                    {"started_at": "x" * 100, "step": "s" * 5000}],
                         ids=["attempts-1000", "finished-not-a-time", "long-step"])
def test_report_fields_out_of_schema_do_not_stop_status_writes(f: Fleet, fields: dict[str, Any]) -> None:
    f.hostile_node("v1.31.2")
    f.hostile_lease({})
    target = f.target()
    f.apply("unt-fields", target, ["cp-1", "w-1", HOSTILE], concurrency=2)
    grant = f.hostile_grant()
    f.hostile_lease({p.ANN_REPORT: f.report(grant, **fields)})
    f.wait("w-1 recorded Succeeded", lambda: f.entry("unt-fields", "w-1").get("phase") == "Succeeded")
    e = f.wait("w-2's entry naming the bad field",
               lambda: "invalid report" in (x := f.entry("unt-fields", HOSTILE)).get("message", "") and x)
    assert any(k.split("_")[0] in e["message"] for k in fields if k != "phase"), e


# -- 3. a worker cannot fake its success ----------------------------------------------------------


def test_a_worker_claiming_success_its_node_does_not_show_fails_verify(f: Fleet) -> None:
    f.hostile_node("v1.31.2")
    f.hostile_lease({})
    target = f.target()
    f.apply("unt-fake", target, ["cp-1", HOSTILE])
    grant = f.hostile_grant()
    # The member claims the target; the Node (written by the kubelet, not kupd) still says v1.31.2.
    claim = {p.ANN_KUBELET: target, p.ANN_REPORT: f.report(
        grant, phase="Succeeded", step="uncordon", finished_at=_now()[:19] + "Z")}

    def judged() -> dict[str, Any] | bool:
        # A live member renews: the claim is kept fresh so that liveness (judged by the coordinator's
        # own observation of Lease changes) is not what ends the turn.
        f.hostile_lease(claim)
        x = f.entry("unt-fake", HOSTILE)
        return x.get("phase") in ("Succeeded", "Failed") and x

    e = f.wait("w-2's claimed success judged", judged)
    assert e["phase"] == "Failed", e
    assert "v1.31.2" in e["message"] and target in e["message"], e


def test_a_grant_record_that_is_not_a_grant_holds_back_its_node_alone(f: Fleet) -> None:
    """A status kupd did not write (by hand, or by an older kupd): a grant recorded without
    grantedAt, which the CRD allows. That node's turn is not delivered and the operation says so,
    naming the node and the field, in a Condition and a Warning Event; the coordinator goes on (the
    next operation runs once this one is deleted)."""
    f.apply("unt-eval", f.target(), ["cp-1", "w-1"], paused=True)
    f.wait("the coordinator's first status", lambda: f.status("unt-eval").get("coordinator"))
    entry = {"name": "w-1", "role": "Worker", "phase": "Granted", "attempts": 0,
             "grant": {"epoch": 0, "versions": [f.current()]}}
    f.custom.patch_cluster_custom_object_status(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "unt-eval",
                                                {"status": {"nodes": [entry]}})

    def condition() -> dict[str, Any] | None:
        conds = f.status("unt-eval").get("conditions") or []
        return next((c for c in conds if c.get("reason") == "InvalidGrant"), None)

    c = f.wait("the InvalidGrant Condition", condition)
    assert c["type"] == "RequiresAttention" and c["status"] == "True", c
    assert "w-1" in c["message"] and "grant.grantedAt" in c["message"], c
    f.wait("a Warning Event", lambda: [e for e in f.events("InvalidGrant") if e["type"] == "Warning"])
    lease = f.cp.kubectl("get", "lease", "-n", NS, p.grant_lease_name("w-1"), "-o", "json", check=False)
    assert lease.returncode != 0 or not p.grant_value(json.loads(lease.stdout)), "an invalid record was delivered"
    f.cp.kubectl("delete", "directupdate", "unt-eval")
    f.apply("unt-after-eval", f.target(), ["cp-1", "w-1"])
    f.wait("the next rollout", _succeeded(f, "unt-after-eval"))


# -- 5. a malformed window annotation is a Condition -----------------------------------------------


@pytest.mark.parametrize("window", [{p.ANN_WINDOW_START: "not-a-time"},
                                    {p.ANN_WINDOW_END: "9999-12-31T23:59:59-01:00"},
                                    {p.ANN_WINDOW_START: "2030-01-01T00:00:00"}],
                         ids=["garbage", "out-of-range", "no-offset"])
def test_a_malformed_window_annotation_is_a_condition_not_a_crash(f: Fleet, window: dict[str, str]) -> None:
    target = f.target()
    f.apply("unt-window", target, ["cp-1", "w-1"])
    # The scheduler's identity (any control-plane node) may move windows; here a bad one.
    f.ids.custom("cp-2").patch_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "unt-window",
                                                     {"metadata": {"annotations": window}})
    key = next(iter(window))

    def condition() -> dict[str, Any] | None:
        conds = f.status("unt-window").get("conditions") or []
        return next((c for c in conds if c.get("reason") == "InvalidWindow"), None)

    c = f.wait("a Condition naming the bad annotation", condition)
    assert key in c["message"], c
    # The annotation fixed, the operation goes on.
    f.custom.patch_cluster_custom_object(k8s.GROUP, k8s.VERSION, k8s.DIRECTUPDATES, "unt-window",
                                         {"metadata": {"annotations": {key: None}}})
    f.wait("the rollout after the fix", _succeeded(f, "unt-window"))


# -- 6. a Prometheus that never answers does not stall coordination -------------------------------


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A local socket that accepts connections and never replies."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


def test_a_prometheus_that_never_answers_does_not_delay_grants(f: Fleet, silent_server: str) -> None:
    target = f.target()
    gates = {"prometheus": {"url": silent_server, "timeoutSeconds": 30,
                            "queries": [{"name": "silent", "query": "up", "expect": "NonEmpty"}]}}
    started = time.monotonic()
    f.apply("unt-gate", target, ["cp-1", "w-1"], healthGates=gates)
    f.wait("cp-1 granted", lambda: f.entry("unt-gate", "cp-1").get("grant"), timeout=60)
    granted = time.monotonic() - started
    assert granted < 10, f"the first grant took {granted:.1f}s behind a silent gate"

    def gate() -> dict[str, Any] | None:
        conds = f.status("unt-gate").get("conditions") or []
        return next((c for c in conds if c["type"] == "HealthGates" and c["status"] == "False"), None)

    # cp-1 finishes; the gate that does not answer counts as failing, and says so.
    c = f.wait("the failing gate", gate, timeout=60)
    assert "silent" in c["message"] and "answer" in c["message"], c
    assert f.entry("unt-gate", "w-1").get("phase") == "Pending"


# -- 8. transformed secrets in a store's answer are redacted ---------------------------------------

# Characters that URL-encoding and base64 both change, so every transformation differs from the value.
SECRET = "kupd/Canary+7e1f=Sec ret:9b2c?x"


def _transforms(value: str) -> dict[str, str]:
    raw = value.encode()
    return {"plain": value, "base64": base64.b64encode(raw).decode(), "url": urllib.parse.quote(value, safe=""),
            "upper": value.upper(), "lower": value.lower(), "url-plus": urllib.parse.quote_plus(value),
            "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("=")}


@pytest.fixture
def echoing_store() -> Iterator[str]:
    """An S3 endpoint that refuses every request with an error echoing the secret, transformed."""
    body = ("<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidArgument</Code><Message>"
            + " ".join(f"{k}={v}" for k, v in _transforms(SECRET).items())
            + "</Message><RequestId>1</RequestId></Error>").encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(400)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_store_echoing_transformed_secrets_leaks_none_of_them(f: Fleet, echoing_store: str) -> None:
    cp = f.cp
    original = f.core.read_namespaced_secret(SECRET_NAME, SECRET_NS).data
    f.core.patch_namespaced_secret(SECRET_NAME, SECRET_NS, {"data": {
        "secretAccessKey": base64.b64encode(SECRET.encode()).decode()}})
    try:
        f.apply("unt-store", f.target(), ["cp-1"], maxAttempts=1, backup={
            "required": True,
            "store": {"type": "s3", "bucket": "kupd-backups", "endpoint": echoing_store,
                      "credentialsSecret": {"namespace": SECRET_NS, "name": SECRET_NAME}},
            "etcd": {"endpoints": [cp.etcd_endpoint], "caFile": str(cp.etcd_pki / "ca.crt"),
                     "certFile": str(cp.etcd_pki / "healthcheck-client.crt"),
                     "keyFile": str(cp.etcd_pki / "healthcheck-client.key")}})
        st = f.wait("the backup's failure", lambda: (s := f.status("unt-store")).get("phase") in (
            "Failed", "RequiresAttention") and s)
        assert "InvalidArgument" in json.dumps(st), st  # the store's answer did reach the status
        everything = {
            **{f"daemon log of {k}": n.log.read_text(errors="replace") for k, n in f.sim.nodes.items()},
            "DirectUpdates": cp.kubectl("get", "directupdates", "-o", "json").stdout,
            "Events": cp.kubectl("get", "events", "-A", "-o", "json").stdout,
            "Leases": cp.kubectl("get", "leases", "-n", NS, "-o", "json").stdout,
            "state files": "".join(p_.read_text(errors="replace") for n in f.sim.nodes.values()
                                   for p_ in n.dir.rglob("*.json") if p_.is_file()),
        }
        for where, text in everything.items():
            for how, value in _transforms(SECRET).items():
                assert value not in text, f"the backup secret ({how}) leaked into the {where}"
    finally:
        f.core.patch_namespaced_secret(SECRET_NAME, SECRET_NS, {"data": original})



def test_a_takeover_of_a_live_coordinator_is_detected_and_undone(f: Fleet) -> None:
    """Admission cannot know the time: a control-plane identity that claims a time ahead of the real
    one takes the coordinator Lease from its live holder. The holder detects it (its own renewal was
    still valid), and takes the Lease back once the taker does not renew, at the next epoch."""
    coord = f.ids.coord("cp-2")

    def holder() -> Any:
        lease = client.CoordinationV1Api(f.admin).read_namespaced_lease(p.COORDINATOR_LEASE, NS)
        return lease if lease.spec.holder_identity == "cp-1" else None

    deadline = time.monotonic() + 30
    while True:
        lease = f.wait("cp-1 coordinating", holder)
        spec = lease.spec
        lie = spec.renew_time + timedelta(seconds=spec.lease_duration_seconds, milliseconds=10)
        body = {"metadata": {"name": p.COORDINATOR_LEASE, "namespace": NS,
                             "resourceVersion": lease.metadata.resource_version},
                "spec": {"holderIdentity": "cp-2", "leaseDurationSeconds": spec.lease_duration_seconds,
                         "acquireTime": lie.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                         "renewTime": lie.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                         "leaseTransitions": spec.lease_transitions + 1}}
        try:
            coord.replace_namespaced_lease(p.COORDINATOR_LEASE, NS, body)
            break
        except ApiException as e:
            if e.status != 409 or time.monotonic() > deadline:  # 409: cp-1 renewed meanwhile
                raise
    epoch = spec.lease_transitions + 1
    log = f.sim.nodes["cp-1"].log
    f.wait("cp-1 detecting the takeover", lambda: "taken from this live holder by 'cp-2'" in log.read_text())
    back = f.wait("cp-1 coordinating again", lambda: (x := holder()) and x.spec.lease_transitions > epoch and x)
    assert back.spec.lease_transitions == epoch + 1
    f.apply("unt-after-takeover", f.target(), ["cp-1", "w-1"])
    f.wait("a rollout after the takeover", _succeeded(f, "unt-after-takeover"))


def test_a_frozen_coordinator_is_fenced_at_the_api_server_and_steps_down(f: Fleet) -> None:
    """A coordinator frozen (SIGSTOP) longer than its Lease, mid-rollout, with the per-node
    identities and the admission policies on: a second control-plane daemon takes over at the next
    epoch; every write the frozen one could still make with its own credential and its old term
    (status, grant) is refused by the API server; resumed, it steps down, and the rollout ends
    within the limits."""
    f.sim.add_node("cp-2", control_plane=True, extra={"kubeconfig": str(f.ids.kubeconfigs["cp-2"])})
    coordination = client.CoordinationV1Api(f.admin)

    def lease() -> Any:
        return coordination.read_namespaced_lease(p.COORDINATOR_LEASE, NS).spec

    f.wait("cp-1 coordinating", lambda: lease().holder_identity == "cp-1")
    f.wait("cp-2's member", lambda: any(x.metadata.name == p.member_lease_name("cp-2")
                                        for x in coordination.list_namespaced_lease(NS).items))
    f.sim.nodes["w-1"].faults({"hang": {"kubelet-package": 20}})
    mon = harness.Monitor(f.cp).start()
    proc = f.sim.nodes["cp-1"].proc
    assert proc is not None
    try:
        f.apply("unt-frozen", f.target(), ["cp-1", "cp-2", "w-1"])
        f.wait("w-1 upgrading", lambda: f.entry("unt-frozen", "w-1").get("phase") == "Upgrading")
        old = lease()
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            taken = f.wait("cp-2 taking over", lambda: (x := lease()).holder_identity == "cp-2" and x)
            assert taken.lease_transitions == old.lease_transitions + 1
            # cp-1's own credential, its old term: refused by the API server, not only by the daemon.
            api = k8s.api_client(str(f.ids.kubeconfigs["cp-1"]))
            obj = api.get(k8s.kupd_path(k8s.DIRECTUPDATES, "unt-frozen"))
            obj["status"] = dict(obj.get("status") or {}, coordinator="cp-1", epoch=old.lease_transitions,
                                 message="written by a deposed coordinator")
            with pytest.raises(k8s.ApiError) as refused:
                api.replace(k8s.kupd_path(k8s.DIRECTUPDATES, "unt-frozen", subresource="status"), obj)
            assert refused.value.status in (403, 422), refused.value
            grant = {"metadata": {"annotations": {p.ANN_GRANT: "", p.ANN_EPOCH: str(old.lease_transitions)}}}
            with pytest.raises(k8s.ApiError) as refused:
                api.patch(k8s.lease_path(NS, p.grant_lease_name("w-1")), grant)
            assert refused.value.status in (403, 422), refused.value
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        f.wait("the rollout", _succeeded(f, "unt-frozen"), timeout=120)
        assert lease().holder_identity == "cp-2", "the resumed coordinator took the Lease back from a live holder"
    finally:
        mon.stop()
        f.sim.kill("cp-2")
        f.cp.kubectl("delete", "lease", "-n", NS, p.member_lease_name("cp-2"), p.grant_lease_name("cp-2"),
                     "--ignore-not-found")
        f.cp.kubectl("delete", "node", "cp-2", "--ignore-not-found")
    mon.assert_invariants(concurrency=1)
    st = f.status("unt-frozen")
    assert st["coordinator"] == "cp-2" and "deposed" not in st.get("message", ""), st
