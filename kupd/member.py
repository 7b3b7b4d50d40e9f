"""The member Lease: every daemon's liveness, facts and progress report, in one object it owns.

One merge-patch per renewal (no read), and one extra when the agent's report changes, so the
API cost per node is a small constant: 3 writes a minute at the default durations (a 60 s
lease renewed every 20 s; measured in docs/development/performance.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kupd import __version__, hazards, k8s, metrics
from kupd import protocol as p
from kupd.errors import KupdError
from kupd.host.base import HostFacts
from kupd.rfc3339 import format_micro

log = logging.getLogger(__name__)


class Member:
    def __init__(self, api: k8s.Client, namespace: str, node: str, duration: int, renew_every: float,
                 facts: Callable[[], HostFacts], report: Callable[[], p.Report | None],
                 control_plane: bool, clock: Callable[[], datetime] | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.node = node
        self.name = p.member_lease_name(node)
        self.duration = duration
        self.renew_every = renew_every
        self.facts = facts
        self.report = report
        self.control_plane = control_plane
        # The node's wall clock, for renewTime; nobody judges liveness by it (the coordinator uses
        # its own monotonic clock), but a simulated node may skew it to prove that.
        self.clock = clock or (lambda: datetime.now(UTC))
        self._poke = threading.Event()
        self._stop = threading.Event()
        self.last_ok: datetime | None = None
        self.writes = 0

    def body(self) -> dict[str, Any]:
        f = self.facts()
        r = self.report()
        anns = {
            p.ANN_BOOT_ID: f.boot_id, p.ANN_KUPD_VERSION: __version__, p.ANN_PACKAGE_MANAGER: f.package_manager,
            p.ANN_KUBEADM: f.kubeadm or "", p.ANN_KUBELET: f.kubelet or "", p.ANN_KUBECTL: f.kubectl or "",
            p.ANN_CONTAINERD: f.containerd or "", p.ANN_CONTROL_PLANE: str(self.control_plane).lower(),
            p.ANN_REPORT: r.encode() if r else "",
            p.ANN_NODE_FACTS: hazards.encode(f.node_facts) if f.node_facts is not None else "",
        }
        return {
            "metadata": {"name": self.name, "namespace": self.namespace, "annotations": anns,
                         "labels": {"app.kubernetes.io/name": "kupd", "kupd.io/node": self.node,
                                    p.LABEL_LEASE_KIND: p.LEASE_KIND_MEMBER}},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": self.duration,
                     "renewTime": format_micro(self.clock())},
        }

    def renew(self) -> None:
        body = self.body()
        create = {**body, "spec": {**body["spec"], "acquireTime": body["spec"]["renewTime"]}}
        k8s.patch_or_create(self.api, k8s.lease_path(self.namespace, self.name), k8s.lease_path(self.namespace),
                             body, f"renew lease {self.name}", create_body=create)
        self.writes += 1
        self.last_ok = datetime.now(UTC)
        metrics.member_renewed()

    def poke(self) -> None:
        """Publish now: the report changed."""
        self._poke.set()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()

    def run(self) -> None:
        while not self._stop.is_set():
            self._poke.clear()
            try:
                self.renew()
                wait = self.renew_every
            except KupdError as e:
                log.warning("member lease: %s", e)
                wait = 2.0
            self._poke.wait(wait)

    def start(self) -> None:
        threading.Thread(target=self.run, name="member", daemon=True).start()
