"""Many nodes' agent + member + simulated host in ONE process, without a thread per node.

What is shared and what is per node:
- one informer over the grant Leases (kupd.k8s.Informer) offers each agent its own grant, as
  each daemon's watch of `kupd-grant-<node>` would; one DirectUpdate informer only records when
  the status showed what (agents never read the DirectUpdate);
- one renewal scheduler (a heap and a small thread pool) renews every member Lease on its
  period with the real `Member.renew()` (one merge-patch), and at once when an agent's report
  changes, as the daemon's member thread does after a poke;
- per node: the real `Agent` (its step sequence, its calls through the real `NodeOps`: cordon,
  drain, wait-ready, uncordon), the real `Member`, and a simulated host that keeps its state in
  memory and sets its Node's kubeletVersion when it restarts the kubelet (what the single-node
  SimKubelet does; bench nodes run no pods, so there is no per-node pod watch).

An agent thread exists only while its node holds a grant, so threads are bounded by the
rollout's concurrency plus the renewal pool.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kupd import k8s
from kupd import protocol as p
from kupd.agent import Agent
from kupd.checkpoint import Checkpoint, CheckpointStore
from kupd.member import Member
from kupd.nodeops import NodeOps
from kupd.rfc3339 import parse_or_none
from kupd.sim.simulated import SimulatedHost
from kupd.versions import Version

log = logging.getLogger(__name__)


def api_client(kubeconfig: str | Path, pool: int = 64) -> k8s.Client:
    """kupd's client, with a connection pool big enough for many threads: urllib3 would otherwise
    discard connections beyond the pool's size and reconnect (a TLS handshake per request)."""
    return k8s.Client.from_kubeconfig(str(kubeconfig), timeout=30.0, pool_size=pool)


class MemoryHost(SimulatedHost):
    """The simulated host with its state in memory (no state file, no fault file).

    Step durations and effects are those of SimulatedHost; `on_kubelet(version)` is called when
    the kubelet restarts at a new version, as the Node's kubelet would post its new status.
    """

    def __init__(self, step_seconds: float, initial_version: str, available: list[str],
                 on_kubelet: Callable[[str], None]) -> None:
        # Not SimulatedHost.__init__: it would create a state file.
        self.path = Path("/nonexistent/bench-host.json")
        self.faults_path = Path("/nonexistent/bench-host.json.faults.json")
        self.step_seconds = step_seconds
        self.available = sorted({Version.parse(v) for v in available})
        self._lock = threading.Lock()
        self._on_kubelet = on_kubelet
        v = Version.parse(initial_version)
        self._mem: dict[str, Any] = {
            "versions": {"kubeadm": initial_version, "kubelet": initial_version, "kubectl": initial_version,
                         "containerd": "1.7.22"},
            "running_kubelet": initial_version, "cluster_version": initial_version,
            "repo_minor": f"v{v.major}.{v.minor}", "boot_id": "bench-boot", "effects": [],
        }

    def state(self) -> dict[str, Any]:
        return self._mem

    def _faults(self) -> dict[str, Any]:
        return {}

    def _maybe_crash(self, step: str, when: str) -> None:
        return None

    def _apply(self, effect: str, change: dict[str, Any], step: str = "") -> None:
        with self._lock:
            st = self._mem
            for k, v in change.items():
                if isinstance(v, dict):
                    st.setdefault(k, {}).update(v)
                else:
                    st[k] = v
            st["effects"].append(effect)

    def restart_services(self) -> None:
        before = self._mem["running_kubelet"]
        super().restart_services()
        after = self._mem["running_kubelet"]
        if after != before:
            self._on_kubelet(after)


class MemoryStore(CheckpointStore):
    """A checkpoint store in memory: the bench measures coordination, not fsync."""

    def __init__(self) -> None:
        self.path = Path("/nonexistent/checkpoint.json")
        self._cp = Checkpoint()

    def load(self) -> Checkpoint:
        return self._cp

    def save(self, cp: Checkpoint) -> None:
        self._cp = cp


class Renewer:
    """Renews many member Leases from a small pool, each on its own member's period, and at once
    when kicked; as the daemon's member thread does, any renewal restarts its node's period."""

    def __init__(self, members: dict[str, Member], workers: int = 48) -> None:
        self.members = members
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="renew")
        # Report changes do not queue behind periodic renewals: each daemon publishes at once.
        self._kick_pool = ThreadPoolExecutor(max(4, workers // 4), thread_name_prefix="publish")
        self._cv = threading.Condition()
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._urgent: deque[str] = deque()
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._stop = threading.Event()
        self.errors = 0
        self.renewals = 0

    def _schedule(self, name: str, due: float) -> None:
        self._due[name] = due
        heapq.heappush(self._heap, (due, name))

    def start(self) -> None:
        now = time.monotonic()
        # Independent daemons renew at random phases of their period: the steady state.
        with self._cv:
            for name, m in self.members.items():
                self._schedule(name, now + random.uniform(0, m.renew_every))  # noqa: S311 (a phase)
        threading.Thread(target=self._loop, name="renewer", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._kick_pool.shutdown(wait=True, cancel_futures=True)

    def kick(self, name: str) -> None:
        with self._cv:
            if name in self._running:
                self._again.add(name)
            elif name not in self._queued:
                self._queued.add(name)
                self._urgent.append(name)
                self._cv.notify()

    def renew_all_now(self, names: Iterable[str]) -> None:
        """Create/renew every lease once, synchronously (registration)."""
        list(self._pool.map(self._renew_once, names))

    def _renew_once(self, name: str) -> None:
        for _ in range(5):
            try:
                self.members[name].renew()
                return
            except Exception as e:
                log.debug("renew %s: %s", name, e)
                time.sleep(0.5)
        self.errors += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch: list[str] = []
            urgent: set[str] = set()
            with self._cv:
                while not self._stop.is_set():
                    now = time.monotonic()
                    while self._urgent:
                        name = self._urgent.popleft()
                        urgent.add(name)
                        batch.append(name)
                    while self._heap and self._heap[0][0] <= now:
                        due, name = heapq.heappop(self._heap)
                        if self._due.get(name) != due:
                            continue  # rescheduled by a renewal since
                        if name not in self._running and name not in self._queued:
                            self._queued.add(name)
                            batch.append(name)
                    if batch:
                        break
                    timeout = self._heap[0][0] - now if self._heap else 1.0
                    self._cv.wait(max(0.001, min(timeout, 1.0)))
                for name in batch:
                    self._queued.discard(name)
                    self._running.add(name)
            for name in batch:
                try:
                    (self._kick_pool if name in urgent else self._pool).submit(self._do, name)
                except RuntimeError:
                    return

    def _do(self, name: str) -> None:
        m = self.members[name]
        try:
            m.renew()
            self.renewals += 1
        except Exception as e:
            self.errors += 1
            log.debug("renew %s: %s", name, e)
            with self._cv:
                self._again.add(name)
        finally:
            with self._cv:
                self._running.discard(name)
                self._schedule(name, time.monotonic() + m.renew_every)
                if name in self._again:
                    self._again.discard(name)
                    if name not in self._queued:
                        self._queued.add(name)
                        self._urgent.append(name)
                self._cv.notify()


class WatchReopens:
    """Each daemon holds two watches by name (its grant Lease, the activity Lease), each ended by
    the API server after `watch_seconds` plus up to 50 % jitter and then re-opened: one WATCH
    request per re-open. The fleet shares one watch of each kind (the same events, N times fewer
    connections), so this sends, on each node's own jittered schedule, the WATCH request that
    node's re-open would send (by name, from the current resourceVersion, ended by the server
    after 1 s): the API server counts the requests an idle fleet of N daemons makes. What it does
    not reproduce is N open connections held in the API server's memory."""

    KINDS = 2

    def __init__(self, api: k8s.Client, namespace: str, names: list[str], watch_seconds: int,
                 workers: int = 8) -> None:
        self.api = api
        self.namespace = namespace
        self.names = names
        self.watch_seconds = watch_seconds
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rewatch")
        self._stop = threading.Event()
        self.rv = "0"
        self.reopens = 0

    def _period(self) -> float:
        return self.watch_seconds * random.uniform(1.0, 1.5)  # noqa: S311 (jitter)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="rewatch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        now = time.monotonic()
        heap = [(now + random.uniform(0, self._period()), i, name)  # noqa: S311 (a phase)
                for name in self.names for i in range(self.KINDS)]
        heapq.heapify(heap)
        while heap and not self._stop.is_set():
            due, i, name = heap[0]
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            heapq.heapreplace(heap, (time.monotonic() + self._period(), i, name))
            lease = p.grant_lease_name(name) if i == 0 else p.ACTIVITY_LEASE
            try:
                self._pool.submit(self._reopen, lease)
            except RuntimeError:
                return

    def _reopen(self, lease: str) -> None:
        try:
            with self.api.watch(k8s.lease_path(self.namespace), resource_version=self.rv, timeout_seconds=1,
                                fieldSelector=f"metadata.name={lease}") as w:
                for _ in w:
                    pass
            self.reopens += 1
        except Exception as e:
            log.debug("re-open watch of %s: %s", lease, e)


@dataclass
class Timeline:
    """Monotonic times of what each in-process node did, for the handoff figures."""

    finished: dict[str, float] = field(default_factory=dict)  # agent set phase Succeeded
    published: dict[str, float] = field(default_factory=dict)  # its lease carried that report
    granted: dict[str, float] = field(default_factory=dict)  # its grant reached the fleet's informer
    written: dict[str, float] = field(default_factory=dict)  # the coordinator wrote that grant (renewTime)
    # What the DirectUpdate status said, for every node (the coordinator's node too).
    status_granted: dict[str, float] = field(default_factory=dict)
    status_succeeded: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TimedMember(Member):
    """Member that notes when the Succeeded report first reached the API."""

    timeline: Timeline

    def renew(self) -> None:
        r = self.report()
        super().renew()
        if r is not None and r.phase == "Succeeded":
            with self.timeline.lock:
                self.timeline.published.setdefault(self.node, time.monotonic())


class Fleet:
    """N simulated worker nodes in this process."""

    def __init__(self, kubeconfig: str | Path, names: list[str], *, step_seconds: float,
                 initial_version: str, available: list[str], member_duration: int = 20,
                 renew_fraction: float = 0.33, namespace: str = "kupd-system", workers: int = 48,
                 idle_renew: float | None = None, watch_seconds: int = 240) -> None:
        self.names = names
        self.api = api_client(kubeconfig, pool=max(64, workers * 2))
        self.timeline = Timeline()
        self.initial_version = initial_version
        self.agents: dict[str, Agent] = {}
        self.members: dict[str, Member] = {}
        self.hosts: dict[str, MemoryHost] = {}
        for name in names:
            host = MemoryHost(step_seconds, initial_version, available, self._kubelet_cb(name))
            self.hosts[name] = host
            agent = Agent(name, host, NodeOps(self.api, name), MemoryStore(), backup_fn=None,
                          on_report=self._report_cb(name), retry_delay=1.0)
            self.agents[name] = agent
            m = TimedMember(self.api, namespace, name, member_duration, member_duration * renew_fraction,
                            host.facts, agent.report, control_plane=False, idle_renew=idle_renew)
            m.timeline = self.timeline
            self.members[name] = m
        self.renewer = Renewer(self.members, workers)
        self.watch_seconds = watch_seconds
        self.reopens = WatchReopens(self.api, namespace, names, watch_seconds)
        self.informer: k8s.Informer | None = None
        self.grant_informer: k8s.Informer | None = None
        self.activity_informer: k8s.Informer | None = None
        self.namespace = namespace
        self._granted_seen: set[str] = set()
        self._grant_rvs: dict[str, str] = {}

    # -- per-node callbacks -----------------------------------------------------------------
    def _kubelet_cb(self, name: str) -> Callable[[str], None]:
        def cb(version: str) -> None:
            self._set_node_status(name, version)
        return cb

    def _report_cb(self, name: str) -> Callable[[], None]:
        def cb() -> None:
            agent = self.agents.get(name)
            if agent is not None and agent.cp.phase == "Succeeded":
                with self.timeline.lock:
                    self.timeline.finished.setdefault(name, time.monotonic())
            self.renewer.kick(name)
        return cb

    # -- registration ---------------------------------------------------------------------
    def _set_node_status(self, name: str, version: str) -> None:
        body: dict[str, Any] = {"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "bench kubelet is posting ready status"}],
            "nodeInfo": {"kubeletVersion": version, "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": "bench-boot", "kernelVersion": "", "osImage": "simulated",
                         "containerRuntimeVersion": "containerd://1.7.22", "operatingSystem": "linux",
                         "architecture": "amd64"},
        }}
        k8s.call(self.api.patch, f"status of {name}", k8s.node_path(name, subresource="status"),
                  body, "strategic")

    def _register_one(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kupd.io/bench": "true"}}}
        for attempt in range(5):
            try:
                try:
                    self.api.create(k8s.node_path(), body)
                except k8s.ApiError as e:
                    if e.status != 409:
                        raise
                self._set_node_status(name, self.initial_version)
                return
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.5)

    def register(self, workers: int = 48) -> None:
        """Create every Node (Ready, at the initial kubeletVersion) and every member Lease."""
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self._register_one, self.names))
        self.renewer.renew_all_now(self.names)

    # -- running --------------------------------------------------------------------------
    def _observe_status(self) -> None:
        """The bench's own view of the DirectUpdate (agents do not read it): when status recorded what."""
        assert self.informer is not None
        for op in self.informer.items():
            now = time.monotonic()
            for e in (op.get("status") or {}).get("nodes") or []:
                name = e.get("name")
                if e.get("grant") and name not in self.timeline.status_granted:
                    self.timeline.status_granted[name] = now
                if e.get("phase") == "Succeeded" and name not in self.timeline.status_succeeded:
                    self.timeline.status_succeeded[name] = now

    def _offer_grants(self) -> None:
        # One informer over every grant Lease stands in for each agent's watch of its own one
        # (the daemon watches `metadata.name=kupd-grant-<node>`): the same objects, N times fewer
        # connections. A Lease is looked at only when its version changed: decoding all N on
        # every event made this callback O(N) per grant, and its queue was measured as handoff.
        assert self.grant_informer is not None
        for lease in self.grant_informer.items():
            name = lease["metadata"]["name"][len(p.GRANT_LEASE_PREFIX):]
            rv = str(lease["metadata"].get("resourceVersion", ""))
            if self._grant_rvs.get(name) == rv or name not in self.agents:
                continue
            self._grant_rvs[name] = rv
            grant = p.Grant.decode(p.grant_value(lease))
            if grant is None:
                continue
            if name not in self._granted_seen:
                self._granted_seen.add(name)
                now = time.monotonic()
                written = parse_or_none((lease.get("spec") or {}).get("renewTime"))
                with self.timeline.lock:
                    self.timeline.granted.setdefault(name, now)
                    if written is not None:  # the coordinator's clock is this machine's
                        self.timeline.written.setdefault(name, now - (time.time() - written.timestamp()))
            self.agents[name].offer(grant)

    def _on_activity(self) -> None:
        # One watch of the activity Lease stands in for each daemon's: an operation's start makes
        # every member renew at once (Member.set_active), from the fleet's publish pool.
        assert self.activity_informer is not None
        active = bool(p.activity_value(self.activity_informer.get(f"{self.namespace}/{p.ACTIVITY_LEASE}")))
        for name, m in self.members.items():
            if m.set_activity(active):
                self.renewer.kick(name)

    def start(self) -> None:
        self.renewer.start()
        self.reopens.start()
        self.informer = k8s.Informer("bench-directupdates", self.api, k8s.kupd_path(k8s.DIRECTUPDATES),
                                      self._observe_status, watch_seconds=self.watch_seconds).start()
        self.grant_informer = k8s.Informer(
            "bench-grants", self.api, k8s.lease_path(self.namespace), self._offer_grants,
            watch_seconds=self.watch_seconds, labelSelector=f"{p.LABEL_LEASE_KIND}={p.LEASE_KIND_GRANT}").start()
        self.activity_informer = k8s.Informer(
            "bench-activity", self.api, k8s.lease_path(self.namespace), self._on_activity,
            watch_seconds=self.watch_seconds, fieldSelector=f"metadata.name={p.ACTIVITY_LEASE}").start()

    def stop(self) -> None:
        for inf in (self.informer, self.grant_informer, self.activity_informer):
            if inf is not None:
                inf.stop()
        for a in self.agents.values():
            a.stop()
        self.renewer.stop()
        self.reopens.stop()

    def versions(self) -> dict[str, str]:
        return {n: h._mem["running_kubelet"] for n, h in self.hosts.items()}
