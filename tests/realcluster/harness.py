"""The real cluster as the tests use it: kubectl and an API client through the relay, kupd on each node.

`RealCluster` offers what the cluster tier's harness expects of a control plane
(`admin_kubeconfig`, `kubectl(...)`), so its `Monitor`, `apply_du` and `wait_phase` watch the real
cluster the same way they watch the test control plane.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kupd import k8s
from kupd.host import runner
from tests.realcluster import artifacts, cluster, network
from tests.realcluster.artifacts import Artifacts
from tests.realcluster.cluster import ClusterNode
from tests.realcluster.store import ObjectStore

NAMES = ["rc-cp-1", "rc-w-1", "rc-w-2"]  # the first is the control plane
ENROLL_DIR = "/root/kupd-enroll"
BACKUP_SECRET = ("kupd-system", "kupd-backup-credentials")  # packaging/rbac/30-backup-credentials.yaml's


class RealCluster:
    def __init__(self, nodes: list[ClusterNode], relay: network.ApiRelay, arts: Artifacts, work: Path,
                 store: ObjectStore) -> None:
        self.nodes = nodes
        self.store = store
        self.cp = nodes[0]
        self.relay = relay
        self.arts = arts
        self.work = work
        self.kubectl_binary = arts.busybox[artifacts.TO.stamp]
        self.admin_kubeconfig = work / "admin.conf"
        self.admin_kubeconfig.write_text(yaml.safe_dump(cluster.admin_kubeconfig(self.cp, relay.port)))
        self.admin_kubeconfig.chmod(0o600)

    def close(self) -> None:
        self.relay.close()

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None,
                timeout: float = 120) -> runner.Result:
        """kubectl (the new release's) on the machine, through the relay, as the administrator."""
        return runner.run([str(self.kubectl_binary), "kubectl", f"--kubeconfig={self.admin_kubeconfig}", *args],
                          timeout=timeout, check=check, input_text=input_text, env={"HOME": str(self.work)})

    def api(self) -> k8s.Client:
        return k8s.api_client(str(self.admin_kubeconfig))

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    # -- kupd -----------------------------------------------------------------------------------

    def enroll_kupd(self) -> None:
        """As docs/usage/install.md says: CRDs and RBAC from the package, `kupd enroll` per node as
        the administrator on the control plane, each node's kubeconfig to its /etc/kupd, config."""
        cp = self.cp
        admin = "--kubeconfig=/etc/kubernetes/admin.conf"
        cp.run(["kubectl", admin, "apply", "--server-side", "-f", "/usr/share/kupd/crds/"])
        cp.run(["kubectl", admin, "wait", "--for=condition=Established", "--timeout=60s", "-f",
                "/usr/share/kupd/crds/"])
        cp.run(["kubectl", admin, "apply", "--server-side", "-f", "/usr/share/kupd/rbac/"])
        # The backup store's credentials, in the Secret the packaged RBAC lets control planes read.
        self.kubectl("apply", "-f", "-", input_text=json.dumps(self.store.secret(*BACKUP_SECRET)))
        for n in self.nodes:
            flags = ["--control-plane", "--backup-secret", "/".join(BACKUP_SECRET)] if n.control_plane else []
            out = f"{ENROLL_DIR}/{n.name}.kubeconfig"
            cp.run(["kupd", "enroll", n.name, *flags, admin, "--node-kubeconfig", out])
            n.node.write("/etc/kupd/kubeconfig", (cp.node.root / out.lstrip("/")).read_text(), mode=0o600)
            n.node.write("/etc/kupd/config.d/50-realcluster.toml", "\n".join([
                f'node_name = "{n.name}"',
                'kubeconfig = "/etc/kupd/kubeconfig"',
                'host = "real"',
                f"control_plane = {'true' if n.control_plane else 'false'}",
                'coordinator_eligible = "control-plane"',
                'log_level = "debug"',
                "",
                "[real]",
                # kubeadm init/join were told to (cgroup v1); kubeadm's upgrade preflight checks again.
                'kubeadm_ignore_preflight_errors = ["SystemVerification"]',
                "",
            ]))
        for n in self.nodes:
            n.node.systemctl("restart", "kupd")

    def journal(self, node: str, lines: int = 150) -> str:
        return self.node(node).node.journal("-u", "kupd", "-n", str(lines))


@dataclass
class AvailabilityWatch:
    """A Deployment's available replicas, followed all through the upgrade: a watch (kupd's own
    informer, which relists across the API server's restarts) records every version the API
    server holds, and a poll every `interval` seconds backs it up."""

    rc: RealCluster
    namespace: str
    deployment: str
    interval: float = 1.0
    min_available: int | None = None
    samples: int = 0
    watched: int = 0
    api_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _informer: k8s.Informer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> AvailabilityWatch:
        path = k8s.path("apps", "v1", "deployments", namespace=self.namespace)
        self._informer = k8s.Informer(f"watch-{self.deployment}", self.rc.api(), path, self._changed,
                                      watch_seconds=60, fieldSelector=f"metadata.name={self.deployment}")
        self._informer.start()
        if not self._informer.synced.wait(60):
            raise AssertionError(f"no watch of Deployment {self.deployment} within 60s")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._informer is not None:
            self._informer.stop()
        if self._thread:
            self._thread.join(10)

    def _record(self, d: dict[str, Any]) -> None:
        available = int((d.get("status") or {}).get("availableReplicas") or 0)
        with self._lock:
            self.min_available = available if self.min_available is None else min(self.min_available, available)

    def _changed(self) -> None:
        assert self._informer is not None
        d = self._informer.get(f"{self.namespace}/{self.deployment}")
        if d is not None:
            self._record(d)
            self.watched += 1

    def _loop(self) -> None:
        api = self.rc.api()
        path = k8s.path("apps", "v1", "deployments", self.deployment, namespace=self.namespace)
        while not self._stop.is_set():
            try:
                self._record(api.get(path))
                self.samples += 1
            except Exception:  # the API server restarts during the control plane's upgrade
                self.api_errors += 1
            self._stop.wait(self.interval)


@dataclass
class StatusHistory:
    """Every version of a DirectUpdate's status the API server held (a watch), reduced to what
    tells the story: the operation's phase and each node's phase and step, in order."""

    rc: RealCluster
    name: str
    transitions: list[tuple[str, tuple[tuple[str, str, str], ...]]] = field(default_factory=list)
    _informer: k8s.Informer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> StatusHistory:
        self._informer = k8s.Informer(f"history-{self.name}", self.rc.api(), k8s.kupd_path(k8s.DIRECTUPDATES),
                                      self._changed, watch_seconds=60, fieldSelector=f"metadata.name={self.name}")
        self._informer.start()
        return self

    def stop(self) -> None:
        if self._informer is not None:
            self._informer.stop()

    def _changed(self) -> None:
        assert self._informer is not None
        obj = self._informer.get(self.name)
        if obj is None:
            return
        st = obj.get("status") or {}
        nodes = tuple((str(n.get("name")), str(n.get("phase")), str(n.get("step") or ""))
                      for n in st.get("nodes") or [])
        view = (str(st.get("phase") or "Pending"), nodes)
        with self._lock:
            if not self.transitions or self.transitions[-1] != view:
                self.transitions.append(view)

    def phases(self) -> list[str]:
        out: list[str] = []
        for phase, _ in self.transitions:
            if not out or out[-1] != phase:
                out.append(phase)
        return out

    def node_phases(self, node: str) -> list[str]:
        out: list[str] = []
        for _, nodes in self.transitions:
            for name, phase, _step in nodes:
                if name == node and (not out or out[-1] != phase):
                    out.append(phase)
        return out

    def node_steps(self, node: str) -> list[str]:
        out: list[str] = []
        for _, nodes in self.transitions:
            for name, _phase, step in nodes:
                if name == node and step and (not out or out[-1] != step):
                    out.append(step)
        return out

    def first(self, node: str, phase: str) -> int | None:
        """The index of the first transition where `node` was in `phase`."""
        for i, (_, nodes) in enumerate(self.transitions):
            if any(n == node and p == phase for n, p, _ in nodes):
                return i
        return None

    def describe(self) -> str:
        return "\n".join(f"{p}: " + ", ".join(f"{n}={np}/{s or '-'}" for n, np, s in nodes)
                         for p, nodes in self.transitions)


def wait_for(what: str, check: Any, timeout: float = 300, interval: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not after {timeout}s (last: {last!r})")
