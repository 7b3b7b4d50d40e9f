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

ENROLL_DIR = "/root/kupd-enroll"
BACKUP_DIR = "/var/lib/kupd-test-backups"  # the DirectUpdate's file store, on the control plane


class RealCluster:
    def __init__(self, nodes: list[ClusterNode], relay: network.ApiRelay, arts: Artifacts, work: Path) -> None:
        self.nodes = nodes
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
        for n in self.nodes:
            flags = ["--control-plane"] if n.control_plane else []
            out = f"{ENROLL_DIR}/{n.name}.kubeconfig"
            cp.run(["kupd", "enroll", n.name, *flags, admin, "-o", out])
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
        # The backup store (a mounted share in real life) must exist: kupd will not create it.
        cp.run(["install", "-d", "-m", "0700", BACKUP_DIR])
        for n in self.nodes:
            n.node.systemctl("restart", "kupd")

    def journal(self, node: str, lines: int = 150) -> str:
        return self.node(node).node.journal("-u", "kupd", "-n", str(lines))


@dataclass
class AvailabilityWatch:
    """Polls a Deployment's available replicas and the drained pods' fate while the upgrade runs."""

    rc: RealCluster
    namespace: str
    deployment: str
    interval: float = 1.0
    min_available: int | None = None
    samples: int = 0
    api_errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> AvailabilityWatch:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def _loop(self) -> None:
        api = self.rc.api()
        path = k8s.path("apps", "v1", "deployments", self.deployment, namespace=self.namespace)
        while not self._stop.is_set():
            try:
                d = api.get(path)
                available = int((d.get("status") or {}).get("availableReplicas") or 0)
                self.min_available = available if self.min_available is None else min(self.min_available, available)
                self.samples += 1
            except Exception:  # the API server restarts during the control plane's upgrade
                self.api_errors += 1
            self._stop.wait(self.interval)


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
