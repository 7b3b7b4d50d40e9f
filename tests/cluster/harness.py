"""Helpers for the rollout tests: simulated nodes on the real control plane and an invariant
monitor that watches the API (not the logs) for the rules of the design brief."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kupd import k8s
from kupd import protocol as p
from kupd.sim.devcluster import ControlPlane
from kupd.sim.simcluster import SimCluster

NAMESPACE = "kupd-system"

IN_FLIGHT = ("Granted", "Upgrading", "Lost")


def api_for(cp: ControlPlane) -> k8s.Client:
    return k8s.api_client(str(cp.admin_kubeconfig))


def apply_du(cp: ControlPlane, name: str, spec: dict[str, Any]) -> None:
    obj = {"apiVersion": "kupd.io/v1alpha1", "kind": "DirectUpdate", "metadata": {"name": name}, "spec": spec}
    cp.kubectl("apply", "-f", "-", input_text=json.dumps(obj))


def get_du(cp: ControlPlane, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cp.kubectl("get", "directupdate", name, "-o", "json").stdout)
    return out


def wait_phase(cp: ControlPlane, name: str, phases: tuple[str, ...], timeout: float = 180,
               tick: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            st = get_du(cp, name).get("status") or {}
        except Exception:  # the API may be away on purpose
            st = st or {}
        if tick:
            tick(st)
        if st.get("phase") in phases:
            return st
        time.sleep(0.5)
    raise AssertionError(f"{name} did not reach {phases} in {timeout}s; last status: {json.dumps(st)[:3000]}")


def wait_members(cp: ControlPlane, names: list[str], timeout: float = 60) -> None:
    """Until every named node's kupd member Lease exists: a DirectUpdate applied before a node's
    daemon has registered plans without that node, as it would on a real cluster."""
    deadline = time.monotonic() + timeout
    want = {p.member_lease_name(n) for n in names}
    while time.monotonic() < deadline:
        out = cp.kubectl("get", "leases", "-n", NAMESPACE, "-o", "name", check=False).stdout
        if want <= {line.rsplit("/", 1)[-1] for line in out.split()}:
            return
        time.sleep(0.3)
    raise AssertionError(f"member Leases of {names} not there after {timeout}s")


def cleanup(cp: ControlPlane) -> None:
    cp.kubectl("delete", "directupdates", "--all", "--wait=true", check=False)
    cp.kubectl("delete", "nodes", "--all", check=False)
    cp.kubectl("delete", "leases", "-n", "kupd-system", "--all", check=False)
    cp.kubectl("delete", "pods", "-n", "default", "--all", "--grace-period=0", "--force", check=False)
    cp.kubectl("delete", "pdb", "-n", "default", "--all", check=False)


@dataclass
class Monitor:
    """Watches DirectUpdates, Nodes and kupd's Leases and records the worst it ever saw.

    Turns are counted where they really are: a node holds one from the moment its grant Lease
    carries a grant until its member Lease reports that grant Succeeded or Failed. The status
    is the coalesced record of the same and is checked too.
    """

    cp: ControlPlane
    max_cp_granted: int = 0
    max_workers_granted: int = 0
    max_cp_cordoned: int = 0
    max_workers_cordoned: int = 0
    worker_before_cp: list[str] = field(default_factory=list)
    grant_order: list[str] = field(default_factory=list)
    grant_times: dict[str, float] = field(default_factory=dict)
    done_times: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watches: list[k8s.Watch] = field(default_factory=list)

    def start(self) -> Monitor:
        api = api_for(self.cp)
        for resource, handler in ((k8s.kupd_path(k8s.DIRECTUPDATES), self._on_du),
                                  (k8s.node_path(), self._on_node),
                                  (k8s.lease_path(NAMESPACE),
                                   self._on_lease)):
            threading.Thread(target=self._loop, args=(api, resource, handler), daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in self._watches:
            w.close()

    def _loop(self, api: k8s.Client, resource: str, handler: Callable[[dict[str, Any]], None]) -> None:
        # A watch without a resourceVersion starts with an ADDED event per existing object.
        while not self._stop.is_set():
            try:
                w = api.watch(resource, timeout_seconds=30)
                self._watches.append(w)
                for ev in w:
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        handler(ev["object"])
            except Exception:
                time.sleep(0.5)  # the API server may be stopped on purpose

    def _on_du(self, obj: dict[str, Any]) -> None:
        nodes = (obj.get("status") or {}).get("nodes") or []
        cps = [n for n in nodes if n.get("role") == "ControlPlane" and n["phase"] in IN_FLIGHT]
        ws = [n for n in nodes if n.get("role", "Worker") == "Worker" and n["phase"] in IN_FLIGHT]
        self.max_cp_granted = max(self.max_cp_granted, len(cps))
        self.max_workers_granted = max(self.max_workers_granted, len(ws))
        # Workers may move between control-plane hops (a multi-minor plan interleaves them to keep
        # the skew policy), but never while a control-plane node is in its turn, and never past the
        # oldest API server.
        if ws and cps:
            self.worker_before_cp.append(f"{[w['name'] for w in ws]} granted while {[c['name'] for c in cps]} are")
        cp_versions = [v for n, v in self._kubelets.items() if self._member_cp.get(n)]
        for w in ws:
            last = ((w.get("grant") or {}).get("versions") or [""])[-1]
            if cp_versions and last and _minor(last) > min(_minor(v) for v in cp_versions):
                self.worker_before_cp.append(f"{w['name']} granted {last} past the API servers {cp_versions}")

    _kubelets: dict[str, str] = field(default_factory=dict)
    _member_cp: dict[str, bool] = field(default_factory=dict)
    _grants: dict[str, p.Grant] = field(default_factory=dict)
    _reports: dict[str, p.Report] = field(default_factory=dict)

    def _on_lease(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        anns = obj["metadata"].get("annotations") or {}
        now = time.monotonic()
        if name.startswith(p.GRANT_LEASE_PREFIX):
            node = name[len(p.GRANT_LEASE_PREFIX):]
            g = p.Grant.decode(anns.get(p.ANN_GRANT))
            if g is None:
                self._grants.pop(node, None)
                return
            self._grants[node] = g
            if node not in self.grant_times:
                self.grant_times[node] = now
                self.grant_order.append(node)
        elif name.startswith(p.MEMBER_LEASE_PREFIX):
            node = name[len(p.MEMBER_LEASE_PREFIX):]
            if anns.get(p.ANN_KUBELET):
                self._kubelets[node] = anns[p.ANN_KUBELET]
                self._member_cp[node] = anns.get(p.ANN_CONTROL_PLANE) == "true"
            r = p.Report.decode(anns.get(p.ANN_REPORT))
            if r is None:
                return
            self._reports[node] = r
            if r.phase == "Succeeded" and node in self.grant_times and node not in self.done_times:
                self.done_times[node] = now
        else:
            return
        active = [n for n, g in self._grants.items()
                  if not ((r := self._reports.get(n)) and r.granted_at == g.granted_at
                          and r.phase in ("Succeeded", "Failed"))]
        self.max_cp_granted = max(self.max_cp_granted, sum(1 for n in active if self._grants[n].control_plane))
        self.max_workers_granted = max(self.max_workers_granted,
                                       sum(1 for n in active if not self._grants[n].control_plane))

    _cordoned: dict[str, bool] = field(default_factory=dict)
    _roles: dict[str, bool] = field(default_factory=dict)

    def _on_node(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self._roles[name] = p.LABEL_CONTROL_PLANE in (obj["metadata"].get("labels") or {})
        self._cordoned[name] = bool((obj.get("spec") or {}).get("unschedulable"))
        cps = sum(1 for n, c in self._cordoned.items() if c and self._roles.get(n))
        ws = sum(1 for n, c in self._cordoned.items() if c and not self._roles.get(n))
        self.max_cp_cordoned = max(self.max_cp_cordoned, cps)
        self.max_workers_cordoned = max(self.max_workers_cordoned, ws)

    def assert_invariants(self, concurrency: int) -> None:
        assert self.max_cp_granted <= 1, f"{self.max_cp_granted} control-plane nodes granted at once"
        assert self.max_workers_granted <= concurrency, f"{self.max_workers_granted} workers granted at once"
        assert self.max_cp_cordoned <= 1, f"{self.max_cp_cordoned} control-plane nodes cordoned at once"
        assert self.max_workers_cordoned <= concurrency, f"{self.max_workers_cordoned} workers cordoned at once"
        assert not self.worker_before_cp, self.worker_before_cp[:3]


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor)


def effects_once(sc: SimCluster, name: str) -> list[str]:
    """The node's applied effects, asserting none was applied twice."""
    effects: list[str] = sc.nodes[name].state()["effects"]
    dups = {e for e in effects if effects.count(e) > 1}
    assert not dups, f"{name}: effects applied twice: {dups}"
    return effects
