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


def wait_registered(sim: SimCluster, timeout: float = 60) -> None:
    """Until every simulated node has its Node and its member Lease: a DirectUpdate applied before
    plans without the nodes still starting (which then join mid-rollout)."""
    deadline = time.monotonic() + timeout
    want = set(sim.nodes)
    while time.monotonic() < deadline:
        nodes = json.loads(sim.cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        leases = json.loads(sim.cp.kubectl("-n", NAMESPACE, "get", "leases", "-o", "json").stdout)["items"]
        have_nodes = {n["metadata"]["name"] for n in nodes}
        have_members = {x["metadata"]["name"][len(p.MEMBER_LEASE_PREFIX):] for x in leases
                        if x["metadata"]["name"].startswith(p.MEMBER_LEASE_PREFIX)}
        if want <= have_nodes and want <= have_members:
            return
        time.sleep(0.3)
    raise AssertionError(f"nodes not registered in {timeout}s: {sorted(want)}")


def cleanup(cp: ControlPlane) -> None:
    cp.kubectl("delete", "directupdates", "--all", "--wait=true", check=False)
    cp.kubectl("delete", "nodes", "--all", check=False)
    cp.kubectl("delete", "leases", "-n", "kupd-system", "--all", check=False)
    cp.kubectl("delete", "pods", "-n", "default", "--all", "--grace-period=0", "--force", check=False)
    cp.kubectl("delete", "pdb", "-n", "default", "--all", check=False)


# Phases in which an operation that does not move says why by itself.
EXPLAINED_PHASES = ("Succeeded", "Failed", "RequiresAttention", "Paused", "Pending")


@dataclass
class Monitor:
    """Watches DirectUpdates, Nodes and kupd's Leases and records the worst it ever saw.

    Turns are counted where they really are: a node holds one from the moment its grant Lease
    carries a grant until its member Lease reports that grant Succeeded or Failed, whether or
    not the node is still selected or still exists. The status is the coalesced record of the
    same and is checked too.

    Besides the limits it fails a test on a control-plane turn out at the same moment as a
    worker's, and on a stall: an operation that neither progresses (a grant, a report or its
    record changes) nor says what it waits for (RequiresAttention/Failed/Paused/Pending with a
    message, or Progressing=False with a message) for `stall_seconds`.
    """

    cp: ControlPlane
    stall_seconds: float = 30.0
    max_cp_and_workers: int = 0
    max_cp_granted: int = 0
    max_workers_granted: int = 0
    max_cp_cordoned: int = 0
    max_workers_cordoned: int = 0
    worker_before_cp: list[str] = field(default_factory=list)
    grant_order: list[str] = field(default_factory=list)
    grant_times: dict[str, float] = field(default_factory=dict)
    done_times: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    max_concurrency: int = 1
    """The largest spec.concurrency of any DirectUpdate seen: the worker limit when none is given."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _watches: list[k8s.Watch] = field(default_factory=list)

    def start(self) -> Monitor:
        api = api_for(self.cp)
        for resource, handler in ((k8s.kupd_path(k8s.DIRECTUPDATES), self._on_du),
                                  (k8s.node_path(), self._on_node),
                                  (k8s.lease_path(NAMESPACE),
                                   self._on_lease)):
            threading.Thread(target=self._loop, args=(api, resource, handler), daemon=True).start()
        threading.Thread(target=self._stall_loop, daemon=True).start()
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
                    elif ev["type"] == "DELETED" and handler == self._on_lease:
                        self._on_lease_deleted(ev["object"])
                    elif ev["type"] == "DELETED" and handler == self._on_node:
                        self._cordoned.pop(ev["object"]["metadata"]["name"], None)
            except Exception:
                time.sleep(0.5)  # the API server may be stopped on purpose

    # Operation uid -> (monotonic time of its last progress, name, last status seen).
    _ops: dict[str, tuple[float, str, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # (operation uid, node, grantedAt) of the worker turns already judged against the API servers.
    _judged: set[tuple[str, str, Any]] = field(default_factory=set)

    def _progress(self, uid: str, name: str = "", status: dict[str, Any] | None = None) -> None:
        with self._lock:
            _, old_name, old_status = self._ops.get(uid, (0.0, "", {}))
            self._ops[uid] = (time.monotonic(), name or old_name, status if status is not None else old_status)

    def _on_du(self, obj: dict[str, Any]) -> None:
        concurrency = (obj.get("spec") or {}).get("concurrency", 1)
        if isinstance(concurrency, int):
            self.max_concurrency = max(self.max_concurrency, concurrency)
        status = obj.get("status") or {}
        nodes = status.get("nodes") or []
        cps = [n for n in nodes if n.get("role") == "ControlPlane" and n["phase"] in IN_FLIGHT]
        ws = [n for n in nodes if n.get("role", "Worker") == "Worker" and n["phase"] in IN_FLIGHT]
        self.max_cp_granted = max(self.max_cp_granted, len(cps))
        self.max_workers_granted = max(self.max_workers_granted, len(ws))
        uid, name = obj["metadata"]["uid"], obj["metadata"]["name"]
        # Workers may move between control-plane hops (a multi-minor plan interleaves them to keep
        # the skew policy), but never while a control-plane node is in its turn, and never past the
        # oldest API server when granted. (A control-plane node that joins while workers are in
        # flight, older than their target, is no violation: it waits for them, which the
        # lease-based check below watches.)
        if ws and cps:
            self.worker_before_cp.append(f"{[w['name'] for w in ws]} granted while {[c['name'] for c in cps]} are")
        cp_versions = [v for n, v in self._kubelets.items() if self._member_cp.get(n)]
        new_ws = [w for w in ws if (uid, w["name"], (w.get("grant") or {}).get("grantedAt")) not in self._judged]
        self._judged.update((uid, w["name"], (w.get("grant") or {}).get("grantedAt")) for w in ws)
        for w in new_ws:
            last = ((w.get("grant") or {}).get("versions") or [""])[-1]
            if cp_versions and last and _minor(last) > min(_minor(v) for v in cp_versions):
                self.worker_before_cp.append(f"{w['name']} granted {last} past the API servers {cp_versions}")
        key = _progress_key(status)
        with self._lock:
            seen = self._ops.get(uid)
        if seen is None or _progress_key(seen[2]) != key:
            self._progress(uid, name, status)
        else:
            with self._lock:
                self._ops[uid] = (seen[0], name, status)

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
            if self._grants.get(node) != g:
                self._progress(g.uid)
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
            old = self._reports.get(node)
            if old is None or (old.uid, old.phase, old.step, old.attempts, old.granted_at) != (
                    r.uid, r.phase, r.step, r.attempts, r.granted_at):
                self._progress(r.uid)
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
        cps = [n for n in active if self._grants[n].control_plane]
        ws = [n for n in active if not self._grants[n].control_plane]
        if cps and ws:
            self.violations.append(f"control-plane turn of {cps} out while workers {ws} are in flight")

    def _on_lease_deleted(self, obj: dict[str, Any]) -> None:
        # Deleting a grant Lease is how an operator declares a dead node's turn over (runbook).
        name = obj["metadata"]["name"]
        if name.startswith(p.GRANT_LEASE_PREFIX):
            self._grants.pop(name[len(p.GRANT_LEASE_PREFIX):], None)

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

    def _stall_loop(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            with self._lock:
                ops = list(self._ops.items())
            for _uid, (since, name, status) in ops:
                if not name or now - since < self.stall_seconds or _explained(status):
                    continue
                msg = (f"{name} stalled: no progress for {now - since:.0f}s in phase {status.get('phase')!r} "
                       f"without saying why (message {status.get('message')!r})")
                if msg.split(":")[0] not in {v.split(":")[0] for v in self.violations}:
                    self.violations.append(msg)

    def assert_invariants(self, concurrency: int) -> None:
        self.assert_limits(concurrency)
        self.assert_no_unexplained_cordon()

    def assert_limits(self, concurrency: int | None = None) -> None:
        """Limits, control plane first and no silent stall, as recorded while the monitor ran
        (`concurrency`: the largest spec.concurrency seen when not given)."""
        concurrency = concurrency or self.max_concurrency
        assert self.max_cp_granted <= 1, f"{self.max_cp_granted} control-plane nodes granted at once"
        assert self.max_workers_granted <= concurrency, f"{self.max_workers_granted} workers granted at once"
        assert self.max_cp_cordoned <= 1, f"{self.max_cp_cordoned} control-plane nodes cordoned at once"
        assert self.max_workers_cordoned <= concurrency, f"{self.max_workers_cordoned} workers cordoned at once"
        assert not self.worker_before_cp, self.worker_before_cp[:3]
        assert not self.violations, self.violations[:5]

    def assert_no_unexplained_cordon(self) -> None:
        """Every node kupd cordoned is the node of a turn in flight, or of a failed or lost turn that
        its operation names (RequiresAttention/Failed with a message)."""
        nodes = json.loads(self.cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ops = json.loads(self.cp.kubectl("get", "directupdates", "-o", "json").stdout)["items"]
        reasons: dict[str, str] = {}
        for op in ops:
            st = op.get("status") or {}
            for e in st.get("nodes") or []:
                if e.get("phase") in ("Granted", "Upgrading"):
                    reasons[e["name"]] = f"in flight in {op['metadata']['name']}"
                elif e.get("phase") in ("Failed", "Lost") and st.get("phase") in ("RequiresAttention", "Failed") \
                        and e["name"] in (st.get("message") or ""):
                    reasons[e["name"]] = st["message"]
        for n in nodes:
            name = n["metadata"]["name"]
            if p.ANN_CORDONED_BY in (n["metadata"].get("annotations") or {}) and n["spec"].get("unschedulable"):
                assert name in reasons, f"{name} is left cordoned by kupd and no operation says why"


def _progress_key(status: dict[str, Any]) -> Any:
    return (status.get("phase"), status.get("message"), tuple(
        (e.get("name"), e.get("phase"), e.get("step"), e.get("attempts")) for e in status.get("nodes") or []))


def _explained(status: dict[str, Any]) -> bool:
    """Whether an operation that does not move says what it waits for."""
    if status.get("phase") in EXPLAINED_PHASES and status.get("message"):
        return True
    return any(c.get("type") == "Progressing" and c.get("status") == "False" and c.get("message")
               for c in status.get("conditions") or [])


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major), int(minor)


def effects_once(sc: SimCluster, name: str) -> list[str]:
    """The node's applied effects, asserting none was applied twice."""
    effects: list[str] = sc.nodes[name].state()["effects"]
    dups = {e for e in effects if effects.count(e) > 1}
    assert not dups, f"{name}: effects applied twice: {dups}"
    return effects
