"""The member Lease: every daemon's liveness, facts and progress report, in one object it owns.

One merge-patch per renewal (no read), and one extra when the agent's report changes. How often
it renews depends on whether an operation is active (the activity Lease, which the daemon
watches by name, says so; docs/development/protocol.md, "Idle and active"):

- idle: every `idle_renew` seconds (1 h by default, jittered by 10 %), declaring a lease of three
  times that: nothing waits on liveness while nothing runs;
- active (an operation named by the activity Lease, or a turn of our own still being worked
  on): at once when the operation starts (within ACTIVATION_SPREAD seconds, so N members do not
  hit the API server in the same millisecond), then every `renew_every` seconds, declaring
  `duration` (60 s renewed every 20 s by default).
"""

from __future__ import annotations

import logging
import random
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

# An operation's start reaches every member at once; each renews within this many seconds.
ACTIVATION_SPREAD = 1.0
# An idle member declares a lease this many times its idle renewal period.
IDLE_LEASE_FACTOR = 3


class Member:
    def __init__(self, api: k8s.Client, namespace: str, node: str, duration: int, renew_every: float,
                 facts: Callable[[], HostFacts], report: Callable[[], p.Report | None],
                 control_plane: bool, idle_renew: float | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.node = node
        self.name = p.member_lease_name(node)
        self.active_duration = duration
        self.active_renew = renew_every
        # None: always renew as if an operation were active (no activity Lease watched).
        self.idle_renew = idle_renew
        self._activity = False
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

    @property
    def active(self) -> bool:
        """Whether to renew often: an operation is active, or our own turn is still running."""
        if self.idle_renew is None or self._activity:
            return True
        r = self.report()
        return r is not None and r.phase == p.TurnPhase.UPGRADING

    @property
    def duration(self) -> int:
        if self.active or self.idle_renew is None:
            return self.active_duration
        return max(self.active_duration, int(IDLE_LEASE_FACTOR * self.idle_renew))

    @property
    def renew_every(self) -> float:
        """Seconds until the next periodic renewal."""
        if self.active or self.idle_renew is None:
            return self.active_renew
        return self.idle_renew * random.uniform(0.9, 1.1)  # noqa: S311 (jitter, not a secret)

    def set_activity(self, active: bool) -> bool:
        """Record what the activity Lease says; whether an operation has just started."""
        was, self._activity = self._activity, active
        return active and not was

    def set_active(self, active: bool) -> None:
        """What the activity Lease says. An operation's start makes this member renew at once:
        its liveness at the start of the operation is established then, and from now on it
        declares the short lease and renews often."""
        if self.set_activity(active):
            t = threading.Timer(random.uniform(0, ACTIVATION_SPREAD), self.poke)  # noqa: S311 (jitter)
            t.daemon = True
            t.start()

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
