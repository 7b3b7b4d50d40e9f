"""`kupd daemon`: one process per node holding the three roles — member, coordinator, agent.

Wiring only: every decision lives in the planner, the agent's step sequence and the host
backends; this module builds them from the settings and runs their loops.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from kupd import k8s, logsetup, metrics, oneversion
from kupd import protocol as p
from kupd.agent import Agent, BackupFn
from kupd.api import models
from kupd.checkpoint import CheckpointStore
from kupd.config import Settings
from kupd.coordinator import Coordinator
from kupd.election import Elector
from kupd.errors import KupdError
from kupd.host.base import Host
from kupd.member import Member
from kupd.nodeops import NodeOps
from kupd.notify import Notifier, watchdog_interval

log = logging.getLogger(__name__)


def make_host(settings: Settings, node: str) -> Host:
    if settings.host == "simulated":
        from kupd.sim.simulated import SimulatedHost

        sim = settings.simulated
        state = sim.state_file or f"{settings.state_dir}/simulated-host.json"
        return SimulatedHost(state, sim.step_seconds, sim.initial_version, sim.available_versions)
    from kupd.host.real import RealHost

    return RealHost.from_settings(settings, node)


def make_backup_fn(api: k8s.Client, settings: Settings, node: str) -> BackupFn:
    """The agent's backup step: snapshot the local etcd, verify, upload, and return status.backup."""

    def backup(spec_backup: models.Backup) -> dict[str, Any]:
        from kupd.backup.run import BackupConfig, load_credentials, take_backup
        from kupd.clock import SystemClock

        cfg = BackupConfig.from_model(spec_backup, work_dir=f"{settings.state_dir}/backup")
        # Credentials are read at use, never kept or logged.
        creds = load_credentials(cfg.store, api)
        record = take_backup(cfg, creds, settings.cluster_name, node, SystemClock())
        return dict(record.to_status())

    return backup


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node = settings.node_name or socket.gethostname().split(".")[0]
        self.notifier = Notifier()
        self._stop = threading.Event()
        self.coordinator: Coordinator | None = None

    def _control_plane(self, api: k8s.Client) -> bool:
        if self.settings.control_plane is not None:
            return self.settings.control_plane
        while not self._stop.is_set():
            try:
                node = k8s.call(api.get, "read own node", k8s.node_path(self.node))
                return p.LABEL_CONTROL_PLANE in (node["metadata"].get("labels") or {})
            except KupdError as e:
                log.warning("cannot read Node %s yet (%s); retrying", self.node, e)
                self._stop.wait(3)
        return False

    def run(self) -> int:
        s = self.settings
        logsetup.set_defaults(node=self.node)
        # Everything this process may need, imported now: after a package upgrade it must not mix
        # modules of the new version into the old one. It restarts itself instead (below).
        oneversion.preload(backends=s.host == "real" and s.control_plane is not False)
        package = oneversion.PackageWatch()
        restart = False
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        api = k8s.api_client(s.kubeconfig)
        host = make_host(s, self.node)
        store = CheckpointStore(s.state_dir)
        nodeops = NodeOps(api, self.node)
        if s.metrics_address:
            metrics.serve(s.metrics_address)

        member_holder: list[Member] = []

        def on_report() -> None:
            if member_holder:
                member_holder[0].poke()
            r = agent.report()
            if r is not None:
                metrics.agent_report(r)
                self.notifier.status(f"{r.operation}: {r.phase} {r.step} {r.message}"[:200])

        agent = Agent(self.node, host, nodeops, store, backup_fn=make_backup_fn(api, s, self.node),
                      on_report=on_report, deadline=s.steps.deadline)
        if s.host == "simulated":
            from kupd.sim.simkubelet import SimKubelet
            from kupd.sim.simulated import SimulatedHost

            assert isinstance(host, SimulatedHost)
            SimKubelet(api, self.node, host, bool(s.control_plane), s.simulated.node_labels).start()
        # An unfinished grant resumes before anything that needs the API: a granted node
        # finishes without it. Its role is in the checkpoint, so no API read is needed first.
        control_plane = agent.cp.grant.control_plane if agent.cp.active and agent.cp.grant \
            else self._control_plane(api)
        lease = s.lease
        offset = timedelta(seconds=s.simulated.clock_offset_seconds if s.host == "simulated" else 0)
        member = Member(api, lease.namespace, self.node, lease.member_duration_seconds,
                        lease.member_duration_seconds * lease.renew_fraction, host.facts, agent.report,
                        control_plane, clock=lambda: datetime.now(UTC) + offset)
        member_holder.append(member)
        member.start()
        agent.resume()

        # The agent watches its own grant Lease, by name: one small object, whatever the cluster's size.
        grant_key = f"{lease.namespace}/{p.grant_lease_name(self.node)}"

        def offer() -> None:
            obj = grants.get(grant_key)
            if obj is not None:
                agent.offer(p.Grant.decode(p.grant_value(obj)))

        grants = k8s.Informer("grant", api, k8s.lease_path(lease.namespace), offer,
                               fieldSelector=f"metadata.name={p.grant_lease_name(self.node)}").start()

        eligible = s.coordinator_eligible == "any" or (s.coordinator_eligible == "control-plane" and control_plane)
        elector = Elector(api, lease.namespace, self.node, lease.coordinator_duration_seconds)
        self.notifier.ready(f"member of the cluster as {self.node}"
                            + (", coordinator candidate" if eligible else ""))
        log.info("kupd daemon started on %s (control plane: %s, coordinator candidate: %s)",
                 self.node, control_plane, eligible)
        wd = watchdog_interval()
        tick = lease.coordinator_duration_seconds * lease.renew_fraction
        if wd:
            tick = min(tick, wd / 2)
        while not self._stop.is_set():
            if eligible:
                self._elect(api, elector, host)
            metrics.coordinator(elector.leading, elector.epoch)
            # A grant that arrived while the agent was still busy with an earlier one gets no
            # second watch event: look at the grant Lease again on every tick.
            offer()
            self.notifier.watchdog()
            if package.changed() and agent.quiesce():
                log.info("kupd's package changed on disk and no step runs: restarting to run the new version")
                restart = True
                break
            self._stop.wait(tick)
        if restart:
            # Not STOPPING=1: the service goes on in the same process (same PID), which says READY again.
            self.notifier.status("restarting to run the upgraded kupd")
        else:
            log.info("stopping")
            self.notifier.stopping("stopping")
        if self.coordinator:
            self.coordinator.stop()
        elector.release()
        agent.stop()
        member.stop()
        grants.stop()
        if restart:
            oneversion.reexec()
        return 0

    def _elect(self, api: k8s.Client, elector: Elector, host: Host) -> None:
        try:
            leading = elector.try_acquire_or_renew()
        except KupdError as e:
            log.warning("coordinator election: %s", e)
            leading = elector.leading
        if leading and self.coordinator is None:
            # Imported here: only the coordinator runs them, and every daemon's memory counts.
            from kupd import health
            from kupd.clock import SystemClock
            from kupd.scheduler import Scheduler

            log.info("coordinating at epoch %d", elector.epoch)
            self.coordinator = Coordinator(api, self.settings.lease.namespace, self.node,
                                           self.settings.lease.member_duration_seconds, elector,
                                           host.newest_patch, on_plan=metrics.operation_status,
                                           scheduler=Scheduler(api, SystemClock(), host.newest_patch),
                                           gates=health.GateRunner(functools.partial(health.evaluate, api)),
                                           on_operations=metrics.forget_operations,
                                           on_refused=metrics.status_refused)
            self.coordinator.start()
        elif not leading and self.coordinator is not None:
            log.info("no longer coordinator")
            self.coordinator.stop()
            self.coordinator = None
            metrics.coordinator_stopped()




